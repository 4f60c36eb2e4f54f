"""Retraining: the flow on real Ray (fresh source + labelled traffic, the same gate, the trigger in
the new version's metadata, a redelivered event ignored), and the whole loop on a real local stack:
a `driftloop.retrain.requested` event makes the deployment's trigger start a retraining run by
itself, executed by `python -m flows.deployments` (prefect.serve)."""

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import (
    NOW,
    TERMINAL,
    api,
    free_port,
    register_champion,
    runs_of,
    serve,
    train_quick,
    wait_for,
)
from sklearn.metrics import roc_auc_score

from tasks import files, registry, stack, synthetic
from tasks.model import load_model
from tasks.monitor import requests

pytestmark = pytest.mark.integration
REPO = Path(__file__).parents[1]


def project(root: Path, *, workers: int = 2) -> Path:
    """A project whose source never changes: the old world's rows, which v1 learned from. The
    world then moved (the generator's concept drift): v1 served 3,000 rows of it, and every
    label came back."""
    old = synthetic.generate(rows=10_000, seed=1)
    synthetic.write_parquet(old, root / "data" / "churn.parquet")
    config = root / "driftloop.yaml"
    config.write_text(
        f"home: {root / 'home'}\n"
        "dataset:\n  name: churn\n  source: data/churn.parquet\n  target: churned\n"
        "  id: customer_id\n  timestamp: event_time\n"
        f"training:\n  epochs: 3\n  batch_size: 256\n  num_workers: {workers}\n"
        "  min_steps: 300\n"
        "gate:\n  max_calibration_error: 0.1\n"
        "retraining:\n  feedback_days: 100000\n"  # the test traffic is stamped in 2026-06
    )
    predictor = train_quick(old.slice(0, 8_000), steps=200)
    register_champion(
        root / "home", predictor, holdout=old.slice(8_000), reference=old.slice(0, 8_000), tmp=root
    )
    served = synthetic.generate(rows=3_000, seed=8, scenario="concept_drift")
    serve(root / "home", predictor, served, version=1, at=NOW, labelled=1.0)
    return config


def roc_auc(version: int, *, home: str, rows: pa.Table) -> float:
    predictor = load_model(registry.resolve(root=home, model="churn", ref=version))
    probs = predictor.predict(rows)[:, 1]
    return float(roc_auc_score(rows["churned"].to_numpy(), probs))


def test_a_static_source_and_labelled_concept_drift_teach_the_retraining_the_new_world(
    prefect_server: None, ray_local: None, tmp_path: Path
) -> None:
    from flows.retraining import retraining

    config = project(tmp_path)
    home = str(tmp_path / "home")
    source = tmp_path / "data" / "churn.parquet"
    before = hashlib.sha256(source.read_bytes()).hexdigest()
    found = retraining(
        config=str(config),
        event_id="evt-1",
        model="churn",
        request_id="r1",
        reasons=["concept drift: ..."],
        report="/x/drift.html",
    )
    assert hashlib.sha256(source.read_bytes()).hexdigest() == before  # the source is untouched
    assert found["decision"] == "promoted", found["reason"]
    feedback = found["feedback"]
    assert feedback["train_rows"] + feedback["select_rows"] + feedback["gate_rows"] == 3_000
    assert 600 < feedback["gate_rows"] < 1_200
    # on fresh rows of the new world that neither model saw, the retrained champion is far ahead
    fresh = synthetic.generate(rows=5_000, seed=99, scenario="concept_drift")
    new, old = roc_auc(found["version"], home=home, rows=fresh), roc_auc(1, home=home, rows=fresh)
    assert new - old > 0.3, (new, old)
    assert new > 0.7
    meta = registry.get_version(root=home, model="churn", version=found["version"])
    # the recent rows decided, and the old source counted for little
    assert meta["judged_on"]["on"] == "production"
    assert meta["production_rows"] == feedback["gate_rows"]
    assert meta["recency"]["half_life_days"] is not None, meta["recency"]["reason"]
    assert len(meta["recency"]["candidates"]) == 4
    trigger = meta["trigger"]
    assert (trigger["event_id"], trigger["request_id"]) == ("evt-1", "r1")
    assert trigger["reasons"] == ["concept drift: ..."]
    assert trigger["drift_report"] == "/x/drift.html"
    # it remembers which labelled rows it learned from; the gate's were never among them
    version = registry.find(root=home, model="churn", ref=found["version"])
    trained = set(registry.trained_on(version).to_pylist())
    folder = Path(feedback["folder"])
    learned = {*pq.read_table(folder / "train.parquet")["request_id"].to_pylist(),
               *pq.read_table(folder / "select.parquet")["request_id"].to_pylist()}  # fmt: skip
    assert trained == learned
    assert not trained & set(pq.read_table(folder / "gate.parquet")["request_id"].to_pylist())
    # its drift reference is the world it learned: mostly the new rows (no customer id)
    reference = pq.read_table(version.file(files.REFERENCE))
    assert reference["customer_id"].null_count / reference.num_rows > 0.5

    versions = registry.list_versions(root=home, model="churn")
    again = retraining(config=str(config), event_id="evt-1", model="churn", request_id="r1")
    assert again["decision"] == "skipped"
    assert "handled already" in again["reason"]
    other = retraining(config=str(config), event_id="evt-2", model="someone-else")
    assert other["decision"] == "skipped"
    assert registry.list_versions(root=home, model="churn") == versions
    record = requests.read_record(home=home, model="churn", key="r1")
    assert record is not None
    assert (record["status"], record["version"]) == ("promoted", found["version"])


