"""The Ray Serve application: one deployment with a FastAPI ingress, made by `build_app(args)`.

    app = build_app(ServeArgs(home=home, model="churn"))        # the champion, as it is now
    serve.run(app, name=APP_NAME, route_prefix="/")

The same builder serves the local stack (tasks/serve/control.py), `serve deploy
infra/serve/driftloop.yaml` (`import_path: tasks.serve:build_app`, its `args:` validated by
`ServeArgs`) and the KubeRay RayService. The model loader comes in through `.bind()` (`bind_app`)
so tests can swap it. The version served is the deployment's `user_config` (`{"version": N}`):
changing only that reconfigures the running replicas in place, with no restart and no failed
request (`control.swap`).
"""

import asyncio
import hashlib
import json
import logging
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.handle import DeploymentHandle

from tasks import files, registry
from tasks.registry import RegistryError
from tasks.serve.routing import Plan
from tasks.serve.schema import Columns
from tasks.serve.service import Loaded, Loader, Service, load_version, make_api
from tasks.settings import ServingConfig, Settings

log = logging.getLogger("driftloop.serve")
APP_NAME = "driftloop"
DEPLOYMENT = "DriftloopServer"
LOGS = ("logs", "serve")  # under the home: Serve's controller, proxy and replica logs


class ServeArgs(BaseModel):
    """What the app serves: the model of a home, and how (a `serve deploy` config's `args:`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    home: str = Field(description="DRIFTLOOP_HOME: a folder or a URI (s3://, gs://)")
    model: str = Field(description="the model's name in the registry (the dataset's name)")
    ref: str = Field("champion", description="a version number or an alias, resolved at build")
    serving: ServingConfig = ServingConfig()

    @classmethod
    def of(cls, settings: "Settings", *, ref: str | int = registry.CHAMPION) -> "ServeArgs":
        """The args of the settings' model: what `driftloop up` and every swap use, so a swap
        finds the replicas built from equal args and reconfigures them in place."""
        return cls(home=settings.home, model=settings.dataset.name, ref=str(ref),
                   serving=settings.serving)  # fmt: skip

    @field_validator("home")
    @classmethod
    def _absolute(cls, home: str) -> str:
        """Replicas run in other folders: a relative local home is made absolute here."""
        import os

        return home if "://" in home else os.path.abspath(home)


@serve.deployment(name=DEPLOYMENT)
@serve.ingress()
class DriftloopServer:
    """A replica: the model of `user_config["version"]`, its HTTP API and its prediction log."""

    def __init__(self, home: str, model: str, serving: ServingConfig, loader: Loader) -> None:
        import torch

        torch.set_num_threads(max(1, int(serving.num_cpus)))  # tiny matmuls: threads cost more
        self.service = Service(home=home, model=model, serving=serving, loader=loader)
        self.service.replica = serve.get_replica_context().replica_id.unique_id
        self.wanted = Plan(version=None)  # what user_config asks for
        if serving.batching:
            batched: Any = self._batched  # serve.batch's wrapper carries the setters
            batched.set_max_batch_size(serving.max_batch_size)
            batched.set_batch_wait_timeout_s(serving.batch_wait_timeout_s)
            self.service.score = self._score_in_batch

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve what `config` asks (`Plan`: the champion's version, None for nothing, and
        during a rollout a candidate and its mode). Loads off the event loop; requests keep the
        old plan until the new one is ready. A version that fails to load fails this replica
        (raised here, and by `check_health` after): Serve replaces it rather than leave it
        answering with another version, or with 503s."""
        plan = Plan.of(config)
        self.wanted = plan
        try:
            await asyncio.to_thread(self.service.load, plan.version, plan=plan)
        except Exception as exc:
            reason = f"{plan.to_config()} failed to load: {files.first_line(exc)}"
            log.exception(reason)
            self.service.reason = reason
            raise

    def check_health(self) -> None:
        """Serve's periodic check: a replica that does not serve what it was asked to is
        unhealthy, and Serve replaces it."""
        served = self.served()
        if served != self.wanted:
            raise RuntimeError(
                f"serves {served.to_config()}, not {self.wanted.to_config()}: {self.service.reason}"
            )

    def served(self) -> Plan:
        """What this replica answers with."""
        current, candidate = self.service.current, self.service.candidate
        if current is None:
            return Plan(version=None)
        if candidate is None:
            return Plan(version=current.version)
        return replace(self.service.plan, version=current.version, candidate=candidate.version)

    def served_version(self) -> int | None:
        """The version this replica answers with (None: none)."""
        current = self.service.current
        return None if current is None else current.version

    def health_reason(self) -> str:
        return self.service.reason

    def __serve_build_asgi_app__(self) -> Any:
        return make_api(self.service)

    async def _score_in_batch(self, loaded: Loaded, columns: Columns) -> Any:
        return await self._batched((loaded, columns))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _batched(self, items: list[tuple[Loaded, Columns]]) -> list[Any]:
        """One forward pass per version for the requests that arrived together."""
        results: list[Any] = [None] * len(items)
        versions: dict[int, list[int]] = {}
        for i, (loaded, _) in enumerate(items):
            versions.setdefault(id(loaded), []).append(i)
        for positions in versions.values():
            loaded = items[positions[0]][0]
            parts = [items[i][1] for i in positions]
            merged = {name: [v for part in parts for v in part[name]] for name in parts[0]}
            out = loaded.scorer.score_columns(merged)
            start = 0
            for i, part in zip(positions, parts, strict=True):
                rows = len(next(iter(part.values()))) if part else 0
                results[i] = out[start : start + rows]
                start += rows
        return results

    def __del__(self) -> None:
        """Serve's graceful stop (`serve.delete`, a scale-down, a restart) calls this: flush."""
        service = getattr(self, "service", None)
        if service is not None:
            service.close()


