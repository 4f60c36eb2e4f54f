"""The stack's processes: start one in its own session, wait until it answers, stop it and all
below it, and the state file that records them (`<home>/run/stack.json`, written atomically).

A process counts as the stack's only while it is alive, leads its own process group and still
runs the recorded command (`owned`); each also carries a mark (`<service>@<home>` in `_MARK`), so
`down --force` finds them when the state file is lost. Nothing here runs a bare `ray stop`, which
would end every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tasks import files
from tasks.errors import DriftloopError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
STATE_FILE = "stack.json"
# Marks every process the stack starts (`<service>@<home>`), so `down --force` finds them when
# the state file is lost. Not DRIFTLOOP_*: settings refuse unknown variables of that prefix.
_MARK = "_DRIFTLOOP_STACK"


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


# Starting -----------------------------------------------------------------------------------------


def launch(service: Service, *, home: Path) -> subprocess.Popen[bytes]:
    """Start one service in its own session, logging to `<home>/logs/<name>.log`."""
    logfile = log_path(home, service.name)
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


def record(service: Service, *, home: Path, pid: int) -> dict[str, Any]:
    """What the state file keeps of a started service."""
    log_file = str(log_path(home, service.name))
    return {**asdict(service), "pid": pid, "log": log_file, "started_at": time.time()}


def log_path(home: Path, name: str) -> Path:
    return home.resolve() / "logs" / f"{name}.log"


def wait_ready(
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
            if all(answers(url) for url in rec["probes"]):
                took = time.time() - rec["started_at"]
                log.info("%s answers on %s after %.1f s", name, rec["url"], took)
                del pending[name]
        if pending and time.monotonic() > deadline:
            first = next(iter(pending))
            raise StackError(f"{', '.join(pending)} did not answer in time; {_tail(state[first])}")
        time.sleep(0.25 if pending else 0)


def _tail(rec: dict[str, Any], lines: int = 3) -> str:
    """The last lines of a service's log, on one line (the CLI's contract), and where it is."""
    text = Path(rec["log"]).read_text(errors="replace") if Path(rec["log"]).exists() else ""
    last = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return f"its log ends: {' | '.join(last) or '(empty)'} (full log: {rec['log']})"


# Stopping -----------------------------------------------------------------------------------------


def stop(rec: dict[str, Any]) -> bool:
    """SIGTERM the leader, wait, then SIGKILL its group and every descendant left over."""
    pid = int(rec["pid"])
    family = descendants(pid)  # Ray workers start their own sessions: the group misses them
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
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def alive(pid: int) -> bool:
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


def owned(rec: dict[str, Any]) -> bool:
    """The recorded pid is alive, leads its own group and still runs the recorded command."""
    pid = int(rec["pid"])
    if not alive(pid):
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


def descendants(pid: int) -> list[int]:
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


def stop_marked(home: Path) -> list[str]:
    """Stop every process marked as started under `home`, leaders first; return their names."""
    marked = _marked(home)
    leaders = {pid: name for pid, name in marked.items() if _leads_group(pid)}
    for pid, name in leaders.items():
        log.info("stopping %s (pid %d), found by its mark", name, pid)
        stop({"name": name, "pid": pid, "stop_grace_s": 10.0})
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
    return {pid: name for pid, name in found.items() if pid != os.getpid() and alive(pid)}


def _leads_group(pid: int) -> bool:
    """It leads its own process group: what `up` made it (start_new_session)."""
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


# Ports and HTTP -----------------------------------------------------------------------------------


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def check_ports_free(service: Service, *, wait_s: float = 0.0) -> None:
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


def answers(url: str, timeout_s: float = 2.0) -> bool:
    """The URL answers 2xx."""
    # No proxies: an http_proxy in the environment must not swallow loopback probes.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as resp:
            return 200 <= int(resp.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


# State --------------------------------------------------------------------------------------------


def state_path(home: Path) -> Path:
    return home / "run" / STATE_FILE


def read_state(home: Path) -> dict[str, dict[str, Any]]:
    path = state_path(home)
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


def write_state(home: Path, state: Mapping[str, dict[str, Any]]) -> None:
    """Atomic: a reader sees the old file or the new one, never half of it."""
    files.write_atomic(state_path(home), json.dumps({"version": 1, "services": state}, indent=2))


def prune(state: dict[str, dict[str, Any]]) -> list[str]:
    """Forget records whose process is gone or no longer ours; kill what a dead leader left."""
    stale = [name for name, rec in state.items() if not owned(rec)]
    for name in stale:
        rec = state.pop(name)
        log.info("%s (pid %s) no longer runs; forgetting it", name, rec["pid"])
        if not alive(int(rec["pid"])):  # a pid stays unused while its process group lives
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(rec["pid"]), signal.SIGKILL)
    return stale


def reuse(service: Service, rec: dict[str, Any] | None) -> bool:
    """Whether a recorded service can stand for `service` (refused if it runs on other ports)."""
    if rec is None:
        return False
    if dict(rec["ports"]) != dict(service.ports):
        raise StackError(
            f"{service.name} already runs on ports {rec['ports']} (pid {rec['pid']}); "
            f"run `driftloop down` before moving it to {dict(service.ports)}"
        )
    return True


def connect_env(state: Mapping[str, dict[str, Any]]) -> dict[str, str]:
    """The client environment of every recorded service that still runs."""
    env: dict[str, str] = {}
    for rec in state.values():
        if owned(rec):
            env |= rec["connect"]
    return env


@contextlib.contextmanager
def locked(home: Path) -> Iterator[None]:
    """One `up`/`down` at a time per home."""
    lock = home / "run" / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield
