"""The infra files parse and agree with the project (no Kubernetes or Docker engine here)."""

import re
from pathlib import Path
from typing import Any

import yaml

from tasks.settings import DatasetConfig, Settings

INFRA = Path(__file__).parents[1] / "infra"
MANIFEST = INFRA / "ray-cluster.driftloop.yaml"


def ray_pods(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The head group and every worker group of a RayCluster."""
    return [manifest["spec"]["headGroupSpec"], *manifest["spec"]["workerGroupSpecs"]]


def env_of(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in pod["template"]["spec"]["containers"][0]["env"]}


def test_the_ray_cluster_manifest_runs_the_pinned_ray_with_token_auth() -> None:
    manifest = yaml.safe_load(MANIFEST.read_text())
    constraints = (INFRA.parent / "constraints.txt").read_text()
    assert manifest["kind"] == "RayCluster"
    assert f"ray=={manifest['spec']['rayVersion']}" in constraints
    for pod in ray_pods(manifest):
        assert env_of(pod)["RAY_AUTH_MODE"]["value"] == "token"


def test_head_and_every_worker_group_read_the_token_from_the_same_secret() -> None:
    text = MANIFEST.read_text()
    pods = ray_pods(yaml.safe_load(text))
    assert len(pods) >= 3  # the head, CPU workers, GPU workers
    sources = set()
    for pod in pods:
        token = env_of(pod)["RAY_AUTH_TOKEN"]
        assert "value" not in token  # never a token written into the manifest
        ref = token["valueFrom"]["secretKeyRef"]
        sources.add((ref["name"], ref["key"]))
    assert len(sources) == 1
    # The header tells the reader how to create exactly that secret.
    ((name, key),) = sources
    assert f"kubectl create secret generic {name} --from-literal={key}=" in text


def test_the_manifest_home_is_a_bucket_and_its_ray_address_one_the_code_joins() -> None:
    text = MANIFEST.read_text()
    head = env_of(yaml.safe_load(text)["spec"]["headGroupSpec"])
    home = head["DRIFTLOOP_HOME"]["value"]
    settings = Settings(home=home, dataset=DatasetConfig(name="m", source="x", target="y"))
    assert not settings.home_is_local  # shared by every pod, unlike a folder on one of them
    # The suggested addresses are what `connect_ray` takes: a Ray Client URL or a Ray Job.
    addresses = re.findall(r"RAY_ADDRESS=(\S+)", text)
    assert addresses
    assert all(a.startswith("ray://") for a in addresses)
    assert "ray job submit" in text


def test_the_image_installs_with_the_same_constraints_as_make_install() -> None:
    recipe = (INFRA / "Dockerfile").read_text()
    assert "pip install --no-cache-dir -c constraints.txt ." in recipe
    assert "COPY flows" in recipe
    assert "COPY tasks" in recipe
