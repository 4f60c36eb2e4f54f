"""Serving: predictions over real HTTP on 127.0.0.1 from a real Ray Serve, every answer logged,
feedback joined, swaps in place under load, malformed requests refused with a 4xx.

The unit tests run the same FastAPI app in-process (no Ray); the integration tests share one Serve
app per module (Serve start costs ~6.5 s) and end by stopping it gracefully.
"""

import json
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import CHROMIUM_ARGS, find_chromium
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks import registry, traffic
from tasks.model import ModelSpec, Predictor, Preprocessor, TabularMLP, load_model, save_model
from tasks.serve import (
    APP_NAME,
    DEPLOYMENT,
    INT8_TOLERANCE,
    Answered,
    Client,
    PredictionLog,
    Scorer,
    ServeArgs,
    Service,
    bind_app,
    build_app,
    control,
    load_version,
    make_api,
)
from tasks.serve.routing import Plan
from tasks.serve.schema import FLOAT32_MAX
from tasks.settings import Features, ServingConfig, TrainingConfig

with warnings.catch_warnings():  # starlette's TestClient wants `httpx2`; httpx works as it is
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

MODEL = "churn"
FEATURES = Features(numeric=["tenure", "charges"], categorical=["contract", "has_partner"])
KEY = "test-key-0123456789"
MAX_RECORDS = 50
MAX_BODY = 64 * 1024


