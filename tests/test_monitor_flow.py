"""The monitoring flow as it runs: a real champion, traffic written as Serve writes it, a Prefect
server for the runs, artifacts and events. Each test gets its own project and home."""

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from helpers import NOW, read_events, register_champion, serve, train_quick, write_project

from tasks import events, synthetic
from tasks import model as m
from tasks.monitor import load_state, verdict

pytestmark = pytest.mark.integration
M1 = {"windows_needed": 1, "windows_considered": 1}  # one window decides (M-of-N has unit tests)


@pytest.fixture(scope="module")
def trained() -> tuple[m.Predictor, pa.Table, pa.Table]:
    table = synthetic.generate(rows=20_000, seed=1)
    return train_quick(table.slice(0, 16_000)), table.slice(16_000), table.slice(0, 16_000)


class Project:
    """A project with a champion (v1), traffic helpers and the monitor flow."""

    def __init__(
        self, root: Path, trained: tuple[m.Predictor, pa.Table, pa.Table], **monitoring: Any
    ) -> None:
        self.root, self.home = root, root / "home"
        self.predictor, holdout, reference = trained
        self.config = write_project(root, **monitoring)
        self.version = register_champion(
            self.home, self.predictor, holdout=holdout, reference=reference, tmp=root
        )

    def traffic(self, table: pa.Table, **kw: Any) -> None:
        serve(self.home, self.predictor, table, version=self.version, **kw)

    def monitor(self, now: Any = NOW + timedelta(minutes=5)) -> dict[str, Any]:
        from flows.monitoring import monitoring_pass

        return monitoring_pass(config=str(self.config), now=now)


def shifted(rows: int, *, seed: int = 5) -> pa.Table:
    """A covariate shift on three features (with total_charges following: 4 of 11 drift, plus
    support_calls and discount_pct through their dependencies): P(y|x) is kept."""
    return synthetic.generate(
        rows=rows,
        seed=seed,
        scenario="covariate_shift",
        features=["tenure_months", "monthly_charges", "age"],
    )


def test_concept_drift_with_feedback_is_decay_and_the_governor_requests_a_retrain(
    prefect_server: None, tmp_path: Path, trained: Any
) -> None:
    project = Project(tmp_path, trained, **M1)
    project.traffic(synthetic.generate(rows=5_000, seed=5, scenario="concept_drift"), labelled=0.4)
    found = project.monitor()
    assert found["drift"] is False  # the inputs did not move
    assert found["quality"]["source"] == "measured"
    assert found["quality"]["decayed"] is True
    assert found["decision"] == "retrain"
    assert found["reason"].startswith("concept drift")
    (sent,) = read_events(events.RETRAIN_REQUESTED, ids=found["events"])
    assert sent.resource.id == "driftloop.model.churn"
    assert sent.payload["request_id"] == found["governor"]["request_id"]
    assert sent.payload["reasons"] == found["governor"]["reasons"]
    assert isinstance(sent.payload["report"], str)


