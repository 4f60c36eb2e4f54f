"""The served model behind HTTP, free of Ray: the Serve replica and the plain uvicorn app of the
benchmark both run it.

    service = Service(home=home, model="churn", serving=settings.serving, loader=load_version)
    service.load(3)                       # or a swap: the next request answers with version 3
    app = make_api(service)               # FastAPI: /predict /feedback /healthz /model /docs

Every answered record gets its own request id and a row in the prediction log; a response names
the version that produced it (in the body and in `X-Model-Version`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import pyarrow as pa
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline

from tasks import registry, traffic
from tasks.model import Predictor, load_model
from tasks.serve import arrow as arrow_io
from tasks.serve.log import Answered, LogUnavailable, PredictionLog
from tasks.serve.probe import API_KEY_HEADER, VERSION_HEADER
from tasks.serve.routing import KEY_HEADER, Copy, Failures, Plan, Shadow, in_canary
from tasks.serve.schema import BadRequest, Columns, Schemas
from tasks.serve.scoring import Scorer
from tasks.settings import ServingConfig

log = logging.getLogger("driftloop.serve")


class Loader(Protocol):
    """Loads one registered version: its predictor and its registry metadata."""

    def __call__(
        self, *, home: str, model: str, version: int
    ) -> tuple[Predictor, dict[str, Any]]: ...


def load_version(*, home: str, model: str, version: int) -> tuple[Predictor, dict[str, Any]]:
    """The registry's version `version`: weights-only model directory plus its metadata.json."""
    ref = registry.find(root=home, model=model, ref=version)
    meta = registry.get_version(root=home, model=model, version=ref.version)
    return load_model(ref.location), meta


@dataclass(frozen=True)
class Loaded:
    """What a request needs of the served version: the model and its request schemas."""

    scorer: Scorer
    schemas: Schemas

    @property
    def version(self) -> int:
        return self.scorer.version


Score = Callable[[Loaded, Columns], Awaitable[Any]]


async def score_now(loaded: Loaded, columns: Columns) -> Any:
    """Score one request on its own (no batching)."""
    return loaded.scorer.score_columns(columns)


