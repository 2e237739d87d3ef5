"""Cluster configs: ray_cluster.yaml is valid against Ray's own schema, every manifest in cluster/
parses, and every image / version pin matches pyproject.toml (Ray) and .ci/setup-env (torch).
Security (cluster/README.md, "Security"): every Ray node / container runs with token
authentication from a file or Secret, every pod template is covered by a NetworkPolicy, MLflow on
Kubernetes needs a login and admits only the Ray pods, and no manifest holds a secret."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"


def _pyproject_ray_spec() -> str:
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray_dep,) = [d for d in deps if re.match(r"ray(\[|\s|=|$)", d)]
    return ray_dep.split("]", 1)[-1] if "]" in ray_dep else ray_dep[3:]


def _ray_version_ok(version: str) -> bool:
    from packaging.specifiers import SpecifierSet

    return version in SpecifierSet(_pyproject_ray_spec())


def _torch_pin() -> str:
    m = re.search(r"TORCH_VERSION:-([0-9.]+)", (REPO / ".ci" / "setup-env").read_text())
    assert m, ".ci/setup-env no longer pins a default torch version"
    return m.group(1)


def _torch_ok(version: str) -> bool:
    import tomllib

    from packaging.requirements import Requirement

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch_dep,) = [Requirement(d) for d in deps if Requirement(d).name == "torch"]
    return version in torch_dep.specifier and version == _torch_pin()


def test_ray_cluster_yaml_matches_ray_schema():
    import jsonschema
    import ray

    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    cfg = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    jsonschema.validate(cfg, schema)  # raises with the offending path

    # what `ray up` does before touching AWS: merge the provider defaults, check docker, validate
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cfg))


def test_ray_cluster_yaml_policy():
    cfg = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and "GPU" not in head["resources"], "no tasks on the head"
    assert "InstanceMarketOptions" not in head["node_config"], "the head is on-demand"
    gpu = {k: v for k, v in types.items() if v["resources"].get("GPU")}
    assert gpu and all(v.get("min_workers", 0) == 0 for v in types.values() if v is not head)
    assert any("InstanceMarketOptions" in v["node_config"] for v in gpu.values()), "spot GPU type"
    assert any("InstanceMarketOptions" not in v["node_config"] for v in gpu.values()), "on-demand fallback"
    assert any(not v["resources"].get("GPU") and v is not head for v in types.values()), "CPU data workers"
    for name, t in types.items():
        nc = t["node_config"]
        assert nc["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name
        # our own security group (Ray's auto-created one opens SSH to 0.0.0.0/0)
        assert nc.get("SecurityGroupIds"), name
    text = (REPO / "ray_cluster.yaml").read_text()
    assert not re.search(r"aws_access_key_id|aws_secret_access_key|AKIA[0-9A-Z]{16}", text, re.I), "no keys"
    assert "0.0.0.0/0" not in json.dumps(cfg)
    # dashboard / job API on loopback only
    head_cmd = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmd
    # image pinned to our Ray / torch versions
    image = cfg["docker"]["image"]
    ray_v = re.search(r"ray(\d+\.\d+\.\d+)", image).group(1)
    torch_v = re.search(r"torch(\d+\.\d+\.\d+)", image).group(1)
    assert _ray_version_ok(ray_v), (image, _pyproject_ray_spec())
    assert _torch_ok(torch_v), (image, _torch_pin())


def _cluster_yaml_files():
    return sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))


def test_every_cluster_manifest_parses_and_pins_match():
    files = _cluster_yaml_files()
    names = {p.relative_to(CLUSTER).as_posix() for p in files}
    assert {"kuberay/raycluster.yaml", "kuberay/rayjob.yaml"} <= names, names
    images = []
    for p in files:
        docs = [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
        assert docs, p
        text = p.read_text()
        images += re.findall(r"image:\s*\"?([^\s\"]+)", text)
        for m in re.finditer(r"rayVersion:\s*['\"]?([0-9.]+)", text):
            assert _ray_version_ok(m.group(1)), (p, m.group(1))
    ray_images = [i for i in images if "ray" in i.split("/")[-1]]
    assert ray_images
    for img in ray_images:
        tag = img.rsplit(":", 1)[1]
        m = re.search(r"ray(\d+\.\d+\.\d+)", tag) or re.match(r"(\d+\.\d+\.\d+)", tag)
        assert m, f"{img}: tag names no Ray version"
        ray_v = m.group(1)
        assert _ray_version_ok(ray_v), (img, _pyproject_ray_spec())
        tv = re.search(r"torch(\d+\.\d+\.\d+)", tag)
        if tv:
            assert _torch_ok(tv.group(1)), img


def test_kuberay_manifests_shape():
    rc = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    assert rc["kind"] == "RayCluster" and rc["apiVersion"].startswith("ray.io/")
    groups = rc["spec"]["workerGroupSpecs"]
    gpu_groups = [g for g in groups
                  if any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
                         for c in g["template"]["spec"]["containers"])]
    assert gpu_groups and len(groups) >= 2
    head_params = rc["spec"]["headGroupSpec"]["rayStartParams"]
    assert str(head_params.get("num-cpus")) == "0"

    rj = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
    assert rj["kind"] == "RayJob"
    spec = rj["spec"]
    assert spec["entrypoint"].startswith("convlstm-dist train --config pipelines/")
    assert "data.archive=s3://" in spec["entrypoint"] and "run.storage_path=s3://" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    renv = yaml.safe_load(spec["runtimeEnvYAML"])
    assert {"MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL"} <= set(renv["env_vars"])
    assert not any(re.search(r"secret|password|access_key", k, re.I) for k in renv["env_vars"])


def test_dockerfile_pins():
    text = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    assert base.startswith("rayproject/ray:")
    ray_v = re.search(r"(\d+\.\d+\.\d+)", base.split(":")[1]).group(1)
    assert _ray_version_ok(ray_v) and "py311" in base
    torch_v = re.search(r"ARG TORCH_VERSION=(\S+)", text).group(1)
    assert _torch_ok(torch_v)


# --- security: token auth, NetworkPolicies, MLflow login (issue 16, point 6) ----------------------

RAY_NAMESPACE = "convlstm"  # the namespace cluster/README.md and the kuberay/ headers deploy into


def _cluster_docs():
    """(path, document) for every YAML document under cluster/."""
    out = []
    for p in _cluster_yaml_files():
        out += [(p, d) for d in yaml.safe_load_all(p.read_text()) if d is not None]
    return out


def _ray_cluster_spec(doc):
    if doc.get("kind") == "RayCluster":
        return doc["spec"]
    if doc.get("kind") == "RayJob":
        return doc["spec"]["rayClusterSpec"]
    return None


def _pod_templates(doc):
    """(name, pod template) of every pod a manifest makes: Ray head / worker groups, the RayJob
    submitter, and the template of any workload kind (Deployment, StatefulSet, Job, ...)."""
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    cspec = _ray_cluster_spec(doc)
    if cspec is not None:
        yield f"{kind}/head", cspec["headGroupSpec"]["template"]
        for g in cspec.get("workerGroupSpecs", []):
            yield f"{kind}/{g['groupName']}", g["template"]
        if kind == "RayJob" and spec.get("submissionMode", "K8sJobMode") == "K8sJobMode":
            # without its own template the submitter pod has none of our labels: the head's
            # NetworkPolicy would drop its `ray job submit`
            assert "submitterPodTemplate" in spec, "RayJob without submitterPodTemplate"
            yield f"{kind}/submitter", spec["submitterPodTemplate"]
    elif isinstance(spec.get("template"), dict) and "spec" in spec["template"]:
        yield f"{kind}/{doc['metadata']['name']}", spec["template"]


def _containers(template):
    spec = template["spec"]
    return spec.get("containers", []) + spec.get("initContainers", [])


def _env(container_or_list):
    items = container_or_list if isinstance(container_or_list, list) else container_or_list.get("env", [])
    env = {}
    for e in items:
        assert e["name"] not in env, f"duplicate env var {e['name']}"
        env[e["name"]] = e
    return env


def _selector_matches(selector, labels) -> bool:
    """Kubernetes label selector semantics (matchLabels AND matchExpressions; {} matches all)."""
    if selector is None:
        return False
    labels = labels or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels,
              "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def _policies(directory):
    return [d for p, d in _cluster_docs() if p.parent == directory and d.get("kind") == "NetworkPolicy"]


def _ingress_rules(policy):
    spec = policy["spec"]
    if "Ingress" not in spec.get("policyTypes", ["Ingress"]):
        return None  # does not restrict ingress
    return spec.get("ingress") or []


def test_ray_cluster_yaml_every_ray_start_uses_token_auth(tmp_path):
    """(a) Run each start command of ray_cluster.yaml in bash with a stub `ray`: every `ray start`
    sees RAY_AUTH_MODE=token and a non-empty token file inside a file_mounts folder whose source is
    outside this repository; without the token file the command fails and Ray is never started."""
    import os
    import subprocess

    text = (REPO / "ray_cluster.yaml").read_text()
    cfg = yaml.safe_load(text)
    assert not re.search(r"RAY_AUTH_MODE=(?!token\b)", text), "every RAY_AUTH_MODE in the file is token"
    assert "RAY_AUTH_TOKEN=" not in text, "the token never appears in the file (a token file instead)"
    mounts = cfg.get("file_mounts") or {}
    for remote, local in mounts.items():
        src = Path(os.path.expanduser(local))
        assert src.is_absolute() and not src.resolve().is_relative_to(REPO), (
            f"file_mounts {remote}: the token source {local} must live outside the repository")
    # container-wide environment (ray exec, the autoscaler's own commands) agrees
    run_env = dict(re.findall(r"--env (RAY_AUTH_\w+)=(\S+)", " ".join(cfg["docker"]["run_options"])))
    assert run_env.get("RAY_AUTH_MODE") == "token", cfg["docker"]["run_options"]

    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "ray.log"
    stub = bindir / "ray"
    stub.write_text("#!/bin/sh\n"
                    f'echo "$1|${{RAY_AUTH_MODE:-}}|${{RAY_AUTH_TOKEN_PATH:-}}|${{RAY_AUTH_TOKEN:-}}" >> {log}\n')
    stub.chmod(0o755)

    def run(cmd, home):
        env = {"HOME": str(home), "PATH": f"{bindir}:/usr/bin:/bin", "RAY_HEAD_IP": "10.0.0.1"}
        return subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=30)

    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cfg[key] if re.search(r"\bray\s+start\b", c)]
        assert len(starts) == 1, (key, cfg[key])
        cmd = starts[0]

        # no token on the node: the command fails and never runs `ray start`
        bare = tmp_path / f"{key}-bare"
        bare.mkdir()
        log.unlink(missing_ok=True)
        r = run(cmd, bare)
        assert r.returncode != 0, (key, "started without a token", r.stdout, r.stderr)
        assert not log.exists() or "start|" not in log.read_text(), (key, log.read_text())

        # token delivered through file_mounts: `ray start` runs with token auth and that file
        home = tmp_path / f"{key}-home"
        home.mkdir()
        token_files = []
        for remote in mounts:
            d = home / remote.replace("~/", "", 1)
            d.mkdir(parents=True)
            (d / "auth_token").write_text("0123456789abcdef" * 4)
            token_files.append((d / "auth_token").resolve())
        log.unlink(missing_ok=True)
        r = run(cmd, home)
        assert r.returncode == 0, (key, r.stdout, r.stderr)
        (line,) = [ln for ln in log.read_text().splitlines() if ln.startswith("start|")]
        _, mode, token_path, token = line.split("|")
        assert mode == "token", (key, line)
        assert token == "" and token_path, (key, "the token comes from a file, not the command", line)
        assert Path(token_path).resolve() in token_files, (key, token_path, list(mounts))
        in_container = run_env.get("RAY_AUTH_TOKEN_PATH")
        assert in_container and in_container.endswith(token_path.replace(str(home), "", 1)), (
            key, in_container, token_path)


def test_kuberay_every_ray_container_has_token_auth():
    """(b) Every RayCluster / RayJob under cluster/ has authOptions token with a named Secret, and
    every container (head, workers, RayJob submitter, autoscaler) sets RAY_AUTH_MODE=token and takes
    RAY_AUTH_TOKEN from that Secret."""
    seen = 0
    for path, doc in _cluster_docs():
        cspec = _ray_cluster_spec(doc)
        if cspec is None:
            continue
        seen += 1
        auth = cspec.get("authOptions") or {}
        assert auth.get("mode") == "token", (path, doc["kind"], auth)
        secret = auth.get("secretName")
        assert secret, (path, "authOptions.secretName: a Secret created with kubectl, not generated")

        def check(where, env):
            assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", (path, where)
            tok = env.get("RAY_AUTH_TOKEN", {})
            ref = (tok.get("valueFrom") or {}).get("secretKeyRef") or {}
            assert "value" not in tok and ref.get("name") == secret and ref.get("key") == "auth_token", (
                path, where, tok)

        for name, template in _pod_templates(doc):
            containers = _containers(template)
            assert containers, (path, name)
            for c in containers:
                check(f"{name}/{c['name']}", _env(c))
        if cspec.get("enableInTreeAutoscaling"):
            check("autoscaler", _env((cspec.get("autoscalerOptions") or {}).get("env", [])))
    assert seen >= 2, "expected the RayCluster and the RayJob"


def test_no_secret_values_in_cluster_manifests():
    """Secrets are referenced, never written down: no Secret objects, no literal env values for
    tokens / passwords / keys, no credentials in URIs (comments with placeholders aside)."""
    secretish = re.compile(r"TOKEN|PASSWORD|SECRET|ACCESS_KEY", re.I)
    for path, doc in _cluster_docs():
        assert doc.get("kind") != "Secret", (path, "create Secrets with kubectl, not in the repo")
        for name, template in _pod_templates(doc):
            for c in _containers(template):
                for n, e in _env(c).items():
                    if secretish.search(n) and not n.endswith("_PATH"):
                        assert "value" not in e, (path, name, n)
        assert not re.search(r"://[^/\s:@'\"]+:[^/\s@'\"]+@", yaml.safe_dump(doc)), (
            path, "credentials in a URI")


def test_every_pod_template_is_covered_by_a_network_policy():
    """(c) Every pod template under cluster/ carries labels that the podSelector of a NetworkPolicy
    in the same directory matches; Ray pods are also admitted as peers of each other (workers and
    the submitter must reach the head)."""
    n = 0
    for path, doc in _cluster_docs():
        for name, template in _pod_templates(doc):
            n += 1
            labels = (template.get("metadata") or {}).get("labels") or {}
            assert labels, (path, name, "pod template without labels")
            selecting = [p for p in _policies(path.parent)
                         if _selector_matches(p["spec"].get("podSelector"), labels)
                         and _ingress_rules(p) is not None]
            assert selecting, (path, name, labels, "no NetworkPolicy in this directory selects it")
            if _ray_cluster_spec(doc) is not None:
                peers = [peer for p in selecting for rule in _ingress_rules(p)
                         for peer in rule.get("from", [])
                         if "namespaceSelector" not in peer
                         and _selector_matches(peer.get("podSelector"), labels)]
                assert peers, (path, name, "the Ray pods' policy does not admit the Ray pods")
    assert n >= 7  # RayCluster head + 2 groups, RayJob head + 2 groups + submitter, MLflow


def test_mlflow_on_kubernetes_requires_login_and_admits_only_ray_pods():
    """(d) The MLflow Deployment runs the basic-auth app (admin login and CSRF key from Secrets, a
    persistent user store without a password in it), is exposed as ClusterIP only, and a
    NetworkPolicy in the same file selects its pods and admits only the Ray pods, on MLflow's port."""
    import configparser
    from urllib.parse import urlsplit

    path = CLUSTER / "mlflow" / "k8s.yaml"
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    kinds = [d["kind"] for d in docs]
    assert "Ingress" not in kinds
    for svc in (d for d in docs if d["kind"] == "Service"):
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", svc["metadata"]["name"]

    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    template = dep["spec"]["template"]
    (c,) = [c for c in template["spec"]["containers"] if c["name"] == "mlflow"]
    argv = (c.get("command") or []) + (c.get("args") or [])
    assert "server" in argv
    app = [a.split("=", 1)[1] for a in argv if a.startswith("--app-name=")]
    app += [argv[i + 1] for i, a in enumerate(argv) if a == "--app-name"]
    assert app == ["basic-auth"], argv

    env = _env(c)
    for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert (env[name].get("valueFrom") or {}).get("secretKeyRef"), (name, env.get(name))
    # the auth app's settings: a mounted ConfigMap file with a persistent store and sane defaults
    cfg_path = Path(env["MLFLOW_AUTH_CONFIG_PATH"]["value"])
    (mount,) = [m for m in c.get("volumeMounts", []) if cfg_path.parent == Path(m["mountPath"])]
    (vol,) = [v for v in template["spec"]["volumes"] if v["name"] == mount["name"]]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == vol["configMap"]["name"]]
    ini = configparser.ConfigParser()
    ini.read_string(cm["data"][cfg_path.name])
    assert ini["mlflow"]["default_permission"] in ("READ", "NO_PERMISSIONS"), ini["mlflow"]["default_permission"]
    db = urlsplit(ini["mlflow"]["database_uri"])
    assert db.scheme.startswith("postgresql") and db.password is None, ini["mlflow"]["database_uri"]
    # readiness on the one unauthenticated route
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"

    port = c["ports"][0]["containerPort"]
    pod_labels = template["metadata"]["labels"]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"
                and _selector_matches(d["spec"].get("podSelector"), pod_labels)]
    assert policies, "no NetworkPolicy selects the MLflow pods"
    ray_labels = [t["metadata"]["labels"] for p, d in _cluster_docs() if _ray_cluster_spec(d) is not None
                  for name, t in _pod_templates(d) if not name.endswith("submitter")]
    ray_ns = {"kubernetes.io/metadata.name": RAY_NAMESPACE}
    for text in ((CLUSTER / "kuberay" / f).read_text() for f in ("raycluster.yaml", "rayjob.yaml")):
        assert f"-n {RAY_NAMESPACE} " in text, "the kuberay/ manifests deploy into RAY_NAMESPACE"
    for p in policies:
        rules = _ingress_rules(p)
        assert rules is not None, (p["metadata"]["name"], "must restrict Ingress")
        for rule in rules:
            peers = rule.get("from") or []
            assert peers, "an ingress rule without `from` admits everybody"
            for peer in peers:
                assert "ipBlock" not in peer and peer.get("podSelector"), peer
            assert {pt.get("port") for pt in rule.get("ports") or [{}]} == {port}, rule
    admitted = [peer for p in policies for rule in _ingress_rules(p) for peer in rule["from"]
                if _selector_matches(peer.get("namespaceSelector"), ray_ns)]
    assert admitted, "the Ray pods' namespace is not admitted"
    for labels in ray_labels:
        assert any(_selector_matches(peer["podSelector"], labels) for peer in admitted), labels
    # the Ray pods carry the login the server asks for
    for p, d in _cluster_docs():
        if _ray_cluster_spec(d) is None:
            continue
        for name, t in _pod_templates(d):
            if name.endswith("submitter"):
                continue
            for ct in t["spec"]["containers"]:
                e = _env(ct)
                for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                    assert (e.get(k, {}).get("valueFrom") or {}).get("secretKeyRef"), (p, name, k)


