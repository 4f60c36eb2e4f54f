"""The infra files parse and agree with the project (no Kubernetes, Docker engine or Ray here):
every import path and command they name exists and imports, the Serve configs validate against
Serve's own schema and their `args` build the app, the work pool template renders a Job, and
each file says which ports it opens and to whom."""

import importlib
import json
import re
import shlex
from collections.abc import Iterator
from importlib.metadata import entry_points, version
from itertools import takewhile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.settings import DatasetConfig, Settings

ROOT = Path(__file__).parents[1]
INFRA = ROOT / "infra"
CLUSTER = INFRA / "ray-cluster.driftloop.yaml"
JOB = INFRA / "ray-job.driftloop.yaml"
SERVICE = INFRA / "ray-service.driftloop.yaml"
SERVE_CONFIG = INFRA / "serve" / "driftloop.yaml"
PREFECT_PROCESS = INFRA / "prefect.yaml"
PREFECT_K8S = INFRA / "prefect.kubernetes.yaml"
POOL = INFRA / "work-pool.kubernetes.json"
DOCKERFILE = INFRA / "Dockerfile"
RAY_MANIFESTS = [CLUSTER, JOB, SERVICE]
# What every Ray head opens whether declared or not (KubeRay's defaults): GCS, dashboard and
# Jobs API, Ray Client, metrics
RAY_PORTS = {6379, 8265, 10001, 8080}


def load(path: Path) -> Any:
    return (
        json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    )


def cluster_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    """The RayCluster spec of a RayCluster, a RayJob or a RayService."""
    spec = manifest["spec"]
    return dict(spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec)


def ray_pods(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The head group and every worker group."""
    spec = cluster_spec(manifest)
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


def container(pod: dict[str, Any]) -> dict[str, Any]:
    return dict(pod["template"]["spec"]["containers"][0])


def env_of(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(pod)["env"]}


def pool_job() -> dict[str, Any]:
    return dict(load(POOL)["job_configuration"]["job_manifest"])


def pool_container() -> dict[str, Any]:
    return dict(pool_job()["spec"]["template"]["spec"]["containers"][0])


def serve_configs() -> dict[str, dict[str, Any]]:
    """Every Serve config: the file for `serve deploy` and the RayService's serveConfigV2."""
    return {
        "serve/driftloop.yaml": load(SERVE_CONFIG),
        "ray-service serveConfigV2": yaml.safe_load(load(SERVICE)["spec"]["serveConfigV2"]),
    }


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of a parsed document, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key), value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def header(path: Path) -> str:
    """The comment block a file opens with (the work pool template, JSON, keeps it in
    `variables.description`)."""
    if path.suffix == ".json":
        return str(load(path)["variables"]["description"])
    lines = path.read_text().splitlines()
    return "\n".join(takewhile(lambda line: line.startswith("#"), lines))


def listed_ports(text: str) -> dict[int, str]:
    """The port entries of a header's Ports section: `#   6379   what: who`, continued below."""
    entries: dict[int, str] = {}
    current: int | None = None
    for line in text.split("Ports", 1)[1].splitlines()[1:]:
        if match := re.match(r"#\s+(\d{2,5})\s+(.*)$", line):
            current = int(match[1])
            entries[current] = match[2]
        elif current is not None and re.match(r"#\s{6,}\S", line):
            entries[current] += " " + line.lstrip("# ")
        else:
            current = None
    return entries


def declared_ports(document: Any) -> set[int]:
    """The ports a parsed manifest names: container ports and Serve's HTTP ports."""
    ports = {int(v) for k, v in walk(document) if k in ("containerPort", "port")}
    for key, value in walk(document):
        if key == "serveConfigV2":
            ports |= declared_ports(yaml.safe_load(value))
    return ports


def test_every_yaml_and_json_file_under_infra_parses() -> None:
    found = {p.relative_to(INFRA).as_posix(): p for p in INFRA.rglob("*") if p.is_file()}
    manifests = {name: path for name, path in found.items() if path.suffix in (".yaml", ".json")}
    assert set(manifests) == {
        "ray-cluster.driftloop.yaml",
        "ray-job.driftloop.yaml",
        "ray-service.driftloop.yaml",
        "serve/driftloop.yaml",
        "prefect.yaml",
        "prefect.kubernetes.yaml",
        "work-pool.kubernetes.json",
    }
    for path in manifests.values():
        assert isinstance(load(path), dict), path
    for config in serve_configs().values():
        assert config["applications"]


