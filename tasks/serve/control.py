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

from tasks import cluster, registry
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
from tasks.serve.probe import ServeStatus, probe
from tasks.serve.service import Loader, load_version
from tasks.settings import ServingConfig, Settings


class ServeError(DriftloopError):
    """The app could not be started or swapped; the message says why."""


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


def start_champion(settings: Settings) -> ServeStatus | None:
    """`driftloop up`: serve the settings' champion when there is one (None: none yet)."""
    args = ServeArgs.of(settings)
    if registry.champion(root=args.home, model=args.model) is None:
        return None
    return start(args)


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


def stop(*, everything: bool = False, home: str | None = None) -> bool:
    """Delete the app gracefully (each replica flushes its prediction log); with `everything`,
    Serve's controller and proxies go too; with `home`, what Serve logs here goes to its file.
    False when there was no app to stop."""
    from ray import serve

    if not is_running():
        return False
    with _serve_logs_to_file(home) if home else contextlib.nullcontext():
        serve.delete(APP_NAME)
        if everything:
            serve.shutdown()
    return True


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