# --- the recipes point at data: S3 archive + S3 run.storage_path, one bucket (issue 22, item 5) ----------


def _train_commands(text: str) -> list[str]:
    """Every ``convlstm-dist train`` command in ``text`` with its continuation lines joined (shell ``\\``,
    YAML folded scalars and ``#`` comment blocks alike)."""
    lines = [re.sub(r"^\s*#\s?", "", ln) for ln in text.splitlines()]
    cmds = []
    for i, ln in enumerate(lines):
        if "convlstm-dist train" not in ln:
            continue
        cmd, j = ln, i
        while (cmd.rstrip().endswith("\\") or (j + 1 < len(lines) and lines[j + 1].strip().startswith("--set"))) \
                and j + 1 < len(lines):
            j += 1
            cmd = cmd.rstrip().rstrip("\\") + " " + lines[j].strip()
        cmds.append(cmd)
    return cmds


def _bucket_var(cmd: str) -> str:
    """The shell variable both the archive and the storage path take their bucket from."""
    archive = re.search(r"--set data\.archive=s3://\$\{?(\w+)\}?/\S+", cmd)
    storage = re.search(r"--set run\.storage_path=s3://\$\{?(\w+)\}?/\S+", cmd)
    assert archive and storage, f"a train command without an S3 archive and an S3 run.storage_path: {cmd}"
    assert archive.group(1) == storage.group(1), cmd
    return archive.group(1)