# Ports: which, and to whom ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [CLUSTER, JOB, SERVICE, SERVE_CONFIG, POOL, PREFECT_PROCESS, PREFECT_K8S, DOCKERFILE],
    ids=lambda p: p.relative_to(INFRA).as_posix(),
)
def test_every_manifest_opens_with_the_ports_it_opens_and_to_whom(path: Path) -> None:
    text = header(path)
    assert "Ports" in text, f"{path.name}: no Ports section in its opening comment"
    listed = listed_ports(text)
    for port, entry in listed.items():
        what, _, who = entry.partition(": ")
        assert what, f"{path.name}: port {port} does not say what it is"
        assert who, f"{path.name}: port {port} does not say to whom"
    if path == DOCKERFILE:  # what runs in the image: a Ray head, a Serve app
        assert {6379, 8265, 10001, 8000} <= set(listed)
        return
    document = load(path)
    assert declared_ports(document) <= set(listed), f"{path.name}: a port it opens is unlisted"
    if path in RAY_MANIFESTS:
        assert set(listed) >= RAY_PORTS
        assert "CVE-2023-48022" in text
    elif not listed:  # it opens none, and says so
        assert re.search(r"Ports: (a flow-run pod opens )?none", text), path.name


def test_no_manifest_puts_a_load_balancer_or_node_port_in_front_of_ray() -> None:
    for path in RAY_MANIFESTS:
        manifest = load(path)
        types = {v for k, v in walk(manifest) if k in ("type", "serviceType")}
        assert not types & {"LoadBalancer", "NodePort"}, path.name
        assert cluster_spec(manifest)["headGroupSpec"]["serviceType"] == "ClusterIP"


def test_the_serve_config_of_a_laptop_binds_loopback_and_the_cluster_s_every_pod() -> None:
    local, cluster = serve_configs().values()
    assert local["http_options"]["host"] == "127.0.0.1"  # a config file's default is 0.0.0.0
    # in pods, the ClusterIP Service in front of 8000 decides who reaches it
    assert cluster["http_options"] == {"host": "0.0.0.0", "port": 8000}
    assert cluster["proxy_location"] == "EveryNode"


# Ray: one token, one Ray version, one image, a shared home -----------------------------------


def test_every_ray_pod_of_every_manifest_reads_the_token_from_one_secret() -> None:
    secrets = set()
    for path in RAY_MANIFESTS:
        manifest = load(path)
        pods = ray_pods(manifest)
        assert len(pods) >= 2, path.name  # a head and workers
        for pod in pods:
            env = env_of(pod)
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert "value" not in env["RAY_AUTH_TOKEN"]  # never a token written in a manifest
            ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
            secrets.add((ref["name"], ref["key"]))
    pool_env = {e["name"]: e for e in pool_container()["env"]}
    ref = pool_env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]  # Ray Client drivers too
    secrets.add((ref["name"], ref["key"]))
    ((name, key),) = secrets
    assert key == "auth_token"  # the key KubeRay's authOptions.secretName reads
    for path in (JOB, SERVICE):  # the operator calls their dashboards: it must hold the token
        assert cluster_spec(load(path))["authOptions"] == {"mode": "token", "secretName": name}
    for path in RAY_MANIFESTS:  # each header tells the reader how to create exactly that secret
        assert f"kubectl create secret generic {name} --from-literal={key}=" in path.read_text()


def test_the_ray_manifests_run_the_pinned_ray_in_the_image_the_dockerfile_builds() -> None:
    constraints = (ROOT / "constraints.txt").read_text()
    tag = f"driftloop:{version('driftloop')}"
    assert f"-t {tag} " in DOCKERFILE.read_text()
    images = {load(POOL)["variables"]["properties"]["image"]["default"]}
    for path in RAY_MANIFESTS:
        manifest = load(path)
        assert f"ray=={cluster_spec(manifest)['rayVersion']}" in constraints
        images |= {container(pod)["image"] for pod in ray_pods(manifest)}
    assert images == {tag, f"{tag}-cuda"}  # the CUDA build: the same recipe on a CUDA base


def test_every_cluster_has_cpu_workers_and_the_training_ones_gpu_workers() -> None:
    for path in (CLUSTER, JOB):
        groups = {g["groupName"]: g for g in cluster_spec(load(path))["workerGroupSpecs"]}
        gpus = container(groups["gpu-workers"])["resources"]["limits"]["nvidia.com/gpu"]
        assert gpus == 1
        assert "nvidia.com/gpu" not in container(groups["cpu-workers"])["resources"]["limits"]


