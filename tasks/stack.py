"""The local stack: a Prefect server (API + UI) and a Ray head, bound to 127.0.0.1 only.

    stack = up(home=Path(".driftloop"))       # starts what is not running, waits until it answers
    env = connection_env(home=Path(".driftloop"))  # PREFECT_API_URL, RAY_ADDRESS, RAY_AUTH_MODE..
    down(home=Path(".driftloop"))             # stops exactly what `up` started, nothing else

Each service is a child process in its own session (process group), logging to
`<home>/logs/<name>.log`, recorded in `<home>/run/stack.json` (written atomically). `down` stops
those process groups and their descendants; it never runs a bare `ray stop`, which would end every
Ray on the machine. A later stage adds a service by adding one `Service` to `stack_services`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tasks.errors import DriftloopError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
STATE_FILE = "stack.json"
# Ray's longest unix socket is <temp>/session_<date>_<time>_<us>_<pid>/sockets/plasma_store:
# about 66 characters past the temp dir, and AF_UNIX allows 103 (macOS) to 107 (Linux).
_RAY_TEMP_DIR_MAX = 36


class StackError(DriftloopError):
    """The local stack could not start or stop; the message names the service and the cause."""


@dataclass(frozen=True)
class Service:
    """How to start one long-running process, tell when it answers, and connect to it."""

    name: str
    command: tuple[str, ...]
    ports: Mapping[str, int]  # role -> port on 127.0.0.1; all must be free before it starts
    url: str  # what a person opens (UI, dashboard)
    probes: tuple[str, ...] = ()  # HTTP URLs that answer 2xx once it is ready
    env: Mapping[str, str] = field(default_factory=dict)  # set for the process
    connect: Mapping[str, str] = field(default_factory=dict)  # env a client process needs
    stop_grace_s: float = 15.0  # SIGTERM to the leader, then the whole group is killed


@dataclass(frozen=True)
class ServiceStatus:
    """One service as `status` sees it."""

    name: str
    running: bool  # the recorded process is alive and still ours
    healthy: bool  # it answers its probes right now
    pid: int | None
    url: str | None
    log: Path | None


@dataclass(frozen=True)
class StackStatus:
    """The stack under one home: per-service status, plus what a client needs to connect."""

    home: Path
    services: dict[str, ServiceStatus]
    env: dict[str, str]  # connection_env(): empty when nothing runs
    prefect_api_url: str | None = None
    ray_address: str | None = None
    dashboard_url: str | None = None

    @property
    def running(self) -> bool:
        return bool(self.services) and all(s.running for s in self.services.values())


# ---------------------------------------------------------------------------------------------
# The services


def stack_services(
    *,
    home: Path,
    prefect_port: int = 4200,
    ray_port: int = 6379,
    dashboard_port: int = 8265,
    num_cpus: int | None = None,
) -> list[Service]:
    """The services `up` starts, in order."""
    return [
        prefect_service(home=home, port=prefect_port),
        ray_service(home=home, port=ray_port, dashboard_port=dashboard_port, num_cpus=num_cpus),
    ]


def prefect_service(*, home: Path, port: int) -> Service:
    """`prefect server start` with its SQLite database under `<home>/prefect`."""
    base = f"http://{HOST}:{port}"
    return Service(
        name="prefect",
        command=(_executable("prefect"), "server", "start", "--host", HOST, "--port", str(port)),
        ports={"prefect": port},
        url=base,
        probes=(f"{base}/api/health",),
        env={
            "PREFECT_HOME": str(home.resolve() / "prefect"),
            "PREFECT_API_URL": f"{base}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no internet: it only logs errors
            "DO_NOT_TRACK": "1",  # Prefect's client-side telemetry switch
        },
        connect={"PREFECT_API_URL": f"{base}/api"},
        stop_grace_s=10.0,
    )


def ray_service(
    *, home: Path, port: int, dashboard_port: int, num_cpus: int | None = None
) -> Service:
    """A Ray head (`ray start --head --block`) whose every listener is on 127.0.0.1."""
    # Ports nobody types: fixed defaults (10001, 52365) would collide with any other Ray here.
    client_port, agent_port = _free_port(), _free_port()
    cpus = num_cpus or max(4, os.cpu_count() or 1)  # logical: training, Serve and flows share them
    env = {
        "RAY_AUTH_MODE": "token",  # never run an unauthenticated head (CVE-2023-48022)
        # Without this Ray turns 127.0.0.1 into the host's public address, for the node and for
        # every driver: GCS, raylet and agents then listen on all interfaces.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        # A one-node stack has nowhere to drain to: SIGTERM would otherwise wait up to 30 s.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    connect = {k: env[k] for k in ("RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    if "RAY_AUTH_TOKEN_PATH" in os.environ:  # a token kept elsewhere: drivers need its path too
        connect["RAY_AUTH_TOKEN_PATH"] = os.environ["RAY_AUTH_TOKEN_PATH"]
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
    )


def ray_temp_dir(*, home: Path) -> Path:
    """`<home>/run/ray` when short enough for Ray's unix sockets, else a short path in /tmp."""
    path = home.resolve() / "run" / "ray"
    if len(str(path)) <= _RAY_TEMP_DIR_MAX:
        return path
    digest = hashlib.sha1(str(home.resolve()).encode()).hexdigest()[:10]
    return Path("/tmp") / f"driftloop-ray-{digest}"


