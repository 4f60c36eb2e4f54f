"""The infra files parse and agree with the project (no Kubernetes or Docker engine here)."""

from pathlib import Path

import yaml

INFRA = Path(__file__).parents[1] / "infra"


def test_the_ray_cluster_manifest_runs_the_pinned_ray_with_token_auth() -> None:
    manifest = yaml.safe_load((INFRA / "ray-cluster.driftloop.yaml").read_text())
    constraints = (INFRA.parent / "constraints.txt").read_text()
    assert manifest["kind"] == "RayCluster"
    assert f"ray=={manifest['spec']['rayVersion']}" in constraints
    pods = [manifest["spec"]["headGroupSpec"]] + manifest["spec"]["workerGroupSpecs"]
    for pod in pods:
        env = {e["name"]: e["value"] for e in pod["template"]["spec"]["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"] == "token"


def test_the_image_installs_with_the_same_constraints_as_make_install() -> None:
    recipe = (INFRA / "Dockerfile").read_text()
    assert "pip install --no-cache-dir -c constraints.txt ." in recipe
    assert "COPY flows" in recipe
    assert "COPY tasks" in recipe