# The loop on a real stack ------------------------------------------------------------------------


EMIT = """
import asyncio, sys, uuid
from prefect.events import Event
from prefect.events.clients import get_events_client
from tasks import events

async def main() -> None:  # the client awaits the send (the worker thread may not flush at exit)
    event = Event(event=events.RETRAIN_REQUESTED, resource=events.resource("churn"),
                  id=uuid.UUID(sys.argv[1]),
                  payload={"request_id": "req-1", "reasons": ["concept drift: ROC-AUC decayed"],
                           "report": "/reports/drift.html"})
    async with get_events_client() as client:
        await client.emit(event)

asyncio.run(main())
"""
# A second delivery of the same event, as an automation firing twice would make it (the server
# stores an event id once, so re-sending the event itself does not show it)
REDELIVER = """
import json, sys
from prefect.deployments import run_deployment
parameters = json.loads(sys.argv[1])
run = run_deployment("retraining/retraining", parameters=parameters, timeout=300)
print(json.dumps({"state": run.state.type.value if run.state else None}))
"""


def test_a_retrain_request_starts_the_retraining_deployment_by_itself_once_per_event(
    tmp_path: Path,
) -> None:
    config = project(tmp_path, workers=1)
    home = tmp_path / "home"
    ports = {"prefect_port": free_port(), "ray_port": free_port(), "dashboard_port": free_port()}
    status = stack.up(home=home, **ports)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PREFECT_API"))}
    env = {**base, **stack.connection_env(home=home)}
    url = status.prefect_api_url
    assert url is not None
    log = (tmp_path / "deployments.log").open("w")
    runner = subprocess.Popen(
        [sys.executable, "-m", "flows.deployments", str(config)],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        retrain = wait_for(
            "the retraining deployment",
            lambda: api(url, "/deployments/name/retraining/retraining"),
            timeout_s=120,
        )
        monitor = api(url, "/deployments/name/drift-monitor/monitor")
        wait_for("its trigger", lambda: api(url, "/automations/filter", {}), timeout_s=30)
        event_id = str(uuid.uuid4())
        subprocess.run(
            [sys.executable, "-c", EMIT, event_id], env=env, cwd=REPO, check=True, timeout=60
        )
        (triggered,) = wait_for(
            "the triggered retraining run to finish",
            lambda: [r for r in runs_of(url, retrain["id"]) if r["state_type"] in TERMINAL],
            timeout_s=420,
            every_s=3,
        )
        versions = registry.list_versions(root=str(home), model="churn")
        again = json.dumps({**triggered["parameters"]})
        redelivered = subprocess.run(
            [sys.executable, "-c", REDELIVER, again],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=360,
            check=False,
        )
        scheduled = runs_of(url, monitor["id"], state={"type": {"any_": ["SCHEDULED"]}})
    finally:
        runner.terminate()
        try:
            runner.wait(timeout=30)
        except subprocess.TimeoutExpired:
            runner.kill()
        log.close()
        stack.down(home=home)
    output = (tmp_path / "deployments.log").read_text()[-3000:]
    # the event alone started the run: an automation created it, with the event's parameters
    assert triggered["state_type"] == "COMPLETED", output
    assert triggered["created_by"]["type"] == "AUTOMATION"
    assert triggered["parameters"]["event_id"] == event_id
    assert triggered["parameters"]["reasons"] == ["concept drift: ROC-AUC decayed"]
    assert len(versions) == 2, output  # the champion, and what the retraining registered
    meta = registry.get_version(root=str(home), model="churn", version=versions[-1])
    assert (meta["trigger"]["event_id"], meta["trigger"]["request_id"]) == (event_id, "req-1")
    # the same event delivered again: the run completes and registers nothing
    assert redelivered.returncode == 0, redelivered.stderr[-2000:]
    assert json.loads(redelivered.stdout.strip().splitlines()[-1]) == {"state": "COMPLETED"}
    assert registry.list_versions(root=str(home), model="churn") == versions
    # and the monitor's schedule made its next runs (scheduled runs need sqlalchemy < 2.1)
    assert scheduled, output