def make_table(rows: int, *, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    charges = rng.normal(50, 10, rows)
    return pa.table(
        {
            "tenure": rng.integers(1, 72, rows),
            "charges": charges,
            "contract": rng.choice(["monthly", "yearly", "two-year"], rows),
            "has_partner": rng.random(rows) < 0.5,
            "y": (charges + rng.normal(0, 5, rows) > 50).astype(np.int64),
        }
    )


def records(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as a client sends them (booleans as JSON true/false)."""
    return table.select(FEATURES.all).to_pylist()


def fitted(seed: int) -> tuple[TabularMLP, ModelSpec, Preprocessor]:
    pre = Preprocessor.fit(
        make_table(400, seed=0), features=FEATURES, target="y", task="classification"
    )
    spec = ModelSpec.build(pre, TrainingConfig(hidden_layers=[32, 16]))
    torch.manual_seed(seed)
    return TabularMLP(spec), spec, pre


def register(home: str, seed: int) -> int:
    net, spec, pre = fitted(seed)
    saved = save_model(Path(home) / f"m{seed}", model=net, spec=spec, preprocessor=pre)
    metadata = {"seed": seed, "metrics": {"roc_auc": 0.5 + seed / 100}, "params": {"epochs": 3}}
    return registry.register(root=home, model=MODEL, model_dir=str(saved), metadata=metadata)


@dataclass
class Models:
    home: str
    versions: list[int]

    def predictor(self, version: int) -> Predictor:
        return load_model(registry.find(root=self.home, model=MODEL, ref=version).location)


def make_home(path: Path) -> Models:
    home = str(path)
    versions = [register(home, seed) for seed in (1, 2)]
    registry.set_alias(root=home, model=MODEL, alias="champion", version=versions[0], reason="t")
    return Models(home=home, versions=versions)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return make_home(tmp_path_factory.mktemp("serve-home"))


def serving(**overrides: Any) -> ServingConfig:
    base: dict[str, Any] = {
        "max_records": MAX_RECORDS,
        "max_body_bytes": MAX_BODY,
        "log_flush_seconds": 0.5,
    }
    return ServingConfig(**{**base, **overrides})


# In-process: the same FastAPI app, no Ray ---------------------------------------------------------


@pytest.fixture
def client(models: Models, tmp_path: Path) -> Iterator[tuple[TestClient, Service]]:
    service = Service(home=models.home, model=MODEL, serving=serving(api_key=KEY))
    service.load(models.versions[0])
    with TestClient(make_api(service), headers={"X-API-Key": KEY}) as test_client:
        yield test_client, service
    service.close()


def test_the_request_schema_comes_from_the_models_features_and_shows_on_the_openapi_page(
    client: tuple[TestClient, Service],
) -> None:
    http, _ = client
    schemas = http.get("/openapi.json").json()["components"]["schemas"]
    record = schemas["Record"]
    assert sorted(record["properties"]) == sorted(FEATURES.all)
    assert record["additionalProperties"] is False
    assert set(record["required"]) == set(FEATURES.all)
    number = {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}
    assert number in record["properties"]["tenure"]["anyOf"]
    assert {"type": "string", "maxLength": 64} in record["properties"]["contract"]["anyOf"]
    body = http.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("/PredictRequest")


def test_bad_requests_get_a_4xx_whose_message_names_the_field(
    client: tuple[TestClient, Service],
) -> None:
    http, _ = client
    good = records(make_table(1, seed=5))[0]
    cases: list[tuple[bytes | Any, int, str]] = [
        ({"records": [{**good, "color": "red"}]}, 422, "records.0.color"),
        ({"records": [{k: v for k, v in good.items() if k != "tenure"}]}, 422, "records.0.tenure"),
        ({"records": [{**good, "charges": "a lot"}]}, 422, "records.0.charges"),
        ({"records": [{**good, "contract": 1.5}]}, 422, "records.0.contract"),
        (
            b'{"records": [{"tenure": NaN, "charges": 1, "contract": "m", "has_partner": "x"}]}',
            422,
            "records.0.tenure",
        ),
        ({"records": []}, 422, "records"),
        ({"records": [good] * (MAX_RECORDS + 1)}, 422, "records"),
        (b"x" * (MAX_BODY + 1), 413, "body"),
        (b"{not json", 422, "body"),
    ]
    for payload, status, named in cases:
        answer = (
            http.post("/predict", content=payload)
            if isinstance(payload, bytes)
            else http.post("/predict", json=payload)
        )
        assert answer.status_code == status, (payload, answer.text)
        assert named in answer.json()["detail"], answer.json()


def test_a_number_past_float32_gets_a_422_naming_the_field_and_a_large_one_a_finite_answer(
    client: tuple[TestClient, Service],
) -> None:
    http, _ = client
    good = records(make_table(1, seed=5))[0]
    for value in (1e308, -1e39):
        answer = http.post("/predict", json={"records": [good, {**good, "charges": value}]})
        assert answer.status_code == 422, answer.text
        assert "records.1.charges" in answer.json()["detail"]
        assert "float32" in answer.json()["detail"]
    for value in (3.0e38, -3.0e38, 1e12):  # finite in float32, far past anything trained on
        answer = http.post("/predict", json={"records": [{**good, "charges": value}]})
        assert answer.status_code == 200, answer.text
        (item,) = answer.json()["predictions"]
        probabilities = list(item["probabilities"].values())
        assert all(isinstance(p, float) and 0 <= p <= 1 for p in probabilities), item
        assert item["prediction"] is not None


def test_a_category_past_its_limit_gets_a_422_naming_the_field_and_nothing_is_logged(
    client: tuple[TestClient, Service],
) -> None:
    http, service = client
    good = records(make_table(1, seed=5))[0]
    vocabulary = service.require().scorer.predictor.preprocessor.vocabularies[0]
    limit = max(64, 4 * max(map(len, vocabulary)))
    at_limit = http.post("/predict", json={"records": [{**good, "contract": "x" * limit}]})
    assert at_limit.status_code == 200  # an unseen category of allowed length: answered
    before = service.log.health()["answered_rows"]
    answer = http.post("/predict", json={"records": [good, {**good, "contract": "x" * 5_000}]})
    assert answer.status_code == 422
    assert "records.1.contract" in answer.json()["detail"]
    assert f"at most {limit} characters" in answer.json()["detail"]
    assert "xxxx" not in answer.text  # the value is not echoed back
    assert service.log.health()["answered_rows"] == before  # nothing of it logged


def test_no_redirect_is_built_from_the_host_a_client_sends_and_model_shows_no_paths(
    client: tuple[TestClient, Service],
) -> None:
    http, service = client
    for path in ("/predict/", "/healthz/", "/model/"):
        answer = http.request("GET" if path != "/predict/" else "POST", path, json={},
                              headers={"Host": "evil.example"}, follow_redirects=False)  # fmt: skip
        assert answer.status_code == 404, (path, answer.status_code)
        assert "location" not in answer.headers
    info = http.get("/model").json()
    assert service.home not in json.dumps(info)


def test_a_bare_list_of_records_is_taken_too(client: tuple[TestClient, Service]) -> None:
    http, _ = client
    answer = http.post("/predict", json=records(make_table(3, seed=6)))
    assert answer.status_code == 200
    assert len(answer.json()["predictions"]) == 3


def test_feedback_stores_known_ids_lists_unknown_ones_and_refuses_an_id_given_twice(
    client: tuple[TestClient, Service],
) -> None:
    http, service = client
    answers = http.post("/predict", json={"records": records(make_table(2, seed=7))}).json()
    rid, other = (p["request_id"] for p in answers["predictions"])
    lost = "f" * 32
    unknown = http.post("/feedback", json={"labels": [{"request_id": lost, "y": 1}]})
    assert unknown.status_code == 404  # nothing known: nothing stored
    assert "labels.0.request_id" in unknown.json()["detail"]
    for label in ["1", 1.5, True, 7]:
        wrong = http.post("/feedback", json={"labels": [{"request_id": rid, "y": label}]})
        assert wrong.status_code == 422, label
        assert "labels.0" in wrong.json()["detail"]
    twice = http.post("/feedback", json={"labels": [{"request_id": rid, "y": 1},
                                                    {"request_id": rid, "y": 0}]})  # fmt: skip
    assert twice.status_code == 422
    assert [e["field"] for e in twice.json()["errors"]] == ["labels.0.request_id",
                                                           "labels.1.request_id"]  # fmt: skip
    assert "more than once" in twice.json()["detail"]
    mixed = http.post("/feedback", json={"labels": [{"request_id": rid, "y": 1},
                                                    {"request_id": lost, "y": 0},
                                                    {"request_id": other, "y": 0}]})  # fmt: skip
    assert mixed.status_code == 200
    assert mixed.json() == {"model": MODEL, "accepted": 2, "unknown": [lost]}
    service.log.flush()
    stored = traffic.read(home=service.home, model=MODEL, kind="feedback")
    assert stored is not None
    assert sorted(stored["request_id"].to_pylist()) == sorted([rid, other])  # the known two


ARROW = {"Content-Type": "application/vnd.apache.arrow.stream",
         "Accept": "application/vnd.apache.arrow.stream"}  # fmt: skip


def arrow_body(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def test_arrow_requests_get_the_answers_json_gets_and_are_logged_alike(
    client: tuple[TestClient, Service],
) -> None:
    http, service = client
    table = make_table(40, seed=61)
    as_json = http.post("/predict", json={"records": records(table)})
    as_arrow = http.post("/predict", content=arrow_body(table.select(FEATURES.all)),
                         headers=ARROW)  # fmt: skip
    assert as_arrow.status_code == 200, as_arrow.text
    assert as_arrow.headers["content-type"] == ARROW["Accept"]
    assert as_arrow.headers["X-Model-Version"] == as_json.headers["X-Model-Version"]
    answers = pa.ipc.open_stream(as_arrow.content).read_all()
    assert answers.column_names == ["request_id", "prediction", "probability_0", "probability_1"]
    expected = as_json.json()["predictions"]
    assert answers["prediction"].to_pylist() == [p["prediction"] for p in expected]
    assert np.allclose(answers["probability_1"].to_numpy(),
                       [p["probabilities"]["1"] for p in expected])  # fmt: skip
    ids = answers["request_id"].to_pylist()
    assert len(set(ids)) == 40
    assert not set(ids) & {p["request_id"] for p in expected}
    # JSON in, Arrow out (and the other way) work too; labels go back as Arrow
    mixed = http.post(
        "/predict", json={"records": records(table)}, headers={"Accept": ARROW["Accept"]}
    )
    assert pa.ipc.open_stream(mixed.content).read_all().num_rows == 40
    labels = pa.table({"request_id": [*ids[:30], "f" * 32], "y": table["y"].to_pylist()[:31]})
    stored = http.post("/feedback", content=arrow_body(labels), headers=ARROW)
    assert stored.status_code == 200, stored.text
    assert stored.json() == {"model": MODEL, "accepted": 30, "unknown": ["f" * 32]}
    service.log.flush()
    logged = traffic.answered(home=service.home, model=MODEL, columns=["request_id"])
    assert logged is not None
    assert set(ids) <= set(logged["request_id"].to_pylist())  # every Arrow answer is logged


def test_bad_arrow_requests_get_a_422_naming_the_field(
    client: tuple[TestClient, Service],
) -> None:
    http, _ = client
    good = make_table(3, seed=62).select(FEATURES.all)
    nan = good.set_column(1, "charges", pa.array([1.0, float("nan"), 2.0]))
    cases = {
        "unknown": (good.append_column("colour", pa.array(["r", "g", "b"])), "records.colour"),
        "missing": (good.drop_columns(["tenure"]), "records.tenure"),
        "text in a number": (good.set_column(0, "tenure", pa.array(["a", "b", "c"])),
                             "records.tenure"),
        "NaN": (nan, "records.1.charges"),
        "too long": (good.set_column(2, "contract", pa.array(["x" * 500, "m", "y"])),
                     "records.0.contract"),
        "no rows": (good.slice(0, 0), "records"),
    }  # fmt: skip
    for what, (table, named) in cases.items():
        refused = http.post("/predict", content=arrow_body(table), headers=ARROW)
        assert refused.status_code == 422, what
        assert refused.json()["errors"][0]["field"] == named, (what, refused.json())
    broken = http.post("/predict", content=b"not arrow at all", headers=ARROW)
    assert broken.status_code == 422
    assert broken.json()["detail"].startswith("body: not an Arrow IPC stream")


def test_without_a_champion_healthz_answers_503_with_the_reason(models: Models) -> None:
    service = Service(home=models.home, model="nothing-here", serving=serving())
    service.load(None)
    http = TestClient(make_api(service))
    answer = http.get("/healthz")
    assert answer.status_code == 503
    assert "no champion" in answer.json()["reason"]
    assert http.post("/predict", json={"records": [{}]}).status_code == 503
    service.close()


def test_int8_predictions_agree_with_float32_on_a_holdout_within_the_tolerance(
    models: Models,
) -> None:
    predictor = models.predictor(models.versions[0])
    holdout = make_table(2_000, seed=11)
    scorer = Scorer.of(predictor, version=1)
    plain = scorer.score(holdout)
    np.testing.assert_allclose(plain, predictor.predict(holdout), atol=1e-6)
    # the request path's numpy encoding equals Preprocessor.transform's, nulls and unknowns too
    odd = holdout.slice(0, 50).to_pydict()
    odd["charges"][:3] = [None, None, None]
    odd["contract"][3:6] = ["weekly", None, "monthly"]
    columns = {
        k: [_as_category(v) for v in vals] if k in FEATURES.categorical else vals
        for k, vals in odd.items()
    }
    np.testing.assert_allclose(
        scorer.score_columns(columns), predictor.predict(pa.table(odd)), atol=1e-6
    )
    int8 = Scorer.of(models.predictor(models.versions[0]), version=1, quantize=True)
    assert int8.quantize
    assert np.abs(int8.score(holdout) - plain).max() <= INT8_TOLERANCE


def _as_category(value: Any) -> Any:
    """What the request schema makes of a JSON value for a categorical feature."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def answered(n: int, start: int = 0, *, prefix: str = "r") -> Answered:
    return Answered(
        request_ids=[f"{prefix}{start + i}" for i in range(n)],
        version=1,
        features={"x": [1.0] * n},
        types={"x": pa.float64()},
        predictions=[0] * n,
        prediction_type=pa.int64(),
        probabilities={"0": np.ones(n), "1": np.zeros(n)},
        latency_ms=1.0,
    )


def logged(home: Path) -> list[str]:
    table = traffic.read(home=str(home), model=MODEL, kind="predictions", columns=["request_id"])
    return [] if table is None else table["request_id"].to_pylist()


def test_an_answer_is_in_the_spool_before_add_returns_and_becomes_parquet_by_rows_time_and_close(
    tmp_path: Path,
) -> None:
    log = PredictionLog(home=str(tmp_path), model=MODEL,
                        serving=serving(log_flush_rows=10, log_flush_seconds=0.3))  # fmt: skip
    log.add(answered(12, 0))  # past log_flush_rows: converted soon, without waiting for the timer
    on_disk = [
        line for path in traffic.segments(log.folder) for line in path.read_bytes().splitlines()
    ]
    assert any(b'"r11"' in line for line in on_disk)  # held by the OS before add returned
    deadline = time.monotonic() + 5
    while len(logged(tmp_path)) < 12 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(logged(tmp_path)) == 12
    log.add(answered(3, 100))  # below log_flush_rows: the timer converts it
    time.sleep(1.5)
    assert len(logged(tmp_path)) == 15
    log.add(answered(2, 200))
    log.close()  # and what is left on close
    table = traffic.read(home=str(tmp_path), model=MODEL, kind="predictions")
    assert table is not None
    assert sorted(table["request_id"].to_pylist()) == sorted(
        [f"r{i}" for i in [*range(12), 100, 101, 102, 200, 201]]
    )
    assert {"x", "prediction", "probability_0", "probability_1", "latency_ms"} <= set(
        table.column_names
    )
    assert traffic.segments(log.folder) == []  # every segment converted and removed
    assert log.health()["answered_rows"] == log.health()["converted_rows"] == 17


def test_a_segment_converted_twice_or_cut_mid_line_logs_each_answered_row_once(
    tmp_path: Path,
) -> None:
    spool = traffic.Spool(traffic.spool_folder(str(tmp_path), MODEL))
    spool.append(answered(5))
    path = spool.path
    assert path is not None
    spool.close()
    with path.open("ab") as handle:
        handle.write(answered(1, 99).encode()[:40])  # a write the kill cut short: never answered
    for _ in range(2):  # a converter that died after writing Parquet, before removing the segment
        assert traffic.convert(path, home=str(tmp_path), model=MODEL) == 5
    assert sorted(logged(tmp_path)) == [f"r{i}" for i in range(5)]


KILLED = """
import os, sys
import numpy as np, pyarrow as pa
from tasks.serve.log import Answered, PredictionLog
from tasks.settings import ServingConfig

log = PredictionLog(home=sys.argv[1], model="m", serving=ServingConfig(log_flush_seconds=600))
for i in range(50):
    log.add(Answered(request_ids=[f"k{i}"], version=1, features={"x": [1.0]},
                     types={"x": pa.float64()}, predictions=[0], prediction_type=pa.int64(),
                     probabilities=None, latency_ms=1.0))
    print(f"k{i}", flush=True)  # the answer left
os.kill(os.getpid(), 9)
"""


def test_a_writer_killed_outright_loses_no_answered_row_and_the_next_one_adopts_its_segment(
    tmp_path: Path,
) -> None:
    done = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path)], capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == -9, done.stderr
    answered_ids = done.stdout.split()
    assert len(answered_ids) == 50
    assert logged(tmp_path) == []  # nothing was converted before the kill
    survivor = PredictionLog(home=str(tmp_path), model="m", serving=serving())
    survivor.flush()  # adopts what the dead replica left
    table = traffic.read(home=str(tmp_path), model="m", kind="predictions", columns=["request_id"])
    assert table is not None
    assert sorted(table["request_id"].to_pylist()) == sorted(answered_ids)
    survivor.close()