def test_every_home_is_a_bucket_and_every_ray_address_one_the_code_joins() -> None:
    def shared(home: str) -> bool:
        settings = Settings(home=home, dataset=DatasetConfig(name="m", source="x", target="y"))
        return not settings.home_is_local  # shared by every pod, unlike a folder on one of them

    pool_env = load(POOL)["variables"]["properties"]["env"]["default"]
    homes = [
        env_of(cluster_spec(load(CLUSTER))["headGroupSpec"])["DRIFTLOOP_HOME"]["value"],
        env_of(cluster_spec(load(JOB))["headGroupSpec"])["DRIFTLOOP_HOME"]["value"],
        serve_configs()["ray-service serveConfigV2"]["applications"][0]["args"]["home"],
        pool_env["DRIFTLOOP_HOME"],
    ]
    assert all(shared(home) for home in homes), homes
    # Drivers outside the Ray pods join through Ray Client (`connect_ray` takes ray://), on the
    # head Service KubeRay names after the RayCluster
    text = CLUSTER.read_text()
    addresses = [*re.findall(r"RAY_ADDRESS=(\S+)", text), pool_env["RAY_ADDRESS"]]
    assert all(a.startswith("ray://") for a in addresses)
    assert pool_env["RAY_ADDRESS"] == f"ray://{load(CLUSTER)['metadata']['name']}-head-svc:10001"
    assert "ray job submit" in text


# Every import path, entrypoint and command exists --------------------------------------------


def cli_commands() -> dict[str, list[str]]:
    """The `driftloop` console script's commands and their options, from the installed package."""
    import typer.main

    (script,) = entry_points(group="console_scripts", name="driftloop")
    module, _, function = script.value.partition(":")
    assert callable(getattr(importlib.import_module(module), function))
    from flows.cli import app

    group: Any = typer.main.get_command(app)
    return {name: [o for p in c.params for o in p.opts] for name, c in group.commands.items()}


def test_the_ray_job_runs_driftloop_train_with_a_config_its_head_mounts() -> None:
    manifest = load(JOB)
    program, command, option, config = shlex.split(manifest["spec"]["entrypoint"])
    assert (program, command) == ("driftloop", "train")
    assert option in cli_commands()["train"]
    head = cluster_spec(manifest)["headGroupSpec"]
    mounts = {m["mountPath"]: m["name"] for m in container(head)["volumeMounts"]}
    volumes = {v["name"]: v for v in head["template"]["spec"]["volumes"]}
    assert "configMap" in volumes[mounts[str(Path(config).parent)]]
    assert manifest["spec"]["shutdownAfterJobFinishes"] is True  # no idle cluster left behind


def test_every_driftloop_command_the_infra_files_suggest_exists() -> None:
    shell = r"(?:^#\s+|--\s+)(?:[A-Z_]+=\S+\s+)*driftloop ([a-z][a-z-]*)"
    suggested = {
        command
        for path in INFRA.rglob("*")
        if path.is_file()
        for command in re.findall(shell, path.read_text(), flags=re.MULTILINE)
    }
    assert "train" in suggested
    assert suggested <= set(cli_commands())


def test_every_flow_entrypoint_of_both_prefect_files_exists_and_is_a_flow() -> None:
    from prefect import Flow

    for path in (PREFECT_PROCESS, PREFECT_K8S):
        for deployment in load(path)["deployments"]:
            file, _, name = deployment["entrypoint"].partition(":")
            assert (ROOT / file).is_file(), deployment["entrypoint"]
            module = importlib.import_module(file.removesuffix(".py").replace("/", "."))
            assert isinstance(getattr(module, name), Flow)


def test_every_serve_config_validates_against_serve_s_schema_and_names_build_app() -> None:
    from ray._common.utils import import_attr
    from ray.serve.schema import ServeDeploySchema

    from tasks.serve import DEPLOYMENT, ServeArgs, build_app

    for where, config in serve_configs().items():
        schema = ServeDeploySchema.model_validate(config)  # what `serve deploy` and KubeRay send
        (app,) = schema.applications
        assert import_attr(app.import_path) is build_app, where
        ServeArgs.model_validate(app.args)  # the args as written, their bucket home included
    for path in (SERVE_CONFIG, SERVICE):  # the name a config's `deployments:` swap targets
        assert f"name: {DEPLOYMENT}" in path.read_text()