@pytest.mark.parametrize("path", ["ray_cluster.yaml", "cluster/README.md", "cluster/kuberay/rayjob.yaml"])
def test_train_recipes_pass_an_s3_archive_and_storage_from_one_bucket(path):
    text = (REPO / path).read_text()
    cmds = _train_commands(text)
    assert cmds, f"no convlstm-dist train command in {path}"
    for cmd in cmds:
        var = _bucket_var(cmd)
        # the bucket is named once: a shell assignment / container env entry in this file, or the env
        # file of local_cluster.sh (section 6 sources it)
        assigned = re.findall(rf"(?:^|\s|#)(?:export\s+)?{var}=(\S+)", text) + \
            re.findall(rf"name:\s*{var},\s*value:\s*(\S+?)\}}", text)
        if var == "BUCKET" and "source $LOCAL_RAY_DIR/env" in text and not assigned:
            assert "export BUCKET=$BUCKET" in (REPO / "cluster/local_cluster.sh").read_text()
            continue
        assert len(assigned) >= 1, f"{path}: ${var} is used but never set"
        assert len(set(assigned)) == 1, f"{path}: ${var} is set to different buckets: {assigned}"
        assert not re.search(r"s3://(?!\$)[a-z0-9][a-z0-9.-]+/(?:archives|runs)", cmd), cmd  # no second, literal bucket