def test_an_answered_id_stays_known_while_its_segment_is_being_converted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Feedback right after a prediction must find its id: not in the open segment any more,
    not yet in Parquet is the window in which it once answered 404 (a slow disk stands in for
    a busy machine)."""
    writing, release = threading.Event(), threading.Event()
    write = traffic.write_day_file

    def slow_write(*args: Any, **kwargs: Any) -> str:
        writing.set()
        release.wait(timeout=10)
        return write(*args, **kwargs)

    monkeypatch.setattr("tasks.traffic.spool.write_day_file", slow_write)
    log = PredictionLog(home=str(tmp_path), model=MODEL, serving=serving(log_flush_seconds=600))
    log.add(answered(3))
    ids = {"r0", "r1", "r2"}
    flusher = threading.Thread(target=log.flush)
    flusher.start()
    assert writing.wait(timeout=10)
    assert log.pending_ids() == ids  # the segment is closed, its Parquet file not in place yet
    release.set()
    flusher.join(timeout=10)
    assert log.pending_ids() == set()
    assert set(logged(tmp_path)) == ids
    log.close()


# Real Ray Serve over HTTP on 127.0.0.1 -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Served:
    args: ServeArgs
    models: Models
    url: str
    answered: list[str] = field(default_factory=list)  # every request id answered with a 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": KEY}, timeout=30, **kwargs)

    def predict(self, http: httpx.Client, rows: list[dict[str, Any]]) -> httpx.Response:
        answer = http.post("/predict", json={"records": rows})
        if answer.status_code == 200:
            with self.lock:
                self.answered.extend(p["request_id"] for p in answer.json()["predictions"])
        return answer


@pytest.fixture(scope="module")
def served(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from ray import serve

    models = make_home(tmp_path_factory.mktemp("served-home"))
    port = free_port()
    args = ServeArgs(home=models.home, model=MODEL, serving=serving(port=port, api_key=KEY))
    status = control.start(args)
    assert status.running, status
    assert status.version == models.versions[0], status
    yield Served(args=args, models=models, url=status.url)
    serve.shutdown()


def replica_actors() -> set[str]:
    import ray

    names = ray.util.list_named_actors(all_namespaces=True)
    return {a["name"] for a in names if f"{APP_NAME}#{DEPLOYMENT}" in a["name"]}


@pytest.mark.integration
def test_predictions_over_http_equal_the_models_in_process_predictions(served: Served) -> None:
    table = make_table(40, seed=21)
    expected = served.models.predictor(served.models.versions[0]).predict(table)
    with served.client() as http:
        answer = served.predict(http, records(table))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert answer.headers["X-Model-Version"] == str(body["version"])
        assert body["version"] == served.models.versions[0]
        got = np.array(
            [[p["probabilities"]["0"], p["probabilities"]["1"]] for p in body["predictions"]]
        )
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert [p["prediction"] for p in body["predictions"]] == expected.argmax(1).tolist()
        ids = [p["request_id"] for p in body["predictions"]]
        assert len(set(ids)) == 40
        assert http.get("/healthz").json()["version"] == served.models.versions[0]
        info = http.get("/model").json()
        assert info["features"] == {
            "numeric": FEATURES.numeric,
            "categorical": FEATURES.categorical,
        }
        shown = info["metadata"]
        assert shown["metrics"] == {"roc_auc": 0.51}
        assert shown["created_at"]
        assert not {"path", "flow_run_id", "params", "seed", "files"} & set(shown)  # no places
        assert served.models.home not in json.dumps(info)


@pytest.mark.integration
def test_the_client_counts_answers_versions_and_failures_instead_of_raising(
    served: Served,
) -> None:
    table = make_table(30, seed=23)
    with Client(served.args.serving) as api:  # the configured API key goes with every request
        ids = api.predict(records(table))
        served.answered.extend(ids)  # the module's log test counts every answer
        assert len(set(ids)) == 30
        assert (api.seen.answered, api.seen.failed) == (1, 0)
        assert api.seen.versions == {served.models.versions[0]}
        assert api.wait_for_version(served.models.versions[0], timeout_s=5)
        assert not api.wait_for_version(999, timeout_s=1)
        assert api.predict([{"no_such_feature": 1}]) == []  # a 4xx: counted, not raised
        assert (api.seen.answered, api.seen.failed) == (1, 1)
        answers = api.predict_table(table.select(FEATURES.all))  # Arrow IPC both ways
        assert answers is not None
        assert answers.num_rows == 30
        served.answered.extend(answers["request_id"].to_pylist())
        assert (api.seen.answered, api.seen.failed) == (2, 1)
        assert api.predict_table(table.select(["tenure"])) is None  # a 422: counted
        assert (api.seen.answered, api.seen.failed) == (2, 2)
        # unknown ids are listed (a batch of nothing but them is a failed request, counted)
        assert api.feedback(["no-such-request"], [1]) == ["no-such-request"]
        assert (api.seen.answered, api.seen.failed) == (2, 3)
    keyless = served.args.serving.model_copy(update={"api_key": None})
    with Client(keyless) as api:
        assert api.predict(records(table)) == []  # 401
    nobody = served.args.serving.model_copy(update={"port": free_port()})
    with Client(nobody, timeout_s=2) as api:
        assert api.predict(records(table)) == []  # nothing listens: counted
        assert (api.seen.answered, api.seen.failed) == (0, 1)


@pytest.mark.integration
def test_a_swap_under_load_fails_no_request_and_each_client_sees_each_switch_once(
    served: Served,
) -> None:
    first, second = served.models.versions
    stop = threading.Event()
    seen: list[list[int]] = [[] for _ in range(4)]
    failures: list[str] = []
    rows = records(make_table(1, seed=31))

    def loop(k: int) -> None:
        with served.client() as http:
            for _ in range(20_000):  # bounded in count, and in time below
                if stop.is_set():
                    return
                try:
                    answer = served.predict(http, rows)
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if answer.status_code != 200:
                    failures.append(f"{answer.status_code} {answer.text}")
                else:
                    seen[k].append(answer.json()["version"])

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        assert control.swap(served.args, version=second).version == second
        time.sleep(1.0)
        assert control.swap(served.args, version=first).version == first
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert failures == []
    for versions in seen:
        switches = [v for i, v in enumerate(versions) if i == 0 or v != versions[i - 1]]
        assert switches == [first, second, first], switches[:10]


def malformed() -> st.SearchStrategy[tuple[str, bytes, str]]:
    """(path, body, the field the message must name) for requests that are always wrong."""
    number = st.floats(allow_nan=False, allow_infinity=False, width=32) | st.integers(-999, 999)
    text = st.text(max_size=8)
    record = st.fixed_dictionaries(
        {"tenure": number, "charges": number, "contract": text, "has_partner": st.booleans()}
    )
    not_a_number: st.SearchStrategy[Any] = (
        text | st.booleans() | st.lists(st.integers(), max_size=2) | st.just({})
    )
    not_a_text = (
        st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not float(f).is_integer())
        | st.lists(text, max_size=2)
        | st.just({"a": 1})
    )

    def body(rows: Any) -> bytes:
        return json.dumps({"records": rows}).encode()

    def drop(r: dict[str, Any], key: str) -> tuple[str, bytes, str]:
        return "/predict", body([{k: v for k, v in r.items() if k != key}]), f"records.0.{key}"

    missing = record.flatmap(lambda r: st.sampled_from(sorted(r)).map(lambda k: drop(r, k)))
    unknown = st.tuples(
        record, st.text(min_size=1, max_size=12).filter(lambda k: k not in FEATURES.all)
    ).map(lambda p: ("/predict", body([{**p[0], p[1]: 1}]), "records.0."))
    bad_number = st.tuples(record, st.sampled_from(FEATURES.numeric), not_a_number).map(
        lambda p: ("/predict", body([{**p[0], p[1]: p[2]}]), f"records.0.{p[1]}")
    )
    bad_text = st.tuples(record, st.sampled_from(FEATURES.categorical), not_a_text).map(
        lambda p: ("/predict", body([{**p[0], p[1]: p[2]}]), f"records.0.{p[1]}")
    )
    non_finite = st.tuples(
        record,
        st.sampled_from(FEATURES.numeric),
        st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"]),
    ).map(
        lambda p: (
            "/predict",
            body([{**p[0], p[1]: "@"}]).replace(b'"@"', p[2].encode()),
            f"records.0.{p[1]}",
        )
    )
    empty = st.sampled_from([b'{"records": []}', b"[]"]).map(lambda b: ("/predict", b, "records"))
    too_many = st.tuples(record, st.integers(MAX_RECORDS + 1, MAX_RECORDS + 30)).map(
        lambda p: ("/predict", body([p[0]] * p[1]), "records")
    )
    shape = st.sampled_from([b'{"rows": []}', b"1", b'"x"', b'{"records": {}}', b"null"]).map(
        lambda b: ("/predict", b, "")
    )
    garbage = st.binary(max_size=64).map(lambda b: ("/predict", b, ""))
    oversized = st.integers(MAX_BODY + 1, MAX_BODY + 2_000).map(
        lambda n: ("/predict", b" " * n, "body")
    )
    unknown_id = st.text(min_size=1, max_size=40).map(
        lambda rid: (
            "/feedback",
            json.dumps({"labels": [{"request_id": rid, "y": 1}]}).encode(),
            "labels.0.request_id",
        )
    )
    bad_label = st.one_of(text, st.floats(), st.booleans(), st.integers(2, 99)).map(
        lambda y: (
            "/feedback",
            json.dumps({"labels": [{"request_id": "x", "y": y}]}).encode(),
            "labels.0",
        )
    )
    return st.one_of(
        missing,
        unknown,
        bad_number,
        bad_text,
        non_finite,
        empty,
        too_many,
        shape,
        garbage,
        oversized,
        unknown_id,
        bad_label,
    )


@pytest.mark.integration
def test_a_thousand_malformed_requests_get_4xx_naming_the_field_and_no_replica_restarts(
    served: Served,
) -> None:
    before = replica_actors()
    assert before
    counted: list[int] = []
    with served.client() as http:

        @settings(
            max_examples=1_000,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(malformed())
        def check(case: tuple[str, bytes, str]) -> None:
            path, body, named = case
            answer = http.post(path, content=body, headers={"Content-Type": "application/json"})
            counted.append(answer.status_code)
            assert 400 <= answer.status_code < 500, (path, body[:200], answer.text)
            assert named in answer.json()["detail"], (body[:200], answer.json())

        check()
        assert http.get("/healthz").status_code == 200
    assert len(counted) >= 1_000
    assert replica_actors() == before


@pytest.mark.integration
def test_requests_without_or_with_a_wrong_api_key_get_401(served: Served) -> None:
    rows = {"records": records(make_table(1, seed=41))}
    with httpx.Client(base_url=served.url, timeout=30) as http:
        assert http.post("/predict", json=rows).status_code == 401
        wrong = http.post("/predict", json=rows, headers={"X-API-Key": KEY[:-1] + "x"})
        assert wrong.status_code == 401
        assert KEY not in wrong.text
        assert http.get("/model").status_code == 401
        assert http.get("/healthz").status_code == 200  # probes need no key


@pytest.mark.integration
def test_every_answer_reaches_the_log_across_swaps_and_a_graceful_shutdown_and_feedback_joins(
    served: Served,
) -> None:
    rows = records(make_table(5, seed=51))

    def burst(_: int) -> None:
        with served.client() as http:
            for _ in range(25):
                assert served.predict(http, rows).status_code == 200

    threads = [threading.Thread(target=burst, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    labelled = served.answered[-100:]
    with served.client() as http:
        answer = http.post(
            "/feedback", json={"labels": [{"request_id": r, "y": 1} for r in labelled]}
        )
        assert answer.status_code == 200, answer.text
    assert control.stop()  # graceful: the replica's __del__ flushes what it buffered
    home = served.args.home
    folder = Path(traffic.location(home=home, model=MODEL, kind="predictions"))
    parts = sorted(folder.rglob("*.parquet"))
    assert parts
    assert all(pq.read_table(p).num_rows > 0 for p in parts)
    logged = traffic.read(home=home, model=MODEL, kind="predictions")
    assert logged is not None
    ids = logged["request_id"].to_pylist()
    assert len(ids) == len(served.answered) == len(set(ids))
    assert set(ids) == set(served.answered)
    assert set(logged["model_version"].to_pylist()) == set(served.models.versions)
    joined = traffic.labelled(home=home, model=MODEL, target="y", limit=10_000)
    assert joined is not None
    assert set(joined["request_id"].to_pylist()) == set(labelled)


class SlowNetwork(torch.nn.Module):
    """A model that takes 1 s per call: a replica with one request in flight is full."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        time.sleep(1.0)
        out: torch.Tensor = self.inner(numeric, categorical)
        return out