@pytest.mark.parametrize("where", ["serve/driftloop.yaml", "ray-service serveConfigV2"])
def test_every_serve_config_s_args_build_the_app_as_serve_builds_it(
    where: str, tmp_path: Path
) -> None:
    from ray._common.utils import import_attr
    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from tasks.serve import DEPLOYMENT

    (app,) = serve_configs()[where]["applications"]
    # As Serve's controller builds it (ray/serve/_private/application_state.py), on an empty
    # home instead of the bucket: no champion yet, so it serves none until one is promoted
    built = call_user_app_builder_with_args_if_necessary(
        import_attr(app["import_path"]), {**app["args"], "home": str(tmp_path)}
    )
    assert isinstance(built, Application)
    deployment = built._bound_deployment
    assert deployment.name == DEPLOYMENT
    assert deployment.user_config == {"version": None}


# The Kubernetes work pool and its deployments -------------------------------------------------


def test_the_work_pool_template_declares_every_variable_its_job_uses_and_no_other() -> None:
    from prefect.server.schemas.actions import validate_base_job_template
    from prefect.utilities.templating import find_placeholders

    template = load(POOL)
    validate_base_job_template(template)  # the Prefect server's own check
    used = {p.name for p in find_placeholders(template["job_configuration"])}
    assert used == set(template["variables"]["properties"])


def test_the_work_pool_template_renders_a_job_the_kubernetes_worker_accepts() -> None:
    from prefect.utilities.templating import apply_values

    template = load(POOL)
    properties = template["variables"]["properties"]
    defaults = {k: v["default"] for k, v in properties.items() if v.get("default") is not None}
    rendered = apply_values(template["job_configuration"], defaults)
    assert "{{" not in json.dumps(rendered)
    job = rendered["job_manifest"]
    pod = job["spec"]["template"]["spec"]
    # what prefect-kubernetes requires of a job manifest (worker.py: _get_base_job_manifest)
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert (pod["parallelism"], pod["completions"], pod["restartPolicy"]) == (1, 1, "Never")
    (main,) = pod["containers"]
    assert main["name"] == "prefect-job"
    assert main["image"] == f"driftloop:{version('driftloop')}"
    assert "command" not in main  # the worker's args run as given: the image has no ENTRYPOINT
    assert not re.search(r"^ENTRYPOINT", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert main["resources"]["requests"] == {"cpu": "1", "memory": "4Gi"}


def test_the_kubernetes_deployments_are_the_process_ones_on_the_kubernetes_pool() -> None:
    process = {d["name"]: d for d in load(PREFECT_PROCESS)["deployments"]}
    k8s = {d["name"]: d for d in load(PREFECT_K8S)["deployments"]}
    assert set(k8s) == set(process)  # the same names: run_deployment and the trigger unchanged
    differ = {"work_pool", "parameters"}
    for name, deployment in k8s.items():
        same = {k: v for k, v in deployment.items() if k not in differ}
        assert same == {k: v for k, v in process[name].items() if k not in differ}, name
    # The pool they name is the one the header creates, from this template
    text = PREFECT_K8S.read_text()
    pool, template = re.findall(
        r"prefect work-pool create (\S+) --type kubernetes \\\n#\s+--base-job-template (\S+)", text
    )[0]
    assert (ROOT / template).resolve() == POOL.resolve()
    assert {d["work_pool"]["name"] for d in k8s.values()} == {pool}
    # Each run reads a config the pool's pod mounts, from the folder the image holds the flows in
    mounts = [m["mountPath"] for m in pool_container()["volumeMounts"]]
    for deployment in k8s.values():
        assert str(Path(deployment["parameters"]["config"]).parent) in mounts
    ((step, options),) = load(PREFECT_K8S)["pull"][0].items()
    assert step == "prefect.deployments.steps.set_working_directory"
    workdir = re.findall(r"^WORKDIR (\S+)", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert workdir == [options["directory"]]


def test_the_image_installs_with_the_same_constraints_as_make_install() -> None:
    recipe = DOCKERFILE.read_text()
    assert "pip install --no-cache-dir -c constraints.txt ." in recipe
    copied = [
        source
        for line in re.findall(r"^COPY (.+)$", recipe, flags=re.MULTILINE)
        for source in line.split()[:-1]
    ]
    assert {"flows", "tasks", "constraints.txt", "pyproject.toml"} <= set(copied)
    for source in copied:  # every path it copies exists (setuptools needs LICENSE, for one)
        assert (ROOT / source).exists(), source