def test_a_covariate_shift_whose_quality_holds_is_reported_and_held_with_the_reason(
    prefect_server: None, tmp_path: Path, trained: Any
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    project = Project(tmp_path, trained, **M1)
    project.traffic(shifted(5_000))
    found = project.monitor()
    assert found["drift"] is True
    assert {"tenure_months", "monthly_charges", "age"} <= set(found["drifted_features"])
    assert found["quality"]["source"] == "estimated"
    assert found["quality"]["decayed"] is False
    assert found["decision"] == "hold"
    assert "but ROC-AUC" in found["reason"]
    assert "holds" in found["reason"]
    lines = verdict(found)  # what `driftloop monitor` prints
    assert lines[1].startswith("drift: YES, ")
    assert "age" in lines[1]
    assert lines[2].startswith("quality: ROC-AUC ")
    assert "(CBPE)" in lines[2]
    assert lines[3] == "data quality: ok"
    assert lines[4].startswith("decision: HOLD: inputs drifted")
    (detected,) = read_events(events.DRIFT_DETECTED, ids=found["events"])
    assert set(detected.payload["drifted_features"]) == set(found["drifted_features"])
    assert detected.payload["report"] == found["report"]
    # the reports, and the artifacts with the per-feature table and the decision
    folder = Path(found["directory"])
    assert {"drift.html", "drift.json", "monitor.json", "validation.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert "<html" in (folder / "drift.html").read_text()[:2000].lower()
    assert json.loads((folder / "monitor.json").read_text())["decision"] == "hold"
    keys = ArtifactFilter(key=ArtifactFilterKey(any_=["drift-churn", "monitor-churn"]))
    with get_client(sync_client=True) as client:  # this pass's: the newest of each key
        found_artifacts = client.read_artifacts(
            artifact_filter=keys, sort=ArtifactSort.CREATED_DESC
        )
    by_key = {a.key: a for a in reversed(found_artifacts)}  # other tests' passes have these keys
    assert {"drift-churn", "monitor-churn"} <= set(by_key)
    assert "drift.html" in str(by_key["drift-churn"].description)
    assert "Retrain governor: hold" in str(by_key["monitor-churn"].data)


def test_with_retrain_on_drift_the_same_shift_retrains(
    prefect_server: None, tmp_path: Path, trained: Any
) -> None:
    project = Project(tmp_path, trained, retrain_on="drift", **M1)
    project.traffic(shifted(5_000))
    found = project.monitor()
    assert (found["drift"], found["decision"]) == (True, "retrain")
    names = {e.event for e in read_events(events.DRIFT_DETECTED, ids=found["events"][:1])}
    assert names == {events.DRIFT_DETECTED}
    assert len(found["events"]) == 2  # drift detected, then retrain requested


@pytest.mark.parametrize("rows", [5_000, 100_000])
def test_clean_traffic_has_no_drift_and_sends_no_event(
    prefect_server: None, tmp_path: Path, trained: Any, rows: int
) -> None:
    project = Project(tmp_path, trained, **M1)
    project.traffic(synthetic.generate(rows=rows, seed=9), labelled=0.1)
    found = project.monitor()
    assert found["drift"] is False
    assert found["drifted_features"] == []
    assert found["prediction_drift"] is False
    assert found["window"]["rows"] == rows
    assert found["window"]["sampled"] == min(rows, 20_000)
    assert found["quality"]["source"] == "measured"
    assert found["quality"]["decayed"] is False
    assert found["data_quality"]["passed"] is True
    assert found["decision"] == "hold"
    assert found["events"] == []


def test_repeated_drift_inside_the_cooldown_requests_exactly_one_retrain(
    prefect_server: None, tmp_path: Path, trained: Any
) -> None:
    project = Project(tmp_path, trained, retrain_on="drift", cooldown_hours=6, **M1)
    decisions, requests = [], []
    for hour in range(3):
        at = NOW + timedelta(hours=hour)
        project.traffic(shifted(2_000, seed=20 + hour), at=at, prefix=f"h{hour}-")
        found = project.monitor(now=at + timedelta(minutes=1))
        decisions.append(found["decision"])
        requests += found["events"][1:]  # after drift.detected
    assert decisions == ["retrain", "hold", "hold"]
    assert len(requests) == 1
    assert len(read_events(events.RETRAIN_REQUESTED, ids=requests)) == 1
    assert len(load_state(home=str(project.home), model="churn").requests) == 1


@pytest.mark.parametrize(
    ("scenario", "kind", "problem"),
    [
        ("unseen_categories", None, "unseen_categories"),
        ("missing_spike", None, "missing_values"),
        ("schema_break", "drop", "schema_break"),
        ("schema_break", "rename", "schema_break"),
        ("schema_break", "retype", "schema_break"),
    ],
)
def test_each_data_quality_scenario_is_reported_as_a_data_quality_problem(
    prefect_server: None,
    tmp_path: Path,
    trained: Any,
    scenario: str,
    kind: str | None,
    problem: str,
) -> None:
    project = Project(tmp_path, trained, **M1)
    broken = synthetic.generate(rows=3_000, seed=5, scenario=scenario, kind=kind)
    clean = synthetic.generate(rows=3_000, seed=5)  # what Serve would have scored
    project.traffic(clean, features=broken, labelled=0.0)
    found = project.monitor()
    assert found["data_quality"]["passed"] is False
    assert problem in found["data_quality"]["problems"]
    assert found["decision"] == "hold"
    assert found["reason"].startswith("data-quality problem")
    assert found["events"] == [] or found["drift"]  # no retrain request, whatever drifted


def test_a_handful_of_extreme_values_is_a_finding_not_drift_nor_a_schema_break(
    prefect_server: None, tmp_path: Path, trained: Any
) -> None:
    project = Project(tmp_path, trained, **M1)
    clean = synthetic.generate(rows=5_000, seed=9)
    extreme = {"monthly_charges": (17, 1e12), "tenure_months": (18, 1e30)}  # 1e30: no int64
    broken = clean
    for column, (row, value) in extreme.items():
        values = broken[column].cast(pa.float64()).to_pylist()
        values[row] = value
        broken = broken.set_column(broken.column_names.index(column), column, pa.array(values))
    project.traffic(clean, features=broken, labelled=0.1)
    found = project.monitor()
    assert found["drift"] is False
    assert found["drifted_features"] == []
    assert found["data_quality"]["passed"] is True
    assert found["data_quality"]["problems"] == []
    (finding,) = found["data_quality"]["findings"]
    assert finding["check"] == "outliers"
    assert (finding["rows"], finding["columns"]) == (2, {"monthly_charges": 1, "tenure_months": 1})
    assert finding["share"] == pytest.approx(2 / 5_000)
    assert found["window"]["outliers"]["rows"] == 2
    assert "outliers" not in found["reason"]
    assert "2 row(s) (0.04%)" in verdict(found)[3]


def test_monitor_without_a_prefect_server_refuses_to_record_the_request_it_would_make(
    tmp_path: Path, trained: Any
) -> None:
    project = Project(tmp_path, trained, window_hours=1e6, **M1)  # the traffic is of 2026-06
    project.traffic(synthetic.generate(rows=3_000, seed=5, scenario="concept_drift"), labelled=0.5)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DRIFTLOOP_", "PREFECT_API"))}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "driftloop"), "monitor", "--json", "--config",
         str(project.config)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    error = [line for line in done.stderr.splitlines() if line.startswith("driftloop: error:")]
    assert len(error) == 1, done.stderr[-3000:]
    assert "no Prefect server of the stack is reachable" in error[0]
    found = json.loads(done.stdout)
    assert found["decision"] == "hold"
    assert found["governor"]["undeliverable"] is True
    assert found["reason"].startswith("a retraining is due (concept drift")
    assert load_state(home=str(project.home), model="churn").requests == []


def test_the_window_holds_only_the_champions_own_rows_and_its_quality_none_it_trained_on(
    prefect_server: None, tmp_path: Path, trained: Any
) -> None:
    project = Project(tmp_path, trained, min_rows=500, **M1)
    project.traffic(synthetic.generate(rows=3_000, seed=5), labelled=1.0)  # v1's, 2026-06-01
    learned = [f"r{i:09d}" for i in range(1_000)]  # v2 learned from 1,000 of them
    predictor, holdout, reference = trained
    v2 = register_champion(project.home, predictor, holdout=holdout, reference=reference,
                           tmp=tmp_path / "v2", trained_on=learned)  # fmt: skip
    later = NOW + timedelta(hours=1)
    serve(project.home, predictor, synthetic.generate(rows=1_500, seed=6), version=v2, at=later,
          labelled=1.0, prefix="v2-")  # fmt: skip
    # rows v2 answered that it had learned from (it was deployed again after a rollback, say)
    serve(project.home, predictor, synthetic.generate(rows=300, seed=7), version=v2, at=later,
          labelled=1.0, prefix="r")  # fmt: skip
    found = project.monitor(now=later + timedelta(minutes=5))
    assert (found["champion"], found["window"]["version"]) == (v2, v2)
    assert found["window"]["rows"] == 1_800  # none of v1's 3,000
    assert found["quality"]["source"] == "measured"
    assert found["quality"]["rows"] == 1_500  # none of the 300 it trained on