def slow_loader(*, home: str, model: str, version: int) -> tuple[Predictor, dict[str, Any]]:
    predictor, meta = load_version(home=home, model=model, version=version)
    slow = Predictor(
        model=SlowNetwork(predictor.model),  # type: ignore[arg-type]
        spec=predictor.spec,
        preprocessor=predictor.preprocessor,
    )
    return slow, meta


@pytest.mark.integration
def test_excess_load_gets_a_fast_503_with_retry_after_not_a_pile_up(
    served: Served, tmp_path: Path
) -> None:
    from ray import cloudpickle, serve

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the replica loads slow_loader
    models = make_home(tmp_path)
    config = serving(
        port=served.args.serving.port,
        max_ongoing_requests=1,
        max_queued_requests=1,
        retry_after_s=2,
    )
    args = ServeArgs(home=models.home, model=MODEL, serving=config)
    serve.run(
        bind_app(args, version=models.versions[0], loader=slow_loader),
        name="busy",
        route_prefix="/busy",
    )
    results: list[tuple[int, float, str | None]] = []
    rows = {"records": records(make_table(1, seed=61))}

    def one() -> None:
        started = time.monotonic()
        answer = httpx.post(f"{served.url}/busy/predict", json=rows, timeout=60)
        results.append(
            (answer.status_code, time.monotonic() - started, answer.headers.get("Retry-After"))
        )

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    serve.delete("busy")
    refused = [r for r in results if r[0] == 503]
    assert refused, results
    assert {r[0] for r in results} <= {200, 503}
    # refused at once (under one model call), where a pile-up would wait for the calls ahead
    assert all(r[2] == "2" and r[1] < 1.0 for r in refused), refused