def test_rayjob_bucket_reaches_the_submitter_shell():
    """KubeRay's submitter pod runs ``ray job submit ... -- <entrypoint>`` through its shell: the bucket
    variable must be set in that container (and nowhere it would be a secret)."""
    rj = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
    var = _bucket_var(" ".join(rj["spec"]["entrypoint"].split()))
    sub = rj["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in sub["env"]}
    assert env.get(var), f"{var} is not set in the submitter container"


def test_local_quickstart_blocks_are_complete():
    """cluster/README.md section 6 (run by tests/integration/test_cluster_quickstart.py): S3 on loopback
    next to Ray, an ingest into s3://, a submit with the archive and the storage path, and no secret
    passed through the runtime env."""
    from fixtures_cluster import readme_blocks

    blocks = readme_blocks()
    assert {"setup", "ingest", "train", "stop"} <= set(blocks)
    assert "local_cluster.sh s3 start" in blocks["setup"] and "source $LOCAL_RAY_DIR/env" in blocks["setup"]
    assert "$USER" not in "".join(blocks.values())  # unset in some shells
    assert "--archive s3://$BUCKET/" in blocks["ingest"]
    assert "--runtime-env $LOCAL_RAY_DIR/job.yaml" in blocks["train"] and "runtime-env >" in blocks["train"]
    assert not re.search(r"AWS_SECRET_ACCESS_KEY|aws_secret", blocks["train"], re.I)
    assert "local_cluster.sh stop" in blocks["stop"]
    docs = (REPO / "cluster" / "README.md").read_text()
    assert "local_cluster.sh add-node" in docs  # how to add a node back after one is lost
