"""Serving on Ray Serve: predictions over HTTP, every answer logged, feedback taken, swaps in place.

    status = start(ServeArgs.of(settings))   # Serve on 127.0.0.1:8000, the champion
    swap(args, version=4)                    # `driftloop deploy` / `rollback` / a promotion
    probe(settings.serving)                  # over HTTP, no Ray: running? which version?
    stop()

The modules: `app` (the deployment and `build_app`, for `serve run`/`serve deploy`/KubeRay),
`service` (the model behind FastAPI, free of Ray), `schema` (request schemas from the model's
features), `arrow` (the same requests and answers as Arrow IPC), `scoring` (the model on its
device, int8 or float32), `log` (the prediction log, durable before an answer leaves), `routing`
(a replica's plan: champion and candidate, canary and shadow), `rollout` (what serves, in one
room), `control` (start, swap, stop), `probe` (status over HTTP), `client` (predict and feedback
over HTTP, JSON or Arrow, counting what failed). Nothing here imports Prefect:
replicas import it. The names below load their module on first use, so `driftloop status`
(which needs `probe` alone) does not pay for Ray, torch and FastAPI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.serve.app import (
        APP_NAME,
        DEPLOYMENT,
        ServeArgs,
        bind_app,
        build_app,
        resolve_version,
    )
    from tasks.serve.client import Client, Traffic
    from tasks.serve.control import (
        ServeError,
        deploy_version,
        is_running,
        start,
        start_champion,
        stop,
        swap,
    )
    from tasks.serve.log import Answered, LogUnavailable, PredictionLog
    from tasks.serve.probe import ServeStatus, headers, probe, url
    from tasks.serve.schema import BadRequest, Schemas
    from tasks.serve.scoring import INT8_TOLERANCE, Scorer
    from tasks.serve.service import Service, load_version, make_api

_WHERE = {
    "app": ["APP_NAME", "DEPLOYMENT", "ServeArgs", "bind_app", "build_app", "resolve_version"],
    "client": ["Client", "Traffic"],
    "control": ["ServeError", "deploy_version", "is_running", "start", "start_champion", "stop",
                "swap"],
    "log": ["Answered", "LogUnavailable", "PredictionLog"],
    "probe": ["ServeStatus", "headers", "probe", "url"],
    "schema": ["BadRequest", "Schemas"],
    "scoring": ["INT8_TOLERANCE", "Scorer"],
    "service": ["Service", "load_version", "make_api"],
}  # fmt: skip
_MODULE = {name: module for module, names in _WHERE.items() for name in names}

__all__ = [
    "APP_NAME",
    "DEPLOYMENT",
    "INT8_TOLERANCE",
    "Answered",
    "BadRequest",
    "Client",
    "LogUnavailable",
    "PredictionLog",
    "Schemas",
    "Scorer",
    "ServeArgs",
    "ServeError",
    "ServeStatus",
    "Service",
    "Traffic",
    "bind_app",
    "build_app",
    "deploy_version",
    "headers",
    "is_running",
    "load_version",
    "make_api",
    "probe",
    "resolve_version",
    "start",
    "start_champion",
    "stop",
    "swap",
    "url",
]


def __getattr__(name: str) -> Any:
    if name in _MODULE:
        return getattr(importlib.import_module(f"tasks.serve.{_MODULE[name]}"), name)
    if name in _WHERE:  # a submodule: tasks.serve.control
        return importlib.import_module(f"tasks.serve.{name}")
    raise AttributeError(f"module 'tasks.serve' has no attribute {name!r}")
