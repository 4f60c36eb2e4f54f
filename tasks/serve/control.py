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
import time
from collections.abc import Iterator
from typing import Any

from tasks import cluster, files, registry
from tasks.errors import DriftloopError
from tasks.serve.app import (
    APP_NAME,
    DEPLOYMENT,
    LOGS,
    ServeArgs,
    bind_app,
    logging_config,
    resolve_plan,
)
from tasks.serve.probe import ServeStatus, probe, url
from tasks.serve.routing import Plan
from tasks.serve.service import Loader, load_version
from tasks.settings import ServingConfig, Settings


class ServeError(DriftloopError):
    """The app could not be started or swapped; the message says why."""


def start(args: ServeArgs, *, loader: Loader = load_version) -> ServeStatus:
    """Run the app on this process's Ray (connecting as `tasks.cluster` does): HTTP on
    `serving.host:port` (127.0.0.1:8000 by default), the version `args.ref` names now."""
    from ray import serve

    cluster.connect_ray()
    plan = resolve_plan(args)
    with _serve_logs_to_file(args.home):
        serve.start(
            http_options={"host": args.serving.host, "port": args.serving.port},
            logging_config=logging_config(args.home),
        )
        _check_http(args.serving)
        serve.run(bind_app(args, version=plan.version, loader=loader, plan=plan), name=APP_NAME,
                  route_prefix="/")  # fmt: skip
    return probe(args.serving)


def swap(
    args: ServeArgs,
    *,
    version: int,
    loader: Loader = load_version,
    app: str = APP_NAME,
    route_prefix: str = "/",
    plan: Plan | None = None,
) -> ServeStatus:
    """Serve `version` instead (or a rollout's `plan`: the champion and a candidate beside
    it), in place: the replicas reconfigure (load it beside the old one, then switch), no
    restart, no failed request. `args` must be those the app was started with (others restart
    the replicas, one by one). A version that does not load here is refused before anything
    changes; the swap returns once every replica answers with it."""
    from ray import serve

    plan = plan or Plan(version=version)
    for wanted in plan.versions:
        registry.find(root=args.home, model=args.model, ref=wanted)  # refuse an unknown version
        try:
            loader(home=args.home, model=args.model, version=wanted)
        except Exception as exc:
            raise ServeError(
                f"{args.model} v{wanted} does not load ({files.first_line(exc)}); "
                "the app keeps serving what it served"
            ) from None
    with _serve_logs_to_file(args.home):
        serve.run(bind_app(args, version=plan.version, loader=loader, plan=plan), name=app,
                  route_prefix=route_prefix)  # fmt: skip
    base = url(args.serving) + route_prefix.rstrip("/")
    confirm_everywhere(base, plan=plan, replicas=running_replicas(app))
    return probe(args.serving)


def running_replicas(app: str = APP_NAME) -> int:
    """How many replicas of the app's deployment Serve runs now."""
    from ray import serve

    found = serve.status().applications.get(app)
    deployment = None if found is None else found.deployments.get(DEPLOYMENT)
    if deployment is None:
        return 0
    return sum(n for state, n in deployment.replica_states.items() if state == "RUNNING")


def confirm_everywhere(
    base: str, *, plan: Plan, replicas: int, timeout_s: float = 30.0
) -> dict[str, tuple[int | None, int | None]]:
    """Ask `/healthz` until `replicas` replicas have answered, each with the plan's version
    and candidate; returns what each replica serves. Raises ServeError naming those that do
    not, after `timeout_s`."""
    seen: dict[str, tuple[int | None, int | None]] = {}
    wanted = (plan.version, plan.candidate)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for body in _healthz(base, times=max(4, 4 * replicas)):
            rollout = body.get("rollout") or {}
            seen[str(body.get("replica"))] = (body.get("version"), rollout.get("candidate"))
        if len(seen) >= replicas and all(v == wanted for v in seen.values()):
            return seen
        time.sleep(0.2)
    behind = {r: v for r, v in seen.items() if v != wanted}
    shown = f"v{plan.version}" + (f" with candidate v{plan.candidate}" if plan.candidate else "")
    raise ServeError(
        f"{shown} is not served everywhere after {timeout_s:.0f} s: "
        f"{len(seen)} of {replicas} replica(s) answered; behind (version, candidate): "
        f"{behind or 'none seen'}"
    )


def _healthz(base: str, *, times: int) -> list[dict[str, Any]]:
    """`times` answers of /healthz, each on a new connection (the proxy spreads them)."""
    import httpx

    found = []
    for _ in range(times):
        with contextlib.suppress(httpx.HTTPError, ValueError):
            answer = httpx.get(f"{base}/healthz", timeout=2.0,
                               headers={"Connection": "close"})  # fmt: skip
            body = answer.json()
            if isinstance(body, dict):
                found.append(body)
    return found


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
