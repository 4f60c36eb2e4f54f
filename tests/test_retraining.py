"""Retraining: the flow on real Ray (fresh source + labelled traffic, the same gate, the trigger in
the new version's metadata, a redelivered event ignored), and the whole loop on a real local stack:
a `driftloop.retrain.requested` event makes the deployment's trigger start a retraining run by
itself, executed by `python -m flows.deployments` (prefect.serve)."""

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import (
    NOW,
    TERMINAL,
    api,
    free_port,
    read_events,
    register_champion,
    runs_of,
    serve,
    train_quick,
    wait_for,
)
from sklearn.metrics import roc_auc_score

from tasks import events, files, registry, stack, synthetic
from tasks.model import load_model
from tasks.monitor import load_state, requests, verdict

pytestmark = pytest.mark.integration
REPO = Path(__file__).parents[1]
# the test traffic is stamped in 2026-06: read all of it, and retire none of it
STAMPED_IN_THE_PAST = "retraining:\n  feedback_days: 100000\nmonitoring:\n  retention_days: null\n"


def project(root: Path, *, workers: int = 2, at: datetime = NOW) -> Path:
    """A project whose source never changes: the old world's rows, which v1 learned from. The
    world then moved (the generator's concept drift): v1 served 3,000 rows of it (at `at`), and
    every label came back."""
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
        f"{STAMPED_IN_THE_PAST}"
    )
    predictor = train_quick(old.slice(0, 8_000), steps=200)
    register_champion(
        root / "home", predictor, holdout=old.slice(8_000), reference=old.slice(0, 8_000), tmp=root
    )
    served = synthetic.generate(rows=3_000, seed=8, scenario="concept_drift")
    serve(root / "home", predictor, served, version=1, at=at, labelled=1.0)
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


# The governor and its requests, with the retraining flow ------------------------------------------


def lifecycle_project(root: Path, **gate: Any) -> tuple[Path, Callable[[], dict[str, Any]]]:
    """`project`, in real time (the governor compares its clock with the retraining's), deciding
    on one window with a short cooldown; and its monitoring pass."""
    from flows.monitoring import monitoring_pass

    config = project(root, at=datetime.now(timezone.utc))
    text = config.read_text().replace(STAMPED_IN_THE_PAST, "")
    extra = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in gate.items())
    config.write_text(
        text.replace("gate:\n", "gate:\n" + extra)
        + "monitoring:\n  windows_needed: 1\n  windows_considered: 1\n  cooldown_hours: 0.001\n"
    )
    return config, lambda: monitoring_pass(config=str(config))


def test_a_crashed_retraining_runs_again_a_rejected_one_needs_attention_until_new_labels(
    prefect_server: None, ray_local: None, tmp_path: Path
) -> None:
    from flows.retraining import retraining

    config, monitor = lifecycle_project(tmp_path, min_improvement=10.0)  # no model can pass
    home = str(tmp_path / "home")
    first = monitor()
    request = first["request"]
    assert (first["decision"], request["delivered"]) == ("retrain", True), first["reason"]
    # its retraining died holding the claim: the next pass finds the run gone and asks again
    requests.claim(home=home, model="churn", key=request["id"], run_id=str(uuid.uuid4()),
                   record={}, is_alive=lambda _: True)  # fmt: skip
    again = monitor()
    assert (again["decision"], again["request"]["id"]) == ("retrain", request["id"])
    assert again["governor"]["attempt"] == 2
    assert again["governor"]["event_id"] != first["governor"]["event_id"]
    rejected = retraining(config=str(config), event_id=again["governor"]["event_id"],
                          model="churn", request_id=request["id"])  # fmt: skip
    assert rejected["decision"] == "rejected"
    record = requests.read_record(home=home, model="churn", key=request["id"])
    assert record is not None
    assert len(record["attempts"]) == 2  # the dead run's claim, then this one's
    versions = registry.list_versions(root=home, model="churn")
    # rejected: every pass holds and says so, until new labels arrive; the event is sent once
    held = [monitor(), monitor()]
    for found in held:
        assert found["decision"] == "hold", found["reason"]
        assert found["needs_attention"].startswith(f"needs attention: v{versions[-1]} rejected")
        assert "asks again once 200 new labels arrived (0 since" in found["reason"]
    attention = [e for found in held for e in found["events"]]
    assert len(read_events(events.RETRAIN_NEEDS_ATTENTION, ids=attention)) == 1
    assert registry.list_versions(root=home, model="churn") == versions
    # new labelled evidence (a new window's worth): exactly one new request
    predictor = load_model(registry.resolve(root=home, model="churn", ref="champion"))
    more = synthetic.generate(rows=1_200, seed=21, scenario="concept_drift")
    serve(tmp_path / "home", predictor, more, version=1, at=datetime.now(timezone.utc),
          labelled=1.0, prefix="later")  # fmt: skip
    time.sleep(4)  # the back-off: the cooldown (0.001 h) after one unsuccessful retraining
    fresh = monitor()
    assert fresh["decision"] == "retrain", fresh["reason"]
    assert fresh["request"]["id"] != request["id"]
    assert [r["status"] for r in load_state(home=home, model="churn").requests] == [
        "rejected", "sent"
    ]  # fmt: skip


def test_a_lost_request_is_sent_again_under_its_id_and_a_live_run_keeps_its_claim(
    prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import prefect.events
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from flows.retraining import retraining

    _, monitor = lifecycle_project(tmp_path)
    home = str(tmp_path / "home")
    real_emit = prefect.events.emit_event

    def lose_requests(*, event: str, **kwargs: Any) -> Any:  # as emit_event does when it fails
        return None if event == events.RETRAIN_REQUESTED else real_emit(event=event, **kwargs)

    monkeypatch.setattr(prefect.events, "emit_event", lose_requests)
    lost = monitor()
    assert (lost["decision"], lost["request"]["delivered"]) == ("retrain", False)
    assert "not confirmed" in " ".join(verdict(lost))
    assert load_state(home=home, model="churn").requests[-1]["status"] == "pending"
    monkeypatch.setattr(prefect.events, "emit_event", real_emit)
    resent = monitor()
    assert resent["request"] == {"id": lost["request"]["id"], "delivered": True, "resent": True}
    assert resent["governor"]["event_id"] == lost["governor"]["event_id"]
    (delivered,) = read_events(events.RETRAIN_REQUESTED, ids=[resent["governor"]["event_id"]])
    assert delivered.payload["request_id"] == lost["request"]["id"]
    assert len(load_state(home=home, model="churn").requests) == 1

    @flow(name="a-live-retraining")
    def live() -> None: ...

    with get_client(sync_client=True) as client:
        running = client.create_flow_run(live, state=Running())
    requests.claim(home=home, model="churn", key=lost["request"]["id"], run_id=str(running.id),
                   record={}, is_alive=lambda _: True)  # fmt: skip
    busy = retraining(config=str(tmp_path / "driftloop.yaml"), model="churn",
                      request_id=lost["request"]["id"])  # fmt: skip
    assert busy["decision"] == "skipped"
    assert "is being retrained by a live run" in busy["reason"]
    assert registry.list_versions(root=home, model="churn") == [1]


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

        def served() -> Any:
            if runner.poll() is not None:  # it will never come: say why
                log.flush()
                tail = (tmp_path / "deployments.log").read_text()[-3000:]
                raise AssertionError(f"the deployments' runner exited {runner.returncode}:\n{tail}")
            return api(url, "/deployments/name/retraining/retraining")

        retrain = wait_for("the retraining deployment", served, timeout_s=120)
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
