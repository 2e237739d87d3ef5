"""Cluster configs: ray_cluster.yaml is valid against Ray's own schema, every manifest in cluster/
parses, and every image / version pin matches pyproject.toml (Ray) and .ci/setup-env (torch)."""

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
