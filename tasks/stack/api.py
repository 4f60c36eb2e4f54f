"""The stack's face: bring it up, see what runs, connect a process to it, take it down.

    stack = up(home=Path(".driftloop"))       # starts what is not running, waits until it answers
    env = use(home=Path(".driftloop"))        # this process now talks to the stack's Prefect, Ray
    down(home=Path(".driftloop"))             # stops exactly what `up` started, nothing else

What runs is in services.py; how it is started, watched and stopped, in processes.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
import urllib.parse
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.stack import processes, services
from tasks.stack.processes import Service, StackError
from tasks.stack.services import DASHBOARD_PORT, PREFECT_PORT, RAY_PORT

log = logging.getLogger(__name__)

# A client's address of each service: the user's own value wins over the stack's, and with it
# every variable of that service's prefix (that is how the same commands reach a remote cluster)
_ADDRESSES = (("RAY_", "RAY_ADDRESS"), ("PREFECT_", "PREFECT_API_URL"))


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
    services.ensure_ray_token(home=home)
    services.link_ray_temp_dir(home=home)
    wanted = services.stack_services(
        home=home,
        prefect_port=prefect_port,
        ray_port=ray_port,
        dashboard_port=dashboard_port,
        num_cpus=num_cpus,
    )
    try:
        return start(home=home, services=wanted, timeout_s=timeout_s)
    except BaseException:
        with contextlib.suppress(StackError):
            if "ray" not in processes.read_state(home):  # no Ray of ours runs: no link needed
                services.unlink_ray_temp_dir(home=home)
        raise


def start(*, home: Path, services: Sequence[Service], timeout_s: float = 120.0) -> StackStatus:
    """Start the services that do not run yet, all at once; on any failure stop what it started.

    Raises:
        StackError: a port is taken (before anything starts), a service exits or does not answer
            within `timeout_s` (with the tail of its log), or one runs already on other ports.
    """
    with processes.locked(home):
        state = processes.read_state(home)
        stale = processes.prune(state)
        todo = [s for s in services if not processes.reuse(s, state.get(s.name))]
        for service in todo:  # a crashed one's sockets take a moment to go
            processes.check_ports_free(service, wait_s=10.0 if service.name in stale else 0.0)
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for service in todo:
                procs[service.name] = processes.launch(service, home=home)
                pid = procs[service.name].pid
                state[service.name] = processes.record(service, home=home, pid=pid)
                processes.write_state(home, state)
            processes.wait_ready(procs, state, deadline=time.monotonic() + timeout_s)
        except BaseException:
            for name in reversed(procs):
                rec = state.pop(name) if name in state else {"name": name, "pid": procs[name].pid}
                processes.stop(rec)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    procs[name].wait(timeout=5)  # reap it
            processes.write_state(home, state)
            raise
    return status(home=home)


def down(*, home: Path, force: bool = False) -> list[str]:
    """Stop what `up` started under `home` (last started first); return the names it stopped.

    With `force`, an unreadable state file is no obstacle: every process the stack marked as
    started under this home is stopped (Linux: found through /proc), and the file is removed.
    """
    with processes.locked(home):
        try:
            state = processes.read_state(home)
        except StackError:
            if not force:
                raise
            state = {}
        stopped = [
            name
            for name, rec in reversed(state.items())
            if processes.owned(rec) and processes.stop(rec)
        ]
        processes.prune(state)  # a crashed leader's orphans
        if force:
            stopped += [name for name in processes.stop_marked(home) if name not in stopped]
        processes.state_path(home).unlink(missing_ok=True)
        services.unlink_ray_temp_dir(home=home)
    if not stopped:
        log.info("nothing of driftloop's stack was running under %s", home)
    return stopped


def status(*, home: Path) -> StackStatus:
    """What runs under `home`: per service alive/healthy, pid and URL, plus the connection env."""
    state = processes.read_state(home)
    found = {name: _service_status(name, rec) for name, rec in state.items()}
    env = processes.connect_env(state)
    ray = found.get("ray")
    return StackStatus(
        home=home,
        services=found,
        env=env,
        prefect_api_url=env.get("PREFECT_API_URL"),
        ray_address=env.get("RAY_ADDRESS"),
        dashboard_url=ray.url if ray and ray.running else None,
    )


def _service_status(name: str, rec: dict[str, Any]) -> ServiceStatus:
    running = processes.owned(rec)
    return ServiceStatus(
        name=name,
        running=running,
        healthy=running and all(processes.answers(u, timeout_s=1.0) for u in rec["probes"]),
        pid=int(rec["pid"]) if running else None,
        url=rec["url"] if running else None,
        log=Path(rec["log"]),
    )


def connection_env(*, home: Path) -> dict[str, str]:
    """Environment that points a process at the running stack; empty when nothing runs.

    Ray needs all of it: `RAY_ADDRESS` alone hangs, resolving 127.0.0.1 to the host's address.
    """
    return processes.connect_env(processes.read_state(home))


def use(*, home: Path, environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Point this process (`environ`, default `os.environ`) at the stack running under `home`;
    return the variables it set (empty when nothing runs).

    A service whose address the user set (RAY_ADDRESS, PREFECT_API_URL) keeps the user's
    variables: that is how the same commands reach a remote cluster. Where the stack's Ray is
    used, an inherited RAY_AUTH_TOKEN is dropped: it would win over the stack's token file.
    """
    target = os.environ if environ is None else environ
    env = connection_env(home=home)
    done: dict[str, str] = {}
    for prefix, address in _ADDRESSES:
        ours = {k: v for k, v in env.items() if k.startswith(prefix)}
        if address in target or not ours:
            continue
        if prefix == "RAY_":
            target.pop("RAY_AUTH_TOKEN", None)
        target.update(ours)
        done |= ours
    return done


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
