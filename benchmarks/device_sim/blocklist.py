"""Print the modules to hide so that this environment looks like the GPU machine + device bundle.

    python benchmarks/device_sim/blocklist.py IMAGE_PACKAGES BUNDLE_REQUIREMENTS

Every installed distribution that is neither in IMAGE_PACKAGES (names, whitespace separated, '#'
comments) nor in BUNDLE_REQUIREMENTS (pip pins) is hidden: its top-level modules, or, where the
top level is a namespace shared with a kept distribution (``google``), its second-level modules.
Prints one comma-separated line for DEVICE_SIM_BLOCK; the hidden distributions go to stderr.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys

KEEP_ALWAYS = {"convlstm-dist"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def names(path: str) -> set[str]:
    out = set()
    for line in open(path):
        line = line.split("#", 1)[0]
        for word in line.split():
            out.add(norm(re.split(r"[=<>!~\[;]", word, maxsplit=1)[0]))
    return out


def module_roots(dist: md.Distribution) -> set[tuple[str, ...]]:
    roots = set()
    for f in dist.files or ():
        parts = f.parts
        if not parts or parts[0].endswith((".dist-info", ".data")) or parts[0] in ("..", "bin", "__pycache__"):
            continue
        if len(parts) == 1:
            if f.suffix in (".py", ".so", ".pyd"):
                roots.add((f.name.split(".")[0],))
        else:
            roots.add((parts[0], parts[1].split(".")[0]) if f.suffix in (".py", ".so") else (parts[0],))
    return roots


def main(image_file: str, bundle_file: str) -> None:
    keep = names(image_file) | names(bundle_file) | KEEP_ALWAYS
    dists = {norm(d.metadata["Name"]): d for d in md.distributions()}
    hidden = sorted(n for n in dists if n not in keep)
    kept_tops = {r[0] for n, d in dists.items() if n in keep for r in module_roots(d)}
    block = set()
    for n in hidden:
        for r in module_roots(dists[n]):
            if r[0] in kept_tops:  # a namespace shared with a kept package: hide the sub-package only
                if len(r) > 1 and r[1] != "__init__":
                    block.add(f"{r[0]}.{r[1]}")
            else:
                block.add(r[0])
    print(f"hidden ({len(hidden)}): {' '.join(hidden)}", file=sys.stderr)
    print(",".join(sorted(block)))


if __name__ == "__main__":
    main(*sys.argv[1:3])