def ensure_ray_token() -> None:
    """Create Ray's default auth token (`~/.ray/auth_token`) unless one is configured already."""
    default = Path.home() / ".ray" / "auth_token"
    if {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & os.environ.keys() or default.exists():
        return
    cmd = [_executable("ray"), "get-auth-token", "--generate"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0 or not default.exists():
        raise StackError(f"could not create Ray's auth token: {done.stderr.strip()[-500:]}")
    default.chmod(0o600)  # Ray writes it world-readable


# ---------------------------------------------------------------------------------------------
# Public API


def up(
    *,
    home: Path,
    prefect_port: int = 4200,
    ray_port: int = 6379,
    dashboard_port: int = 8265,
    num_cpus: int | None = None,
    timeout_s: float = 120.0,
) -> StackStatus:
    """Start the Prefect server and the Ray head (reusing what runs) and wait until they answer."""
    ensure_ray_token()
    services = stack_services(
        home=home,
        prefect_port=prefect_port,
        ray_port=ray_port,
        dashboard_port=dashboard_port,
        num_cpus=num_cpus,
    )
    return start(home=home, services=services, timeout_s=timeout_s)


def start(*, home: Path, services: Sequence[Service], timeout_s: float = 120.0) -> StackStatus:
    """Start the services that do not run yet, all at once; on any failure stop what it started.

    Raises:
        StackError: a port is taken (before anything starts), a service exits or does not answer
            within `timeout_s` (with the tail of its log), or one runs already on other ports.
    """
    with _locked(home):
        state = _read_state(home)
        stale = _prune(state)
        todo = [s for s in services if not _reuse(s, state.get(s.name))]
        for service in todo:  # a crashed one's sockets take a moment to go
            _check_ports_free(service, wait_s=10.0 if service.name in stale else 0.0)
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for service in todo:
                procs[service.name] = _launch(service, home=home)
                state[service.name] = _record(service, home=home, pid=procs[service.name].pid)
                _write_state(home, state)
            _wait_ready(procs, state, deadline=time.monotonic() + timeout_s)
        except BaseException:
            for name in reversed(procs):
                rec = state.pop(name) if name in state else {"name": name, "pid": procs[name].pid}
                _stop(rec)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    procs[name].wait(timeout=5)  # reap it
            _write_state(home, state)
            raise
    return status(home=home)


def down(*, home: Path) -> list[str]:
    """Stop what `up` started under `home` (last started first); return the names it stopped."""
    with _locked(home):
        state = _read_state(home)
        stopped = [name for name, rec in reversed(state.items()) if _owned(rec) and _stop(rec)]
        _prune(state)  # a crashed leader's orphans
        _state_path(home).unlink(missing_ok=True)
    if not stopped:
        log.info("nothing of driftloop's stack was running under %s", home)
    return stopped


def status(*, home: Path) -> StackStatus:
    """What runs under `home`: per service alive/healthy, pid and URL, plus the connection env."""
    state = _read_state(home)
    services = {name: _service_status(name, rec) for name, rec in state.items()}
    env = _connect_env(state)
    ray = services.get("ray")
    return StackStatus(
        home=home,
        services=services,
        env=env,
        prefect_api_url=env.get("PREFECT_API_URL"),
        ray_address=env.get("RAY_ADDRESS"),
        dashboard_url=ray.url if ray and ray.running else None,
    )


def connection_env(*, home: Path) -> dict[str, str]:
    """Environment that points a process at the running stack; empty when nothing runs.

    Ray needs all of it: `RAY_ADDRESS` alone hangs, resolving 127.0.0.1 to the host's address.
    """
    return _connect_env(_read_state(home))


# ---------------------------------------------------------------------------------------------
# Processes


def _launch(service: Service, *, home: Path) -> subprocess.Popen[bytes]:
    """Start one service in its own session, logging to `<home>/logs/<name>.log`."""
    logfile = _log_path(home, service.name)
    logfile.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | dict(service.env)
    with logfile.open("a") as out:
        out.write(f"\n==== driftloop up {time.strftime('%Y-%m-%d %H:%M:%S')}: {service.name}\n")
        out.flush()
        return subprocess.Popen(
            service.command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: `down` stops exactly this
        )


def _record(service: Service, *, home: Path, pid: int) -> dict[str, Any]:
    log_path = str(_log_path(home, service.name))
    return {**asdict(service), "pid": pid, "log": log_path, "started_at": time.time()}


def _log_path(home: Path, name: str) -> Path:
    return home.resolve() / "logs" / f"{name}.log"


def _wait_ready(
    procs: Mapping[str, subprocess.Popen[bytes]],
    state: Mapping[str, dict[str, Any]],
    *,
    deadline: float,
) -> None:
    """Poll until every service answers; fail on the first that exits or on the deadline."""
    pending = dict(procs)
    while pending:
        for name, proc in list(pending.items()):
            rec = state[name]
            if proc.poll() is not None:
                raise StackError(
                    f"{name} exited with {proc.returncode} while starting:\n{_tail(rec)}"
                )
            if all(_answers(url) for url in rec["probes"]):
                took = time.time() - rec["started_at"]
                log.info("%s answers on %s after %.1f s", name, rec["url"], took)
                del pending[name]
        if pending and time.monotonic() > deadline:
            first = next(iter(pending))
            raise StackError(f"{', '.join(pending)} did not answer in time:\n{_tail(state[first])}")
        time.sleep(0.25 if pending else 0)


def _stop(rec: dict[str, Any]) -> bool:
    """SIGTERM the leader, wait, then SIGKILL its group and every descendant left over."""
    pid = int(rec["pid"])
    family = _descendants(pid)  # Ray workers start their own sessions: the group misses them
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_gone([pid], timeout_s=float(rec.get("stop_grace_s", 15.0))):
        log.warning("%s (pid %d) ignored SIGTERM; killing its process group", rec["name"], pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for child in family:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, signal.SIGKILL)
    _wait_gone([pid, *family], timeout_s=5.0)
    return True


def _wait_gone(pids: Sequence[int], *, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _alive(pid: int) -> bool:
    """Alive and not a zombie (reaping it when it is our own child)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        return stat.read_text().rpartition(")")[2].split()[0] != "Z"
    return True


def _owned(rec: dict[str, Any]) -> bool:
    """The recorded pid is alive, leads its own group and still runs the recorded command."""
    pid = int(rec["pid"])
    if not _alive(pid):
        return False
    try:
        if os.getpgid(pid) != pid:
            return False
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except ProcessLookupError:
        return False
    except OSError:
        return True  # no /proc (macOS): the group check has to do
    tail = list(rec["command"][1:])  # argv[0] may be rewritten to the interpreter
    return cmdline[len(cmdline) - len(tail) :] == tail


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (empty where there is none)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(stat.read_text().rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _tail(rec: dict[str, Any], lines: int = 25) -> str:
    text = Path(rec["log"]).read_text(errors="replace") if Path(rec["log"]).exists() else ""
    return f"--- last lines of {rec['log']} ---\n" + "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------
# Ports and HTTP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _check_ports_free(service: Service, *, wait_s: float = 0.0) -> None:
    deadline = time.monotonic() + wait_s
    for role, port in service.ports.items():
        while _port_taken(port):
            if time.monotonic() > deadline:
                raise StackError(
                    f"port {port} on {HOST} ({service.name}, {role}) is already in use by "
                    f"another process; stop it or choose another {role} port"
                )
            time.sleep(0.2)


def _port_taken(port: int) -> bool:
    """Something accepts connections there (a listener on 127.0.0.1 or on every interface).

    Not a bind test: sockets a killed server left in FIN-WAIT fail a bind for a while, but not
    the servers here, which bind with SO_REUSEADDR/SO_REUSEPORT.
    """
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def _answers(url: str, timeout_s: float = 2.0) -> bool:
    # No proxies: an http_proxy in the environment must not swallow loopback probes.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as resp:
            return 200 <= int(resp.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# State


def _state_path(home: Path) -> Path:
    return home / "run" / STATE_FILE


def _read_state(home: Path) -> dict[str, dict[str, Any]]:
    path = _state_path(home)
    if not path.exists():
        return {}
    try:
        services = json.loads(path.read_text())["services"]
    except (ValueError, KeyError, TypeError) as err:
        raise StackError(f"{path} is not a driftloop stack state file: {err}") from err
    return dict(services)


def _write_state(home: Path, state: Mapping[str, dict[str, Any]]) -> None:
    """Atomic: a reader sees the old file or the new one, never half of it."""
    path = _state_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"version": 1, "services": state}, indent=2))
    os.replace(tmp, path)


def _prune(state: dict[str, dict[str, Any]]) -> list[str]:
    """Forget records whose process is gone or no longer ours; kill what a dead leader left."""
    stale = [name for name, rec in state.items() if not _owned(rec)]
    for name in stale:
        rec = state.pop(name)
        log.info("%s (pid %s) no longer runs; forgetting it", name, rec["pid"])
        if not _alive(int(rec["pid"])):  # a pid stays unused while its process group lives
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(rec["pid"]), signal.SIGKILL)
    return stale


def _reuse(service: Service, rec: dict[str, Any] | None) -> bool:
    if rec is None:
        return False
    if dict(rec["ports"]) != dict(service.ports):
        raise StackError(
            f"{service.name} already runs on ports {rec['ports']} (pid {rec['pid']}); "
            f"run `driftloop down` before moving it to {dict(service.ports)}"
        )
    return True


def _service_status(name: str, rec: dict[str, Any]) -> ServiceStatus:
    running = _owned(rec)
    return ServiceStatus(
        name=name,
        running=running,
        healthy=running and all(_answers(u, timeout_s=1.0) for u in rec["probes"]),
        pid=int(rec["pid"]) if running else None,
        url=rec["url"] if running else None,
        log=Path(rec["log"]),
    )


def _connect_env(state: Mapping[str, dict[str, Any]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for rec in state.values():
        if _owned(rec):
            env |= rec["connect"]
    return env


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """One `up`/`down` at a time per home."""
    lock = home / "run" / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _executable(name: str) -> str:
    """The CLI installed beside this interpreter (the project's venv), else the one on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        raise StackError(f"`{name}` is not installed: pip install the project first")
    return found