class Service:
    """One model name served from the registry under `home`; swappable in place."""

    def __init__(
        self, *, home: str, model: str, serving: ServingConfig, loader: Loader = load_version
    ) -> None:
        self.home, self.model, self.serving, self.loader = home, model, serving, loader
        self.current: Loaded | None = None
        self.reason = "no champion loaded yet"  # why /healthz answers 503
        self.replica = f"pid-{os.getpid()}"  # which replica answers (Serve's id in a replica)
        self.score: Score = score_now
        self._swap_lock = threading.Lock()
        self.log = PredictionLog(home=home, model=model, serving=serving)
        self.plan = Plan(version=None)
        self.candidate: Loaded | None = None  # a rollout's candidate (shadow or canary)
        self.shadow: Shadow | None = None
        self.failures = Failures(home, model, replica=self.replica)

    # Model --------------------------------------------------------------------------------------

    def load(self, version: int | None, *, plan: Plan | None = None) -> None:
        """Serve `version` from the next request on (None: serve nothing, /healthz says why),
        and during a rollout the plan's candidate beside it. A version that fails to load
        leaves what is served in place, and raises."""
        plan = plan or Plan(version=version)
        with self._swap_lock:  # both load before either serves: a failure changes nothing
            current = None if plan.version is None else self._loaded(plan.version, self.current)
            candidate = (
                None if plan.candidate is None else self._loaded(plan.candidate, self.candidate)
            )
            self._shadow_for(plan)
            self.current, self.candidate, self.plan = current, candidate, plan
            if current is None:
                self.reason = f"no champion for {self.model!r} in the registry"
            log.info("serving %s: %s", self.model, plan.to_config())
        self.log.flush()  # the files written before a swap hold the old version's rows only

    def _loaded(self, version: int, now: Loaded | None) -> Loaded:
        """`version` ready to answer (the one in `now` when it is that version already)."""
        if now is not None and now.version == version:
            return now
        predictor, meta = self.loader(home=self.home, model=self.model, version=version)
        scorer = Scorer.of(
            predictor, version=version, metadata=meta, quantize=self.serving.quantize_int8
        )
        schemas = Schemas.build(predictor, max_records=self.serving.max_records,
                                max_chars=self.serving.max_category_chars)  # fmt: skip
        return Loaded(scorer=scorer, schemas=schemas)

    def _shadow_for(self, plan: Plan) -> None:
        """A shadow thread (and its log) while the plan shadows; none otherwise."""
        if plan.mode == "shadow" and self.shadow is None:
            shadow_log = PredictionLog(home=self.home, model=self.model, serving=self.serving,
                                       kind="shadow")  # fmt: skip
            self.shadow = Shadow(shadow_log, self.failures, score=self._scored)
        elif plan.mode != "shadow" and self.shadow is not None:
            self.shadow.close()
            self.shadow = None

    def require(self) -> Loaded:
        loaded = self.current
        if loaded is None:
            raise BadRequest(503, self.reason)
        return loaded

    # Requests -----------------------------------------------------------------------------------

    async def predict(self, body: bytes, *, key: str | None = None, arrow: bool = False) -> Reply:
        """Answer `{"records": [...]}` (or an Arrow stream of the features, `arrow`): a
        prediction and a request id per record, logged before the answer leaves (a 503 when it
        cannot be). During a canary, the candidate answers the requests `key` (or a draw) sends
        it; during a shadow, it scores a copy afterwards."""
        started = time.perf_counter()
        loaded, candidate, plan = self.require(), self.candidate, self.plan
        if candidate is not None and plan.mode == "canary" and in_canary(key, share=plan.share):
            try:
                return (await self._answer(candidate, body, started, arrow))[0]
            except BadRequest as exc:
                if exc.status == 503:  # the log, not the candidate: no answer may leave
                    raise
                failure: Exception = exc
            except Exception as exc:  # the champion answers; the candidate's failure is noted
                failure = exc
            reply = (await self._answer(loaded, body, started, arrow))[0]  # a bad request raises
            self.failures.add(version=candidate.version, mode="canary", rows=len(reply.ids),
                              error=failure)  # fmt: skip
            return reply
        reply, columns = await self._answer(loaded, body, started, arrow)
        if candidate is not None and plan.mode == "shadow" and self.shadow is not None:
            same = (candidate.schemas.numeric, candidate.schemas.categorical) == (
                loaded.schemas.numeric, loaded.schemas.categorical)  # fmt: skip
            self.shadow.submit(Copy(candidate=candidate, request_ids=reply.ids,
                                    columns=columns if same else None,
                                    body=b"" if same else body, arrow=arrow))  # fmt: skip
        return reply

    async def _answer(
        self, loaded: Loaded, body: bytes, started: float, arrow: bool
    ) -> tuple[Reply, Columns]:
        """`loaded` answers the body: validated, scored, logged, then the reply (and the
        validated columns, for a shadow to reuse)."""
        columns = parse(loaded.schemas, body, arrow=arrow)
        out = await self.score(loaded, columns)
        ids = traffic.new_request_ids(len(out))
        try:
            self.log.add(_answered(loaded, columns, out, ids, started))
        except LogUnavailable as exc:
            raise BadRequest(503, str(exc)) from None
        return Reply(model=self.model, loaded=loaded, out=out, ids=ids), columns

    @staticmethod
    def _scored(
        loaded: Loaded, columns: Columns, ids: list[str], started: float
    ) -> traffic.Answered:
        """The shadow's rows: `loaded` on copies of answered requests, under their ids."""
        out = loaded.scorer.score_columns(columns)
        # no features: the prediction log holds them under the same ids
        return _answered(loaded, columns, out, ids, started, features=False)

    def feedback(self, body: bytes, *, arrow: bool = False) -> dict[str, Any]:
        """Take labels for earlier request ids (JSON, or an Arrow stream of `request_id` and
        `label` columns): the known ones are stored, the unknown ones listed (a 404 when none is
        known); an id given twice refuses the request (422), naming it."""
        loaded = self.require()
        schemas = loaded.schemas
        labels = arrow_io.labels(arrow_io.read(body), schemas) if arrow else schemas.labels(body)
        ids = [rid for rid, _ in labels]
        twice = {rid for rid in ids if ids.count(rid) > 1} if len(set(ids)) < len(ids) else set()
        if twice:
            errors = [
                {"field": f"labels.{i}.request_id", "message": f"request id {rid!r} is given "
                 "more than once; send one label per id"}
                for i, rid in enumerate(ids) if rid in twice
            ]  # fmt: skip
            shown = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
            raise BadRequest(422, shown, errors=errors)
        known = self.log.pending_ids() & set(ids)
        known |= traffic.logged_ids(home=self.home, model=self.model, wanted=set(ids) - known)
        unknown = [rid for rid in ids if rid not in known]
        if not known:
            errors = [{"field": f"labels.{i}.request_id", "message": f"unknown request id {rid!r}"}
                      for i, rid in enumerate(ids)]  # fmt: skip
            shown = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
            raise BadRequest(404, f"{shown} (no prediction has it)", errors=errors)
        target = loaded.schemas.target
        kept = [(rid, label) for rid, label in labels if rid in known]
        rows = pa.table(
            {
                traffic.REQUEST_ID: pa.array([rid for rid, _ in kept], pa.string()),
                target: pa.array([label for _, label in kept], loaded.schemas.label_type()),
            }
        )
        traffic.append(home=self.home, model=self.model, kind="feedback", rows=rows)
        return {"model": self.model, "accepted": len(kept), "unknown": unknown}

    def health(self) -> tuple[int, dict[str, Any]]:
        loaded = self.current
        log_counts = self.log.health()
        if loaded is None:
            return 503, {"status": "unavailable", "model": self.model, "reason": self.reason,
                         "replica": self.replica, "log": log_counts}  # fmt: skip
        body = {"status": "ok", "model": self.model, "version": loaded.version,
                "replica": self.replica, "log": log_counts}  # fmt: skip
        candidate, plan = self.candidate, self.plan
        if candidate is not None:
            rollout: dict[str, Any] = {"candidate": candidate.version, "mode": plan.mode,
                                       "share": plan.share}  # fmt: skip
            if self.shadow is not None:
                rollout["shadow"] = self.shadow.counts.to_dict()
            body["rollout"] = rollout
        return 200, body

    def info(self) -> dict[str, Any]:
        loaded = self.require()
        scorer, schemas = loaded.scorer, loaded.schemas
        return {
            "model": self.model,
            "version": scorer.version,
            "task": scorer.predictor.task,
            "target": schemas.target,
            "features": {"numeric": schemas.numeric, "categorical": schemas.categorical},
            "classes": scorer.classes,
            "device": scorer.device,
            "quantized": scorer.quantize,
            "metadata": public_metadata(scorer.metadata),
        }

    def close(self) -> None:
        """Flush the prediction log (and the shadow's) and stop their threads."""
        if self.shadow is not None:
            self.shadow.close()
        self.log.close()


