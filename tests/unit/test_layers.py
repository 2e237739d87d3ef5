"""Import-layer rules of the package, read from the source with ``ast`` (nothing is imported).

Every ``import`` / ``from ... import`` in every module under ``convlstm_dist/`` counts, function-local
ones included, except where a rule says otherwise:

* ``models/`` imports only torch, numpy, the standard library and ``convlstm_dist.models`` itself;
* only ``tracking/`` imports ``mlflow`` (any submodule), and the model MLflow runs from code
  (``nowcast/pyfunc_model.py``);
* only ``train/`` imports ``ray.train`` (any submodule; ``ray.tune.integration.ray_train`` is Tune);
* no ``_private`` name crosses subpackages (``from convlstm_dist.X import _name`` from outside X), and
  ``ray._private`` is imported only by :data:`RAY_PRIVATE_MODULE`;
* the subpackages do not import each other in a cycle at module import time (module-level imports
  only; a function-local import may point "upwards");
* every subpackage's ``__init__`` has a docstring and ``__all__``, and every name another subpackage
  imports from it (from any of its modules) is in that ``__all__`` (its public API is one door).

The last tests import: every name of every ``__all__`` resolves, and importing a subpackage (or
building the command-line parser) loads none of torch, ray, zarr, mlflow (``--help`` stays instant).

A "subpackage" is the first name below ``convlstm_dist``: ``convlstm_dist/train/driver.py`` is in
``train``, ``convlstm_dist/config.py`` is its own (``config``). A failure names file, line and import.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PKG = "convlstm_dist"
PKG_DIR = REPO / PKG

# The one module allowed to import ``ray._private``: a public Ray API does not cover what it wraps
# (the environment variable that fixes a local Ray's GCS port, so the sweep's workers find this
# cluster's state API even when other Ray instances run on the machine).
RAY_PRIVATE_MODULE = "convlstm_dist/ray_internals.py"

# Known exceptions, each with the reason it is still here: (rule, file, import as written) -> reason.
# An entry whose import is gone fails test_allowances_are_still_needed, so the list only shrinks.
ALLOW: dict[tuple[str, str, str], str] = {}

STDLIB = set(sys.stdlib_module_names)


@dataclass(frozen=True)
class Imp:
    path: str  # relative to the repository, e.g. convlstm_dist/tune/sweep.py
    line: int
    text: str  # the statement as written (normalised by ast.unparse)
    module: str  # absolute module of the statement (``from X import ...`` -> X, ``import X`` -> X)
    names: tuple[str, ...]  # names after ``from X import`` (empty for ``import X``)
    toplevel: bool  # runs when the module is imported (not inside a function, not TYPE_CHECKING-only)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.text}"

    def targets(self) -> list[str]:
        """Modules this import may load: ``from ray import train`` loads ``ray.train``."""
        if not self.names:
            return [self.module]
        return [self.module] + [f"{self.module}.{n}" for n in self.names if n != "*"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(source: str, path: str, module: str, is_package: bool = False) -> list[Imp]:
    """Every import statement in ``source`` (a module named ``module``), nested ones included."""
    tree = ast.parse(source, filename=path)
    package = module if is_package else module.rpartition(".")[0]
    out: list[Imp] = []

    def visit(node: ast.AST, toplevel: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for a in child.names:
                    out.append(Imp(path, child.lineno, ast.unparse(child), a.name, (), toplevel))
            elif isinstance(child, ast.ImportFrom):
                mod = child.module or ""
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    mod = ".".join([*base, mod] if mod else base)
                out.append(Imp(path, child.lineno, ast.unparse(child), mod, tuple(a.name for a in child.names),
                               toplevel))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.body:
                    visit(ast.Module(body=[sub], type_ignores=[]), False)
                for sub in child.orelse:
                    visit(ast.Module(body=[sub], type_ignores=[]), toplevel)
            else:
                visit(child, toplevel)

    visit(tree, True)
    return out


def _package_imports() -> list[Imp]:
    out = []
    for f in sorted(PKG_DIR.rglob("*.py")):
        rel = f.relative_to(REPO).as_posix()
        out += imports_of(f.read_text(), rel, _module_name(f), is_package=f.name == "__init__.py")
    return out


IMPORTS = _package_imports()
MODULES = {_module_name(f) for f in PKG_DIR.rglob("*.py")}


def subpackage_of_path(path: str) -> str:
    """``convlstm_dist/train/driver.py`` -> ``train``; ``convlstm_dist/config.py`` -> ``config``;
    ``convlstm_dist/__init__.py`` -> ``convlstm_dist`` (the root)."""
    parts = Path(path).with_suffix("").parts[1:]
    return PKG if not parts or parts == ("__init__",) else parts[0]


def subpackage_of_module(module: str) -> str:
    parts = module.split(".")[1:]
    return parts[0] if parts else PKG


def own_targets(imp: Imp) -> list[str]:
    """The package's own modules an import loads (``from convlstm_dist import config`` -> the config module;
    ``from convlstm_dist.config import merge_tree`` -> the config module)."""
    if imp.module != PKG and not imp.module.startswith(PKG + "."):
        return []
    found = [t for t in imp.targets()[1:] if t in MODULES]
    return found or [imp.module]


def _top(module: str) -> str:
    return module.split(".")[0]


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _check(rule: str, bad: list[Imp], message: str) -> None:
    bad = [i for i in bad if (rule, i.path, i.text) not in ALLOW]
    assert not bad, message + ":\n" + "\n".join(f"  {i}" for i in bad)


# --------------------------------------------------------------------------- the rules


def test_models_import_only_torch_numpy_stdlib():
    allowed = {"torch", "numpy"} | STDLIB
    bad = [i for i in IMPORTS if i.path.startswith(f"{PKG}/models/")
           and not (_top(i.module) in allowed or _under(i.module, f"{PKG}.models"))]
    _check("models", bad, "convlstm_dist/models/ imports only torch, numpy, the standard library and itself")


# The python_function model MLflow runs from code (``mlflow.pyfunc``, ``mlflow.models.set_model``): it
# wraps the Nowcaster, so it stands in nowcast/, and it is the one file outside tracking/ that imports mlflow
PYFUNC_MODEL_FILE = f"{PKG}/nowcast/pyfunc_model.py"


def test_only_tracking_imports_mlflow():
    bad = [i for i in IMPORTS if not i.path.startswith(f"{PKG}/tracking/") and i.path != PYFUNC_MODEL_FILE
           and any(_under(t, "mlflow") for t in i.targets())]
    _check("mlflow", bad, f"only convlstm_dist/tracking/ (and {PYFUNC_MODEL_FILE}) imports mlflow")


def test_only_train_imports_ray_train():
    bad = [i for i in IMPORTS if not i.path.startswith(f"{PKG}/train/")
           and any(_under(t, "ray.train") for t in i.targets())]
    _check("ray.train", bad, "only convlstm_dist/train/ imports ray.train")


def test_no_private_names_across_subpackages():
    bad = []
    for i in IMPORTS:
        mine = subpackage_of_path(i.path)
        for target in own_targets(i):
            if subpackage_of_module(target) == mine:
                continue
            private_module = any(p.startswith("_") and not p.startswith("__") for p in target.split(".")[1:])
            private_names = [n for n in i.names if n.startswith("_") and not n.startswith("__")
                             and f"{target}.{n}" not in MODULES]
            if private_module or private_names:
                bad.append(i)
                break
    _check("private", bad, "no private (_name) import from another subpackage; make the name public")


def test_ray_private_only_in_the_runtime_helper():
    bad = [i for i in IMPORTS if i.path != RAY_PRIVATE_MODULE
           and any(_under(t, "ray._private") for t in i.targets())]
    _check("ray._private", bad, f"ray._private is imported only by {RAY_PRIVATE_MODULE} (prefer public Ray APIs)")


def _subpackage_graph() -> dict[str, dict[str, list[Imp]]]:
    graph: dict[str, dict[str, list[Imp]]] = {}
    for i in IMPORTS:
        if not i.toplevel:
            continue
        src = subpackage_of_path(i.path)
        for target in own_targets(i):
            dst = subpackage_of_module(target)
            if dst != src and dst != PKG:  # importing the root package itself is not a layer edge
                graph.setdefault(src, {}).setdefault(dst, []).append(i)
    return graph


def find_cycle(graph: dict[str, dict[str, list]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := dfs(node)):
            return found
    return None


def test_no_import_cycles_between_subpackages():
    graph = _subpackage_graph()
    cycle = find_cycle(graph)
    if cycle:
        lines = []
        for a, b in zip(cycle, cycle[1:]):
            lines += [f"  {a} -> {b}: {i}" for i in graph[a][b]]
        pytest.fail("subpackages import each other in a cycle at module import time "
                    f"({' -> '.join(cycle)}):\n" + "\n".join(lines))


def test_allowances_are_still_needed():
    present = {(i.path, i.text) for i in IMPORTS}
    stale = [f"{path}: {text} ({rule})" for rule, path, text in ALLOW if (path, text) not in present]
    assert not stale, "ALLOW entries whose import is gone (remove them):\n" + "\n".join(f"  {s}" for s in stale)
    assert (REPO / RAY_PRIVATE_MODULE).is_file(), f"{RAY_PRIVATE_MODULE} is gone: update RAY_PRIVATE_MODULE"


# --------------------------------------------------------------------------- the layers of the house

# The layer order, bottom first: a module imports only from its own subpackage and from lower layers,
# at module level or inside a function. Subpackages of one layer do not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "lazy", "vocabulary", "addresses"),  # the package's words and addresses: standard library only
    ("ray_internals",),                              # the one door into ray._private
    ("ray_session",),                                # start or join Ray, one way
    ("models",),                                     # torch only
    ("data",),                                       # archives, readers, Ray Data
    ("config", "verify"),                            # recipes; scores, baselines, tables, figures
    ("checkpoint",),
    ("tracking",),                                   # MLflow
    ("train",),
    ("nowcast",),                                    # forecasts, evaluation, hindcasts
    ("tune",),
    ("experiments",),                                # held-out protocol, Table 1
    ("commands",),
    ("cli",),
]
RANK = {sub: i for i, layer in enumerate(LAYERS) for sub in layer}

# A function-local import of a project module is allowed only when it keeps something heavy off the start:
# the imported module loads one of these at import time (itself or through the project modules it imports)
# that the importing module does not load already.
HEAVY = {"torch", "ray", "mlflow", "zarr", "pysteps", "matplotlib", "scipy", "pyarrow", "pandas", "xarray",
         "netCDF4", "h5py", "s3fs", "fsspec", "numcodecs", "cv2", "PIL", "imageio", "pydantic"}


def test_every_subpackage_has_a_layer():
    subs = {subpackage_of_path(i.path) for i in IMPORTS} | {p.stem for p in PKG_DIR.glob("*.py")} | set(SUBPACKAGES)
    missing = sorted(subs - set(RANK) - {PKG, "__init__", "__main__"})
    assert not missing, f"place these in LAYERS (tests/unit/test_layers.py): {missing}"


def test_no_import_runs_up_the_house():
    bad = []
    for i in IMPORTS:
        src = subpackage_of_path(i.path)
        for target in own_targets(i):
            dst = subpackage_of_module(target)
            if dst in (src, PKG) or src == PKG:
                continue
            if RANK[dst] > RANK[src]:
                bad.append(f"  {i}  ({src}, layer {RANK[src]} -> {dst}, layer {RANK[dst]})")
            elif RANK[dst] == RANK[src]:
                bad.append(f"  {i}  ({src} and {dst} share layer {RANK[src]}: they do not import each other)")
    assert not bad, ("an import runs up the house (LAYERS in tests/unit/test_layers.py, bottom first: "
                     + " < ".join("/".join(layer) for layer in LAYERS) + "):\n" + "\n".join(bad))


def _module_of_target(target: str) -> str | None:
    return target if target in MODULES else None


def _heavy_at_import() -> dict[str, set[str]]:
    """Project module -> the heavy libraries importing it loads (module-level imports, transitively)."""
    direct: dict[str, set[str]] = {m: set() for m in MODULES}
    deps: dict[str, set[str]] = {m: set() for m in MODULES}
    for i in IMPORTS:
        if not i.toplevel:
            continue
        mod = _module_name(REPO / i.path)
        if _top(i.module) in HEAVY:
            direct[mod].add(_top(i.module))
        for t in own_targets(i):
            if t in MODULES:
                deps[mod].add(t)
    heavy: dict[str, set[str]] = {}

    def visit(m: str, seen: set[str]) -> set[str]:
        if m in heavy:
            return heavy[m]
        out = set(direct[m])
        for d in deps[m]:
            if d not in seen:
                out |= visit(d, seen | {d})
        heavy[m] = out
        return out

    for m in MODULES:
        visit(m, {m})
    return heavy


def _defining_modules(imp: Imp) -> list[str]:
    """The modules an import really loads: a name a package exports lazily (``lazy_exports``) resolves to
    the submodule that defines it (``from convlstm_dist.tracking import Tracker`` -> its mlflow_tracker)."""
    out = []
    for t in own_targets(imp):
        public = getattr(importlib.import_module(t), "_PUBLIC", None) if t == imp.module and t in MODULES else None
        if public and imp.names:
            where = {n: m for m, names in public.items() for n in names}
            out += [f"{t}.{where[n]}" if n in where else t for n in imp.names]
        else:
            out.append(t)
    return list(dict.fromkeys(out))


def test_function_local_imports_only_keep_heavy_libraries_off_the_start():
    heavy = _heavy_at_import()
    bad = []
    for i in IMPORTS:
        if i.toplevel:
            continue
        mine = heavy.get(_module_name(REPO / i.path), set())
        for t in _defining_modules(i):
            if t in MODULES and not (heavy.get(t, set()) - mine):
                bad.append(f"  {i}  ({t} loads no heavy library that this module does not load already: "
                           "import it at module level)")
    assert not bad, ("a function-local import that keeps nothing heavy off the start (move it to the module's top; "
                     f"heavy: {sorted(HEAVY)}):\n" + "\n".join(bad))


def test_no_import_cycle_between_modules():
    """Counting every import (module level, function-local, TYPE_CHECKING), no module reaches itself."""
    graph: dict[str, dict[str, list]] = {}
    for i in IMPORTS:
        src = _module_name(REPO / i.path)
        for dst in _defining_modules(i):
            if dst in MODULES and dst != src and not (src + ".").startswith(dst + "."):  # a package's own __init__
                graph.setdefault(src, {}).setdefault(dst, []).append(i)
    cycle = find_cycle(graph)
    if cycle:
        lines = [f"  {i}" for a, b in zip(cycle, cycle[1:]) for i in graph[a][b]]
        pytest.fail(f"modules import each other in a cycle ({' -> '.join(cycle)}):\n" + "\n".join(lines))


def test_layers_walk_sees_function_local_imports():
    src = "def f():\n    from convlstm_dist.experiments import heldout\n"
    (imp,) = imports_of(src, "convlstm_dist/verify/x.py", "convlstm_dist.verify.x")
    assert not imp.toplevel and subpackage_of_module(own_targets(imp)[0]) == "experiments"
    assert RANK["experiments"] > RANK["verify"]  # the test above would refuse it


# --------------------------------------------------------------------------- one door per package

SUBPACKAGES = sorted(p.parent.name for p in PKG_DIR.glob("*/__init__.py"))

# Names other packages import from a module of X that are not in X.__all__, each with its reason:
# (subpackage, name) -> reason. An entry no import needs any more fails test_public_exceptions_are_still_needed.
NOT_IN_ALL: dict[tuple[str, str], str] = {
    ("data", "ingest"): "the function has its module's name (data/ingest.py), which would shadow it in the package",
    ("models", "human"): "a formatting helper of models/flops.py (describe prints FLOPs with it), too generic a "
                         "name for the package's surface",
}


def _public(sub: str) -> list[str]:
    return list(importlib.import_module(f"{PKG}.{sub}").__all__)


def _imported_across() -> dict[tuple[str, str], list[Imp]]:
    """(subpackage, name) -> the imports from another subpackage that take ``name`` out of it."""
    out: dict[tuple[str, str], list[Imp]] = {}
    for i in IMPORTS:
        dst = subpackage_of_module(i.module)
        if dst not in SUBPACKAGES or dst == subpackage_of_path(i.path):
            continue
        for n in i.names:
            if f"{i.module}.{n}" not in MODULES:  # a submodule is reached by its path, not through __all__
                out.setdefault((dst, n), []).append(i)
    return out


@pytest.mark.parametrize("sub", SUBPACKAGES)
def test_every_subpackage_names_its_public_api(sub):
    mod = importlib.import_module(f"{PKG}.{sub}")
    assert (mod.__doc__ or "").strip(), f"{PKG}/{sub}/__init__.py: a docstring says what the package is for"
    names = getattr(mod, "__all__", None)
    assert isinstance(names, list) and names, f"{PKG}/{sub}/__init__.py has no __all__"
    assert len(set(names)) == len(names), f"{PKG}.{sub}.__all__ names something twice"
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, f"{PKG}.{sub}.__all__ names what does not resolve: {missing}"


def test_public_api_covers_what_other_packages_import():
    bad = []
    for (sub, name), imps in sorted(_imported_across().items()):
        if name not in _public(sub) and (sub, name) not in NOT_IN_ALL:
            bad += [f"  {i}  ({name} is not in {PKG}.{sub}.__all__)" for i in imps]
    assert not bad, "a name other packages import is part of the package's public API (__all__):\n" + "\n".join(bad)


def test_public_exceptions_are_still_needed():
    used = _imported_across()
    stale = [f"{k}: {why}" for k, why in NOT_IN_ALL.items() if k not in used or k[1] in _public(k[0])]
    assert not stale, "NOT_IN_ALL entries no longer needed (remove them):\n" + "\n".join(f"  {s}" for s in stale)


def test_importing_the_packages_and_the_parser_is_light():
    heavy = ("torch", "ray", "zarr", "mlflow")
    code = ("import sys\n"
            + "".join(f"import {PKG}.{sub}\n" for sub in SUBPACKAGES if sub != "models")  # models is torch
            + f"from {PKG}.cli import build_parser\nbuild_parser()\n"
            + f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(heavy)!r}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"importing the packages / building the parser loaded {out.stdout.strip()}"


# --------------------------------------------------------------------------- the walker itself


def test_walker_sees_nested_relative_and_submodule_imports():
    src = (
        "from __future__ import annotations\n"
        "import os.path\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from convlstm_dist.train import driver\n"
        "try:\n"
        "    import yaml\n"
        "except ImportError:\n"
        "    yaml = None\n"
        "from ..config import _merge\n"
        "class A:\n"
        "    def f(self):\n"
        "        from ray import train\n"
    )
    imps = imports_of(src, "convlstm_dist/tune/x.py", "convlstm_dist.tune.x")
    by_line = {i.line: i for i in imps}
    assert by_line[2].module == "os.path" and by_line[2].toplevel
    assert not by_line[5].toplevel  # TYPE_CHECKING only
    assert by_line[7].toplevel  # module-level try
    assert by_line[10].module == "convlstm_dist.config" and by_line[10].names == ("_merge",)
    assert not by_line[13].toplevel and "ray.train" in by_line[13].targets()
    assert str(by_line[13]) == "convlstm_dist/tune/x.py:13: from ray import train"


def test_find_cycle():
    assert find_cycle({"a": {"b": []}, "b": {"c": []}}) is None
    assert find_cycle({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}}) == ["a", "b", "c", "a"]