@pytest.mark.integration
def test_a_replica_killed_outright_loses_no_answered_row(served: Served, tmp_path: Path) -> None:
    import os
    import signal

    from ray import serve
    from ray.util.state import list_actors

    models = make_home(tmp_path)
    config = serving(port=served.args.serving.port, log_flush_seconds=600)  # nothing converted
    args = ServeArgs(home=models.home, model=MODEL, serving=config)
    serve.run(
        bind_app(args, version=models.versions[0], loader=load_version),
        name="kill",
        route_prefix="/kill",
    )
    answered: list[tuple[float, str]] = []
    stop = threading.Event()
    rows = {"records": records(make_table(1, seed=71))}

    def loop() -> None:
        with httpx.Client(base_url=f"{served.url}/kill", timeout=10) as http:
            for _ in range(20_000):
                if stop.is_set():
                    return
                try:
                    answer = http.post("/predict", json=rows)
                except httpx.HTTPError:
                    continue
                if answer.status_code == 200:
                    answered.append(
                        (time.monotonic(), answer.json()["predictions"][0]["request_id"])
                    )

    thread = threading.Thread(target=loop)
    thread.start()
    time.sleep(2.5)
    [replica] = [
        a for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=1000)
        if a.name and "kill#" in a.name and DEPLOYMENT in a.name
    ]  # fmt: skip
    killed_at = time.monotonic()
    assert replica.pid is not None
    os.kill(replica.pid, signal.SIGKILL)
    time.sleep(1.0)
    stop.set()
    thread.join(timeout=60)
    serve.delete("kill")
    traffic.convert_closed(home=models.home, model=MODEL)  # the dead replica's segments: adopted
    logged = traffic.read(home=models.home, model=MODEL, kind="predictions", columns=["request_id"])
    assert logged is not None
    ids = logged["request_id"].to_pylist()
    before = {rid for t, rid in answered if t < killed_at}
    print(f"kill: {len(before)} answered before the kill, {len(answered)} in all, "
          f"{len(ids)} logged")  # fmt: skip
    assert len(before) > 50
    assert {rid for _, rid in answered} <= set(ids)  # every answered id, exactly
    assert len(ids) == len(set(ids))  # and once