@dataclass(frozen=True)
class Reply:
    """A request's answers, before they are written as JSON or as an Arrow stream."""

    model: str
    loaded: Loaded
    out: Any  # the model's outputs: probabilities (n, k) or values (n,)
    ids: list[str]

    @property
    def version(self) -> int:
        return self.loaded.version

    def to_json(self) -> dict[str, Any]:
        answers = self.loaded.scorer.answers(self.out, self.ids)
        return {"model": self.model, "version": self.version, "predictions": answers}

    def to_arrow(self) -> bytes:
        return arrow_io.answers_stream(self.out, self.ids, self.loaded.scorer)


def parse(schemas: Schemas, body: bytes, *, arrow: bool) -> Columns:
    """A request's features: JSON records, or an Arrow stream's columns (the same rules)."""
    return arrow_io.features(arrow_io.read(body), schemas) if arrow else schemas.records(body)


def _answered(
    loaded: Loaded, columns: Columns, out: Any, ids: list[str], started: float, *,
    features: bool = True,
) -> traffic.Answered:  # fmt: skip
    """A request's rows for the log: its ids, version, validated features and outputs."""
    scorer, schemas = loaded.scorer, loaded.schemas
    classes = scorer.classes
    return Answered(
        request_ids=ids,
        version=scorer.version,
        features=columns if features else {},
        types=schemas.feature_types() if features else {},
        predictions=scorer.predictions(out),
        prediction_type=schemas.label_type(),
        probabilities=None
        if classes is None
        else {str(c): out[:, k] for k, c in enumerate(classes)},
        latency_ms=(time.perf_counter() - started) * 1e3,
    )


# What a caller may see of a version's registry metadata: its figures, never local paths, flow
# run ids or the parameters of its training
PUBLIC_METADATA = ("created_at", "metrics", "judged_on", "train_rows", "best_epoch",
                   "validation_metric", "production_rows")  # fmt: skip


