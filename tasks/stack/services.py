"""The services the stack runs, and what each needs on disk before it starts.

A later stage adds a service by adding one `Service` to `stack_services`. Everything lives under
the home: the Prefect server's SQLite (`<home>/prefect`), Ray's session files (`<home>/run/ray`)
and Ray's auth token (`<home>/run/ray_auth_token`). Outside it: a symlink `/tmp/driftloop-<hash>`
to `<home>/run/ray` when that path is too long for Ray's unix sockets (removed by `down`), and
Ray's object store in shared memory (`/dev/shm`) while Ray runs.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import sys
from pathlib import Path

from tasks.stack.processes import HOST, Service, StackError, free_port

TOKEN_FILE = "ray_auth_token"
# The one set of default ports (StackConfig uses them). Ray's own default, 6379, is left to a Ray
# the user starts by hand.
PREFECT_PORT, RAY_PORT, DASHBOARD_PORT, RUNNER_PORT = 4200, 6380, 8265, 4210
# Ray's longest unix socket is <temp>/session_<date>_<time>_<us>_<pid>/sockets/plasma_store:
# about 66 characters past the temp dir, and AF_UNIX allows 103 (macOS) to 107 (Linux).
_RAY_TEMP_DIR_MAX = 36


def stack_services(
    *,
    home: Path,
    prefect_port: int = PREFECT_PORT,
    ray_port: int = RAY_PORT,
    dashboard_port: int = DASHBOARD_PORT,
    num_cpus: int | None = None,
) -> list[Service]:
    """The services `up` starts, in order."""
    return [
        prefect_service(home=home, port=prefect_port),
        ray_service(home=home, port=ray_port, dashboard_port=dashboard_port, num_cpus=num_cpus),
    ]


def prefect_service(*, home: Path, port: int) -> Service:
    """`prefect server start` with its SQLite database under `<home>/prefect`.

    It sees none of the caller's PREFECT_* variables (a user's database URL or profile must not
    reach it) and runs in its home, away from any `.env` or `prefect.toml` in the caller's folder.
    """
    base = f"http://{HOST}:{port}"
    prefect_home = home.resolve() / "prefect"
    return Service(
        name="prefect",
        command=(_executable("prefect"), "server", "start", "--host", HOST, "--port", str(port)),
        ports={"prefect": port},
        url=base,
        probes=(f"{base}/api/health",),
        env={
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_API_URL": f"{base}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no internet: it only logs errors
            "DO_NOT_TRACK": "1",  # Prefect's client-side telemetry switch
        },
        connect={"PREFECT_API_URL": f"{base}/api"},
        stop_grace_s=10.0,
        drop_env=("PREFECT_",),
        cwd=str(prefect_home),
    )


def ray_service(
    *, home: Path, port: int, dashboard_port: int, num_cpus: int | None = None
) -> Service:
    """A Ray head (`ray start --head --block`) whose every listener is on 127.0.0.1."""
    # Ports nobody types: fixed defaults (10001, 52365) would collide with any other Ray here.
    client_port, agent_port = free_port(), free_port()
    cpus = num_cpus or max(4, os.cpu_count() or 1)  # logical: training, Serve and flows share them
    env = {
        "RAY_AUTH_MODE": "token",  # never run an unauthenticated head (CVE-2023-48022)
        "RAY_AUTH_TOKEN_PATH": str(token_path(home=home)),  # not ~/.ray/auth_token
        # Without this Ray turns 127.0.0.1 into the host's public address, for the node and for
        # every driver: GCS, raylet and agents then listen on all interfaces.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        # A one-node stack has nowhere to drain to: SIGTERM would otherwise wait up to 30 s.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    keys = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    connect = {k: env[k] for k in keys}
    command = (
        *(_executable("ray"), "start", "--head", "--block", "--disable-usage-stats"),
        *("--node-ip-address", HOST, "--port", str(port), "--num-cpus", str(cpus)),
        *("--dashboard-host", HOST, "--dashboard-port", str(dashboard_port)),
        *("--ray-client-server-port", str(client_port)),
        *("--dashboard-agent-listen-port", str(agent_port)),
        *("--temp-dir", str(ray_temp_dir(home=home))),
    )
    dashboard = f"http://{HOST}:{dashboard_port}"
    return Service(
        name="ray",
        command=command,
        ports={"ray": port, "dashboard": dashboard_port},
        url=dashboard,
        # GCS answers through the dashboard; the agent answers once the raylet runs.
        probes=(
            f"{dashboard}/api/gcs_healthz",
            f"http://{HOST}:{agent_port}/api/local_raylet_healthz",
        ),
        env=env,
        connect={"RAY_ADDRESS": f"{HOST}:{port}", **connect},
        stop_grace_s=20.0,
        # Another cluster's address or token (RAY_AUTH_TOKEN wins over the token path)
        drop_env=("RAY_ADDRESS", "RAY_AUTH_TOKEN"),
    )


def deployments_service(*, config: Path, port: int = RUNNER_PORT) -> Service:
    """The process that registers driftloop's Prefect deployments and executes their runs
    (`python -m flows.deployments <config>`, prefect.serve), for the project at `config`.

    It talks to the Prefect API and the Ray its caller is pointed at (the stack's, or the
    user's own `PREFECT_API_URL` / `RAY_ADDRESS`), and runs where the config lives. It is ready
    when its runner's health endpoint answers, which serve() starts after registering them.
    """
    base = f"http://{HOST}:{port}"
    project = config.resolve()
    return Service(
        name="deployments",
        command=(sys.executable, "-m", "flows.deployments", str(project)),
        ports={"runner": port},
        url=base,
        probes=(f"{base}/health",),
        env={
            "PREFECT_RUNNER_SERVER_ENABLE": "true",
            "PREFECT_RUNNER_SERVER_HOST": HOST,
            "PREFECT_RUNNER_SERVER_PORT": str(port),
        },
        stop_grace_s=30.0,  # a run in flight is cancelled by the runner, then the group is killed
        cwd=str(project.parent),
    )


def ray_temp_dir(*, home: Path) -> Path:
    """Ray's `--temp-dir`: `<home>/run/ray`, or a short symlink to it in /tmp when that path is
    too long for Ray's unix sockets (`link_ray_temp_dir` makes it)."""
    path = home.resolve() / "run" / "ray"
    if len(str(path)) <= _RAY_TEMP_DIR_MAX:
        return path
    digest = hashlib.sha1(str(home.resolve()).encode()).hexdigest()[:10]
    return Path("/tmp") / f"driftloop-{digest}"


def link_ray_temp_dir(*, home: Path) -> None:
    """Create `<home>/run/ray` and, where Ray needs a short path, the /tmp symlink to it."""
    target = home.resolve() / "run" / "ray"
    target.mkdir(parents=True, exist_ok=True)
    link = ray_temp_dir(home=home)
    if link == target or (link.is_symlink() and link.readlink() == target):
        return
    if link.exists() and not link.is_symlink():
        raise StackError(f"{link} exists and is not driftloop's link to {target}; remove it")
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target, target_is_directory=True)
    os.replace(tmp, link)  # also replaces a stale link of ours (a home that moved)


def unlink_ray_temp_dir(*, home: Path) -> None:
    """Remove the /tmp symlink `link_ray_temp_dir` made, if there is one."""
    link = ray_temp_dir(home=home)
    if link.is_symlink():
        link.unlink(missing_ok=True)


def token_path(*, home: Path) -> Path:
    """Where the stack's Ray auth token lives: `<home>/run/ray_auth_token`."""
    return home.resolve() / "run" / TOKEN_FILE


def ensure_ray_token(*, home: Path) -> Path:
    """Create the stack's Ray auth token (owner-only) unless it exists; return its path."""
    path = token_path(home=home)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
    os.replace(tmp, path)
    return path


def _executable(name: str) -> str:
    """The CLI installed beside this interpreter (the project's venv), else the one on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        raise StackError(f"`{name}` is not installed: pip install the project first")
    return found
