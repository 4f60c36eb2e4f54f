"""Serving on Ray Serve: predictions over HTTP, every answer logged, feedback taken, swaps in place.

    status = start(ServeArgs(home=home, model="churn", serving=settings.serving))
    swap(args, version=4)          # `driftloop deploy` / `rollback` / a promotion
    stop()

The modules: `app` (the deployment and `build_app`, for `serve run`/`serve deploy`/KubeRay),
`service` (the model behind FastAPI, free of Ray), `schema` (request schemas from the model's
features), `scoring` (the model on its device, int8 or float32), `log` (the buffered prediction
log), `control` (start, probe, swap, stop). Nothing here imports Prefect: replicas import it.
"""

from tasks.serve.app import APP_NAME, DEPLOYMENT, ServeArgs, bind_app, build_app, resolve_version
from tasks.serve.control import (
    ServeError,
    ServeStatus,
    deploy_version,
    headers,
    is_running,
    probe,
    start,
    stop,
    swap,
    url,
)
from tasks.serve.log import PredictionLog
from tasks.serve.schema import BadRequest, Schemas
from tasks.serve.scoring import INT8_TOLERANCE, Scorer
from tasks.serve.service import Service, load_version, make_api

__all__ = [
    "APP_NAME",
    "DEPLOYMENT",
    "INT8_TOLERANCE",
    "BadRequest",
    "PredictionLog",
    "Schemas",
    "Scorer",
    "ServeArgs",
    "ServeError",
    "ServeStatus",
    "Service",
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
    "stop",
    "swap",
    "url",
]
