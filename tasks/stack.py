"""The local stack: a Prefect server (API + UI) and a Ray head, bound to 127.0.0.1 only.

    stack = up(home=Path(".driftloop"))       # starts what is not running, waits until it answers
    env = connection_env(home=Path(".driftloop"))  # PREFECT_API_URL, RAY_ADDRESS, RAY_AUTH_MODE..
    down(home=Path(".driftloop"))             # stops exactly what `up` started, nothing else

Each service is a child process in its own session (process group), logging to
`<home>/logs/<name>.log`, recorded in `<home>/run/stack.json` (written atomically). `down` stops
those process groups and their descendants; it never runs a bare `ray stop`, which would end every
Ray on the machine. A later stage adds a service by adding one `Service` to `stack_services`.

Everything lives under the home: the Prefect server's SQLite (`<home>/prefect`), Ray's session
files (`<home>/run/ray`) and Ray's auth token (`<home>/run/ray_auth_token`). Outside it: a symlink
`/tmp/driftloop-<hash>` to `<home>/run/ray` when that path is too long for Ray's unix sockets
(removed by `down`), and Ray's object store in shared memory (`/dev/shm`) while Ray runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tasks.errors import DriftloopError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
STATE_FILE = "stack.json"
TOKEN_FILE = "ray_auth_token"
# The one set of default ports (StackConfig uses them). Ray's own default, 6379, is left to a Ray
# the user starts by hand.
PREFECT_PORT, RAY_PORT, DASHBOARD_PORT = 4200, 6380, 8265
# Marks every process the stack starts (`<service>@<home>`), so `down --force` finds them when
# the state file is lost. Not DRIFTLOOP_*: settings refuse unknown variables of that prefix.
_MARK = "_DRIFTLOOP_STACK"
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
    # Inherited variables (by prefix) the service must not see: they would point it elsewhere
    drop_env: tuple[str, ...] = ()
    cwd: str | None = None  # where it runs; None: the caller's folder


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
    client_port, agent_port = _free_port(), _free_port()
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


def _unlink_ray_temp_dir(home: Path) -> None:
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


def local_home(home: str | os.PathLike[str]) -> Path:
    """The home as a local folder (file:// URIs too); the stack's processes cannot live in s3://."""
    text = os.fspath(home)
    if "://" not in text:
        return Path(text)
    parsed = urllib.parse.urlparse(text)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return Path(urllib.parse.unquote(parsed.path))
    raise StackError(
        f"home {text!r} is not a local folder: the local stack (driftloop up/down/status) keeps "
        "its processes' state on this machine; set DRIFTLOOP_HOME (or `home:`) to a path or a "
        "file:// URI to use it"
    )


# ---------------------------------------------------------------------------------------------
# Public API


def up(
    *,
    home: Path,
    prefect_port: int = PREFECT_PORT,
    ray_port: int = RAY_PORT,
    dashboard_port: int = DASHBOARD_PORT,
    num_cpus: int | None = None,
    timeout_s: float = 120.0,
) -> StackStatus:
    """Start the Prefect server and the Ray head (reusing what runs) and wait until they answer."""
    ensure_ray_token(home=home)
    link_ray_temp_dir(home=home)
    services = stack_services(
        home=home,
        prefect_port=prefect_port,
        ray_port=ray_port,
        dashboard_port=dashboard_port,
        num_cpus=num_cpus,
    )
    try:
        return start(home=home, services=services, timeout_s=timeout_s)
    except BaseException:
        with contextlib.suppress(StackError):
            if "ray" not in _read_state(home):  # no Ray of ours runs: the link is not needed
                _unlink_ray_temp_dir(home)
        raise


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


def down(*, home: Path, force: bool = False) -> list[str]:
    """Stop what `up` started under `home` (last started first); return the names it stopped.

    With `force`, an unreadable state file is no obstacle: every process the stack marked as
    started under this home is stopped (Linux: found through /proc), and the file is removed.
    """
    with _locked(home):
        try:
            state = _read_state(home)
        except StackError:
            if not force:
                raise
            state = {}
        stopped = [name for name, rec in reversed(state.items()) if _owned(rec) and _stop(rec)]
        _prune(state)  # a crashed leader's orphans
        if force:
            stopped += [name for name in _stop_marked(home) if name not in stopped]
        _state_path(home).unlink(missing_ok=True)
        _unlink_ray_temp_dir(home)
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
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(service.drop_env)}
    mark = {_MARK: f"{service.name}@{home.resolve()}"}
    env = inherited | dict(service.env) | mark
    if service.cwd is not None:
        Path(service.cwd).mkdir(parents=True, exist_ok=True)
    with logfile.open("a") as out:
        out.write(f"\n==== driftloop up {time.strftime('%Y-%m-%d %H:%M:%S')}: {service.name}\n")
        out.flush()
        return subprocess.Popen(
            service.command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=service.cwd,
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
                    f"{name} exited with {proc.returncode} while starting; {_tail(rec)}"
                )
            if all(_answers(url) for url in rec["probes"]):
                took = time.time() - rec["started_at"]
                log.info("%s answers on %s after %.1f s", name, rec["url"], took)
                del pending[name]
        if pending and time.monotonic() > deadline:
            first = next(iter(pending))
            raise StackError(f"{', '.join(pending)} did not answer in time; {_tail(state[first])}")
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


def _tail(rec: dict[str, Any], lines: int = 3) -> str:
    """The last lines of a service's log, on one line (the CLI's contract), and where it is."""
    text = Path(rec["log"]).read_text(errors="replace") if Path(rec["log"]).exists() else ""
    last = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return f"its log ends: {' | '.join(last) or '(empty)'} (full log: {rec['log']})"


def _stop_marked(home: Path) -> list[str]:
    """Stop every process marked as started under `home`, leaders first; return their names."""
    marked = _marked(home)
    leaders = {pid: name for pid, name in marked.items() if _leads_group(pid)}
    for pid, name in leaders.items():
        log.info("stopping %s (pid %d), found by its mark", name, pid)
        _stop({"name": name, "pid": pid, "stop_grace_s": 10.0})
    for pid in _marked(home):  # strays in sessions of their own
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return list(dict.fromkeys(leaders.values()))


def _marked(home: Path) -> dict[int, str]:
    """pid -> service name of the live processes that carry this home's mark (from /proc)."""
    prefix, suffix = f"{_MARK}=".encode(), f"@{home.resolve()}".encode()
    found = {}
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError, ValueError):  # gone, another user's, or not UTF-8
            for entry in environ.read_bytes().split(b"\0"):
                if entry.startswith(prefix) and entry.endswith(suffix):
                    found[int(environ.parent.name)] = entry[len(prefix) : -len(suffix)].decode()
    return {pid: name for pid, name in found.items() if pid != os.getpid() and _alive(pid)}


def _leads_group(pid: int) -> bool:
    """It leads its own process group: what `up` made it (start_new_session)."""
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


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
        services = dict(json.loads(path.read_text())["services"])
    except (ValueError, KeyError, TypeError) as err:
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise StackError(
            f"{path} is corrupt ({why}); `driftloop down --force` stops what the stack under "
            f"{home} started and removes the file"
        ) from None
    return services


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
