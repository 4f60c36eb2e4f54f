"""Start, inspect, swap and stop the Serve app on the Ray this process is connected to.

    status = start(args)                      # serve.start on 127.0.0.1:<port>, then serve.run
    swap(args, version=4)                     # in place: every response names its version
    probe(args.serving)                       # over HTTP, no Ray needed: running? which version?
    stop()                                    # graceful: replicas flush their prediction logs

Serve's own logs go to `<home>/logs/serve/` (tasks/serve/app.py: `logging_config`), and what
Serve logs in this process while these run goes to `<home>/logs/serve/driver.log`: the
terminal only shows what the caller prints.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from tasks import cluster, files, registry
from tasks.errors import DriftloopError
from tasks.serve.app import (
    APP_NAME,
    LOGS,
    ServeArgs,
    bind_app,
    handle,
    logging_config,
    resolve_version,
)
from tasks.serve.service import API_KEY_HEADER, Loader, load_version
from tasks.settings import ServingConfig

_PROBE_TIMEOUT_S = 2.0


class ServeError(DriftloopError):
    """The app could not be started or swapped; the message says why."""


@dataclass(frozen=True)
class ServeStatus:
    """What the app serves now, as a client sees it."""

    url: str
    running: bool  # /healthz answers at all
    version: int | None  # the version a replica answered with (None: none served)
    reason: str | None = None  # why nothing is served, when it is not

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "running": self.running, "version": self.version,
                "reason": self.reason}  # fmt: skip


def url(serving: ServingConfig) -> str:
    host = f"[{serving.host}]" if ":" in serving.host else serving.host
    return f"http://{host}:{serving.port}"


def start(args: ServeArgs, *, loader: Loader = load_version) -> ServeStatus:
    """Run the app on this process's Ray (connecting as `tasks.cluster` does): HTTP on
    `serving.host:port` (127.0.0.1:8000 by default), the version `args.ref` names now."""
    from ray import serve

    cluster.connect_ray()
    version = resolve_version(args)
    with _serve_logs_to_file(args.home):
        serve.start(
            http_options={"host": args.serving.host, "port": args.serving.port},
            logging_config=logging_config(args.home),
        )
        _check_http(args.serving)
        serve.run(bind_app(args, version=version, loader=loader), name=APP_NAME, route_prefix="/")
    return probe(args.serving)


def swap(args: ServeArgs, *, version: int, loader: Loader = load_version) -> ServeStatus:
    """Serve `version` instead, in place: the replicas reconfigure (load it beside the old one,
    then switch), no restart, no failed request. `args` must be those the app was started with
    (others restart the replicas, one by one)."""
    from ray import serve

    registry.find(root=args.home, model=args.model, ref=version)  # refuse an unknown version now
    with _serve_logs_to_file(args.home):
        serve.run(bind_app(args, version=version, loader=loader), name=APP_NAME, route_prefix="/")
    served = handle().served_version.remote().result()
    if served != version:
        reason = handle().health_reason.remote().result()
        raise ServeError(f"{args.model}: the app still serves version {served}: {reason}")
    return probe(args.serving)


def deploy_version(args: ServeArgs, *, ref: str | int) -> ServeStatus | None:
    """Serve the version `ref` names (a number or an alias) when the app runs on the connected
    Ray; None when it does not (the next `start` serves the champion anyway)."""
    if not is_running():
        return None
    version = registry.find(root=args.home, model=args.model, ref=ref).version
    return swap(args, version=version)


def is_running() -> bool:
    """The app is deployed on the Ray this process is connected to."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        return False
    with contextlib.suppress(Exception):
        return APP_NAME in serve.status().applications
    return False


def app_state() -> str | None:
    """Serve's state of the app (RUNNING, DEPLOYING, DEPLOY_FAILED...), None when absent."""
    from ray import serve

    app = serve.status().applications.get(APP_NAME)
    return None if app is None else str(app.status)


def probe(serving: ServingConfig) -> ServeStatus:
    """Ask `/healthz` over HTTP: works from any process, no Ray connection needed."""
    base = url(serving)
    try:
        answer = httpx.get(f"{base}/healthz", timeout=_PROBE_TIMEOUT_S)
        body = answer.json()
    except (httpx.HTTPError, ValueError) as exc:
        return ServeStatus(url=base, running=False, version=None, reason=files.first_line(exc))
    if answer.status_code == 200:
        return ServeStatus(url=base, running=True, version=body.get("version"))
    reason = body.get("reason") or body.get("detail") or f"HTTP {answer.status_code}"
    return ServeStatus(url=base, running=True, version=None, reason=str(reason))


def stop(*, everything: bool = False) -> bool:
    """Delete the app gracefully (each replica flushes its prediction log); with `everything`,
    Serve's controller and proxies go too. False when there was no app to stop."""
    from ray import serve

    if not is_running():
        return False
    serve.delete(APP_NAME)
    if everything:
        serve.shutdown()
    return True


def headers(serving: ServingConfig) -> dict[str, str]:
    """The headers a client sends: the API key when one is set."""
    key = serving.api_key
    return {API_KEY_HEADER: key.get_secret_value()} if key is not None else {}


def _check_http(serving: ServingConfig) -> None:
    """A Serve that was started earlier keeps its HTTP options: say so rather than serve
    somewhere the user does not expect."""
    from ray.serve.context import _get_global_client

    config = None
    with contextlib.suppress(Exception):  # a private API: no check rather than a failure
        client = _get_global_client()
        config = client.http_config if client is not None else None
    if config is not None and (config.host, config.port) != (serving.host, serving.port):
        raise ServeError(
            f"Serve already runs with HTTP on {config.host}:{config.port}, not "
            f"{serving.host}:{serving.port}; stop it first (`driftloop down`)"
        )


@contextlib.contextmanager
def _serve_logs_to_file(home: str) -> Iterator[None]:
    """What Serve logs in this process goes to `<home>/logs/serve/driver.log`, not the terminal."""
    logger = logging.getLogger("ray.serve")
    saved = logger.handlers[:], logger.propagate
    handler: logging.Handler = logging.NullHandler()
    if "://" not in home:
        folder = os.path.join(home, *LOGS)
        os.makedirs(folder, exist_ok=True)
        handler = logging.FileHandler(os.path.join(folder, "driver.log"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.handlers, logger.propagate = [handler], False
    try:
        yield
    finally:
        logger.handlers, logger.propagate = saved
        handler.close()