def build_app(args: ServeArgs) -> serve.Application:
    """The application for `serve run` / `serve deploy` / KubeRay: the registry's `args.ref`
    (the champion by default, with a running rollout's candidate beside it) served with
    `args.serving`; no champion yet: /healthz says 503."""
    plan = resolve_plan(args)
    return bind_app(args, version=plan.version, loader=load_version, plan=plan)


def resolve_plan(args: ServeArgs) -> Plan:
    """What the app serves now: for the champion, a running rollout's plan (the champion and
    its candidate: a restarted stack resumes the rollout) or the champion alone; for another
    ref, that version alone."""
    record = registry.read_rollout(root=args.home, model=args.model)
    if args.ref == registry.CHAMPION and record is not None and record["status"] == "running":
        return Plan.of_rollout(record)
    return Plan(version=resolve_version(args))


def bind_app(
    args: ServeArgs, *, version: int | None, loader: Loader, plan: Plan | None = None
) -> serve.Application:
    """The deployment with its options from `args.serving`, serving `version` (or a rollout's
    `plan`), loading models with `loader`. Apps bound from equal args (and code) differ only in
    `user_config`, so redeploying one swaps the model in place."""
    s = args.serving
    options: dict[str, Any] = {
        "max_ongoing_requests": s.max_ongoing_requests,
        "max_queued_requests": s.max_queued_requests,
        "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=s.retry_after_s),
        "ray_actor_options": actor_options(s),
        "user_config": (plan or Plan(version=version)).to_config(),
        "logging_config": logging_config(args.home),
    }  # fmt: skip
    if s.max_replicas is not None and s.max_replicas > s.replicas:
        options["autoscaling_config"] = {
            "min_replicas": s.replicas,
            "max_replicas": s.max_replicas,
            "target_ongoing_requests": s.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = s.replicas
    # Serve gives each `serve.run` a random code version, which restarts every replica; a
    # version derived from what the replicas were built with keeps them for a user_config
    # change (what `serve deploy` does with the hash of a config's import path and args).
    server: Any = DriftloopServer  # a serve.Deployment (the decorators hide it from mypy)
    deployment = server.options(**options, version=code_version(args, loader), _internal=True)
    return deployment.bind(args.home, args.model, s, loader)


def actor_options(serving: ServingConfig) -> dict[str, Any]:
    """CPUs per replica, and GPUs when configured (the model then runs on one). Replicas log to
    their files only (`logging_config`), not also to stderr, which Ray forwards to drivers."""
    gpus = {"num_gpus": serving.num_gpus} if serving.num_gpus else {}
    quiet = {"runtime_env": {"env_vars": {"RAY_SERVE_LOG_TO_STDERR": "0"}}}
    return {"num_cpus": serving.num_cpus, **gpus, **quiet}


def resolve_version(args: ServeArgs) -> int | None:
    """The version `args.ref` names now; None when it is the champion and there is none yet."""
    try:
        return registry.find(root=args.home, model=args.model, ref=args.ref).version
    except RegistryError:
        none_yet = registry.champion(root=args.home, model=args.model) is None
        if args.ref == registry.CHAMPION and none_yet:
            return None
        raise


def code_version(args: ServeArgs, loader: Loader) -> str:
    """A digest of the code and the replica's arguments (the version ref and key excluded)."""
    serving = args.serving.model_dump(mode="json", exclude={"api_key"})
    key = args.serving.api_key
    secret = hashlib.sha256(key.get_secret_value().encode()).hexdigest() if key else None
    text = json.dumps(
        {
            "code": registry.code_version(),
            "home": args.home,
            "model": args.model,
            "serving": serving,
            "key": secret,
            "loader": f"{getattr(loader, '__module__', '')}.{getattr(loader, '__qualname__', '')}",
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def logging_config(home: str) -> dict[str, Any]:
    """Serve's logs to files under a local home, never to the terminal; INFO and up, no access
    log (the prediction log records every answer)."""
    config: dict[str, Any] = {"log_level": "INFO", "enable_access_log": False}
    if "://" not in home:
        config["logs_dir"] = files.join(home, *LOGS)
    return config


def handle() -> DeploymentHandle:
    """A handle to the running app's deployment (Python calls, e.g. from tests)."""
    return serve.get_deployment_handle(DEPLOYMENT, app_name=APP_NAME)