@pytest.mark.integration
def test_the_docs_page_renders_offline_from_files_the_app_serves(
    served: Served, tmp_path: Path
) -> None:
    from playwright.sync_api import Route, sync_playwright
    from ray import serve

    chromium = find_chromium()
    models = make_home(tmp_path)
    args = ServeArgs(home=models.home, model=MODEL, serving=serving(port=served.args.serving.port))
    serve.run(bind_app(args, version=models.versions[0], loader=load_version), name="docs",
              route_prefix="/d")  # fmt: skip
    outside: list[str] = []

    def only_this_app(route: Route) -> None:
        if route.request.url.startswith(served.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.route("**/*", only_this_app)
        page.set_default_timeout(30_000)
        try:
            page.goto(f"{served.url}/d/docs")
            page.locator(".opblock-summary-path", has_text="/predict").first.wait_for()
            page.locator(".opblock-summary-path", has_text="/feedback").first.wait_for()
        finally:
            browser.close()
            serve.delete("docs")
    assert outside == []  # nothing fetched from anywhere else: no CDN


def flaky_loader(*, home: str, model: str, version: int) -> tuple[Predictor, dict[str, Any]]:
    """Loads as Serve's replicas do, except that the first replica to load each version fails
    (a marker file per version remembers it): a disk that hiccups once."""
    import os

    from ray import serve

    try:
        serve.get_replica_context()
    except Exception:  # not in a replica: the driver's check before a swap
        return load_version(home=home, model=model, version=version)
    marker = Path(home) / f"failed-once-v{version}"
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return load_version(home=home, model=model, version=version)
    raise OSError(f"v{version}: a read that failed once")


@pytest.mark.integration
@pytest.mark.parametrize(
    ("app", "replicas"), [("two", {"replicas": 2}), ("auto", {"replicas": 1, "max_replicas": 2})]
)
def test_a_replica_whose_model_fails_to_load_is_replaced_and_a_swap_reaches_every_replica(
    served: Served, tmp_path: Path, app: str, replicas: dict[str, int]
) -> None:
    from ray import cloudpickle, serve

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the replicas load flaky_loader
    models = make_home(tmp_path)
    first, second = models.versions
    config = serving(port=served.args.serving.port, target_ongoing_requests=1, **replicas)
    args = ServeArgs(home=models.home, model=MODEL, serving=config)
    serve.run(bind_app(args, version=first, loader=flaky_loader), name=app, route_prefix=f"/{app}")
    assert (Path(models.home) / f"failed-once-v{first}").exists()  # one replica failed to load
    base = f"{served.url}/{app}"
    running = control.running_replicas(app)
    control.confirm_everywhere(base, plan=Plan(version=first), replicas=running)
    stop, failures, versions = threading.Event(), [], []
    rows = {"records": records(make_table(1, seed=41))}

    def loop() -> None:
        with httpx.Client(base_url=base, timeout=30) as http:
            while not stop.is_set():
                try:
                    answer = http.post("/predict", json=rows)
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if answer.status_code != 200:
                    failures.append(f"{answer.status_code} {answer.text[:200]}")
                else:
                    versions.append(answer.json()["version"])

    clients = [threading.Thread(target=loop) for _ in range(3)]
    for t in clients:
        t.start()
    try:
        time.sleep(1.0)
        control.swap(args, version=second, loader=flaky_loader, app=app, route_prefix=f"/{app}")
        swapped = len(versions)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in clients:
            t.join(timeout=60)
        serve.delete(app)
    assert (Path(models.home) / f"failed-once-v{second}").exists()  # a replica failed again
    assert failures == []  # no 503 for the replica that could not load
    assert set(versions[swapped:]) == {second}, versions[swapped:][:20]  # every replica: v2
    assert len(versions) > swapped > 0


# The Serve config files -------------------------------------------------------------------------

INFRA = Path(__file__).parents[1] / "infra"


def test_the_serve_config_builds_this_app_on_loopback_with_args_serve_args_accepts() -> None:
    import importlib

    import yaml

    config = yaml.safe_load((INFRA / "serve" / "driftloop.yaml").read_text())
    assert config["http_options"]["host"] == "127.0.0.1"  # a config file's default is 0.0.0.0
    [app] = config["applications"]
    module, name = app["import_path"].split(":")
    assert getattr(importlib.import_module(module), name) is build_app
    args = ServeArgs.model_validate(app["args"])
    assert args.serving.host == "127.0.0.1"
    assert Path(args.home).is_absolute()  # replicas run elsewhere: made absolute at validation


def test_the_ray_service_manifest_serves_the_same_app_with_token_auth() -> None:
    import yaml

    manifest = yaml.safe_load((INFRA / "ray-service.driftloop.yaml").read_text())
    assert manifest["kind"] == "RayService"
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    [app] = serve_config["applications"]
    assert app["import_path"] == "tasks.serve:build_app"
    ServeArgs.model_validate(app["args"])
    head = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    env = {e["name"]: e for e in head["containers"][0]["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert "value" not in env["RAY_AUTH_TOKEN"]


def test_equal_args_give_one_code_version_so_a_swap_reconfigures_in_place(models: Models) -> None:
    from tasks.serve.app import actor_options, code_version

    args = ServeArgs(home=models.home, model=MODEL, serving=serving())
    same = ServeArgs(home=models.home, model=MODEL, ref="2", serving=serving())
    other = ServeArgs(home=models.home, model=MODEL, serving=serving(max_records=7))
    assert code_version(args, load_version) == code_version(same, load_version)
    assert code_version(args, load_version) != code_version(other, load_version)
    assert actor_options(serving())["num_cpus"] == 1
    assert "num_gpus" not in actor_options(serving())
    assert actor_options(serving(num_gpus=1))["num_gpus"] == 1


# The CLI on the local stack: up serves the champion, deploy swaps it, down flushes the log -------


@pytest.mark.integration
def test_up_serves_the_champion_deploy_swaps_it_status_shows_it_and_down_flushes_the_log(
    tmp_path: Path,
) -> None:
    import os
    import subprocess

    driftloop = str(Path(sys.executable).parent / "driftloop")
    home = tmp_path / "home"
    models = make_home(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_")}
    port = free_port()
    env |= {
        "DRIFTLOOP_HOME": str(home),
        "DRIFTLOOP_SERVING__PORT": str(port),
        "DRIFTLOOP_STACK__PREFECT_PORT": str(free_port()),
        "DRIFTLOOP_STACK__RAY_PORT": str(free_port()),
        "DRIFTLOOP_STACK__DASHBOARD_PORT": str(free_port()),
        "DRIFTLOOP_STACK__RUNNER_PORT": str(free_port()),
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [driftloop, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    run("init", "--rows", "500")
    try:
        started = run("up", "--json")
        up = json.loads(started.stdout)
        assert "Application 'driftloop'" not in started.stderr  # Serve's logs go to files
        assert up["serving"]["version"] == models.versions[0]
        url = up["serving"]["url"]
        assert url == f"http://127.0.0.1:{port}"
        rows = {"records": records(make_table(3, seed=81))}
        first = httpx.post(f"{url}/predict", json=rows, timeout=30).json()
        assert first["version"] == models.versions[0]
        swapped = run("deploy", "--version", str(models.versions[1]))
        assert f"serving: {url} v{models.versions[1]}" in swapped.stdout
        second = httpx.post(f"{url}/predict", json=rows, timeout=30).json()
        assert second["version"] == models.versions[1]
        shown = json.loads(run("status", "--json").stdout)
        assert shown["serving"] == {
            "url": url,
            "running": True,
            "version": models.versions[1],
            "reason": None,
        }
        assert shown["champion"] == {"model": MODEL, "version": models.versions[1]}
        listed = json.loads(run("models", "--json").stdout)
        assert [v["version"] for v in listed["versions"]] == models.versions
    finally:
        down = run("down")
    assert "serve" in down.stdout
    answered = {p["request_id"] for p in first["predictions"] + second["predictions"]}
    logged = traffic.read(home=str(home), model=MODEL, kind="predictions")
    assert logged is not None
    assert set(logged["request_id"].to_pylist()) == answered
    assert any((home / "logs" / "serve").glob("replica_*.log"))