def public_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """The registry metadata `/model` shows: figures and dates, the gate's verdict, no paths."""
    shown = {k: meta[k] for k in PUBLIC_METADATA if k in meta}
    if isinstance(meta.get("judged_on"), dict):  # its basis names rows, not places
        shown["judged_on"] = {k: v for k, v in meta["judged_on"].items() if k != "path"}
    gate = meta.get("gate")
    if isinstance(gate, dict):
        shown["gate"] = {k: gate[k] for k in ("passed", "summary", "judged_against") if k in gate}
    return shown


# HTTP ---------------------------------------------------------------------------------------------


def make_api(service: Service) -> FastAPI:
    """The FastAPI app over `service`: request bodies are read, size-checked and validated here
    against the served version's schema (so a swap to new features needs no restart)."""
    app = FastAPIOffline(  # /docs: the Swagger UI from files in the package, not from a CDN
        title=f"driftloop: {service.model}",
        description="Predictions from the registry's champion; every answer is logged.",
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
        redirect_slashes=False,  # a redirect would be built from the Host the client sent
    )
    key = service.serving.api_key
    secret = key.get_secret_value().encode() if key is not None else None
    limit = service.serving.max_body_bytes

    def check_key(request: Request) -> None:
        if secret is None:
            return
        given = request.headers.get(API_KEY_HEADER, "").encode()
        if not hmac.compare_digest(given, secret):
            raise BadRequest(401, f"missing or wrong {API_KEY_HEADER} header")

    @app.exception_handler(BadRequest)
    async def _refused(_: Request, exc: BadRequest) -> JSONResponse:
        headers = {"WWW-Authenticate": API_KEY_HEADER} if exc.status == 401 else None
        if exc.status == 503:
            headers = {"Retry-After": str(max(1, round(service.serving.retry_after_s)))}
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.post("/predict", openapi_extra=_body("PredictRequest"))
    async def predict(request: Request) -> Response:
        """Predictions for `{"records": [{feature: value, ...}, ...]}` (or a bare list)."""
        check_key(request)
        body = await read_body(request, limit=limit)
        arrow_in = arrow_io.wants_arrow(request.headers.get("content-type"))
        reply = await service.predict(body, key=request.headers.get(KEY_HEADER), arrow=arrow_in)
        headers = {VERSION_HEADER: str(reply.version)}
        if arrow_io.wants_arrow(request.headers.get("accept")):
            return Response(reply.to_arrow(), media_type=arrow_io.ARROW, headers=headers)
        return Response(orjson.dumps(reply.to_json()), media_type="application/json",
                        headers=headers)  # fmt: skip

    @app.post("/feedback", openapi_extra=_body("FeedbackRequest"))
    async def feedback(request: Request) -> JSONResponse:
        """Labels for earlier request ids: `{"labels": [{"request_id": ..., "label": ...}]}`."""
        check_key(request)
        body = await read_body(request, limit=limit)
        arrow_in = arrow_io.wants_arrow(request.headers.get("content-type"))
        answer = await asyncio.to_thread(service.feedback, body, arrow=arrow_in)  # file I/O
        return JSONResponse(answer)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """200 with the served version, or 503 with the reason none is served."""
        status, body = service.health()
        return JSONResponse(body, status_code=status)

    @app.get("/model")
    async def model(request: Request) -> JSONResponse:
        """The served version, its features, classes and registry metadata."""
        check_key(request)
        return JSONResponse(service.info())

    def openapi() -> dict[str, Any]:
        schema = get_openapi(title=app.title, version=_served(service), routes=app.routes,
                             description=app.description)  # fmt: skip
        if service.current is not None:
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                _flatten(service.current.schemas.openapi())
            )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


async def read_body(request: Request, *, limit: int) -> bytes:
    """The request body, refused with a 413 past `limit` bytes (before reading it all)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BadRequest(413, f"body: larger than {limit} bytes (serving.max_body_bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"body: larger than {limit} bytes (serving.max_body_bytes)")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        raise BadRequest(422, "body: empty; send JSON")
    return body


def _body(name: str) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{name}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _served(service: Service) -> str:
    return f"version {service.current.version}" if service.current else "no version served"


def _flatten(schemas: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Top-level schemas plus the `$defs` pydantic nests in them, as OpenAPI components."""
    out: dict[str, dict[str, Any]] = {}
    for name, schema in schemas.items():
        schema = dict(schema)
        out.update(schema.pop("$defs", {}))
        out[name] = schema
    return out
