"""The drift monitor's parts on their own: the governor's rules, CBPE against measured quality,
Evidently's per-column verdicts, the window reader. No service starts here.

The helpers at the top (a small calibrated model trained in-process, a project with a champion,
traffic written as Serve writes it) are shared with tests/test_monitor_flow.py.
"""

import json
import math
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from helpers import (
    FEATURES,
    NOW,
    TARGET,
    labels_of,
    register_champion,
    serve,
    train_quick,
    write_project,
)

from tasks import model as m
from tasks import synthetic, traffic
from tasks.evaluate import compute_metrics
from tasks.monitor import (
    Decision,
    Quality,
    Signals,
    State,
    decide,
    detect_drift,
    estimated,
    expected_roc_auc,
    govern,
    labelled_traffic,
    load_champion,
    load_state,
    mark_sent,
    measured,
    read_window,
    reconcile,
    requests,
)
from tasks.monitor.feedback import LabelledRowsRejected
from tasks.monitor.quality import Source
from tasks.settings import MonitoringConfig, RetrainingConfig, Settings, load_settings


@pytest.fixture(scope="module")
def trained() -> tuple[m.Predictor, pa.Table, pa.Table]:
    """A champion trained on 16,000 clean rows, its holdout and its training sample."""
    table = synthetic.generate(rows=20_000, seed=1)
    return train_quick(table.slice(0, 16_000)), table.slice(16_000), table.slice(0, 16_000)


# The governor ------------------------------------------------------------------------------------


def quality(*, decayed: bool, source: Source = "measured") -> Quality:
    value = 0.70 if decayed else 0.85
    return Quality(
        source=source,
        metric="roc_auc",
        value=value,
        low=value - 0.01,
        high=value + 0.01,
        baseline=0.85,
        rows=1000,
        decayed=decayed,
        loss=(0.85 - value) / 0.85,
    )


def signals(
    *,
    drift: bool = False,
    decayed: bool = False,
    source: Source = "measured",
    rows: int = 5000,
    end: datetime = NOW,
    champion: int = 1,
    problems: list[str] | None = None,
) -> Signals:
    return Signals(
        window_end=end,
        rows=rows,
        champion=champion,
        drift=drift,
        drifted_features=["tenure_months"] * drift,
        drift_share=0.6 * drift,
        prediction_drift=drift,
        quality=quality(decayed=decayed, source=source),
        data_problems=problems or [],
    )


def config(**overrides: Any) -> MonitoringConfig:
    base = {"windows_needed": 1, "windows_considered": 1, "cooldown_hours": 24.0}
    return MonitoringConfig(**{**base, **overrides})


def run(
    found: Signals, cfg: MonitoringConfig, state: State | None = None, now: datetime = NOW
) -> tuple[Decision, State]:
    return decide(found, state=state or State(), config=cfg, now=now)


@pytest.mark.parametrize(
    ("mode", "drift", "decayed", "source", "action"),
    [
        ("drift_and_decay", True, False, "estimated", "hold"),  # drift alone: quality holds
        ("drift_and_decay", False, True, "measured", "retrain"),  # concept drift
        ("drift_and_decay", True, True, "estimated", "retrain"),  # drift backs the estimate
        ("drift_and_decay", False, True, "estimated", "hold"),  # an estimate alone
        ("drift", True, False, "estimated", "retrain"),
        ("drift", False, True, "measured", "hold"),
        ("decay", False, True, "estimated", "retrain"),
        ("decay", True, False, "measured", "hold"),
    ],
)
def test_retrain_on_decides_which_signal_retrains(
    mode: str, drift: bool, decayed: bool, source: Source, action: str
) -> None:
    decision, _ = run(signals(drift=drift, decayed=decayed, source=source), config(retrain_on=mode))
    assert decision.action == action, decision.reason
    assert decision.reason


def test_drift_whose_quality_holds_is_held_with_the_reason() -> None:
    decision, _ = run(signals(drift=True), config())
    assert decision.action == "hold"
    assert "inputs drifted" in decision.reason
    assert "holds" in decision.reason


def test_concept_drift_is_named_in_the_reason() -> None:
    decision, _ = run(signals(decayed=True), config())
    assert decision.action == "retrain"
    assert decision.reason.startswith("concept drift: quality decayed with stable inputs")
    assert decision.request_id


def test_m_of_n_needs_the_signal_in_m_of_the_last_n_windows() -> None:
    cfg = config(windows_needed=2, windows_considered=3, retrain_on="drift")
    state = State()
    actions = []
    for hour, drift in enumerate([True, False, True, True]):
        found = signals(drift=drift, end=NOW + timedelta(hours=hour))
        decision, state = run(found, cfg, state, now=NOW + timedelta(hours=hour))
        state = delivered(state)
        actions.append(decision.action)
    assert actions == ["hold", "hold", "retrain", "hold"]  # the last: the retraining in flight
    assert "in flight" in state.windows[-1]["reason"]
    first = state.windows[0]["reason"]
    assert "seen in 1 of the last 1 window(s), 2 of 3 needed" in first


def test_the_same_window_judged_twice_counts_once() -> None:
    cfg = config(windows_needed=2, windows_considered=3, retrain_on="drift")
    decision, state = run(signals(drift=True), cfg)
    decision, state = run(signals(drift=True), cfg, state, now=NOW + timedelta(minutes=5))
    assert decision.action == "hold"
    assert len(state.windows) == 1


def test_a_new_champion_starts_the_count_afresh() -> None:
    cfg = config(windows_needed=2, windows_considered=2, retrain_on="drift", cooldown_hours=0)
    _, state = run(signals(drift=True, champion=1), cfg)
    later = NOW + timedelta(hours=1)
    decision, _ = run(signals(drift=True, champion=2, end=later), cfg, state, now=later)
    assert decision.action == "hold"
    assert decision.windows_judged == 1


def test_a_data_quality_problem_holds_whatever_else_the_window_shows() -> None:
    decision, state = run(signals(drift=True, decayed=True, problems=["missing_values"]), config())
    assert decision.action == "hold"
    assert decision.reason.startswith("data-quality problem (missing_values)")
    assert state.windows[-1]["signal"] is False  # it does not count toward M of N either


def test_too_few_rows_give_no_verdict() -> None:
    decision, _ = run(signals(decayed=True, rows=10), config())
    assert decision.action == "hold"
    assert "only 10 rows in the window" in decision.reason


def test_cooldown_after_a_promotion_holds_until_it_has_passed() -> None:
    cfg = config(cooldown_hours=6)
    first, state = run(signals(decayed=True), cfg)
    state = ended(delivered(state), "promoted", version=2)  # sent at NOW, v2 serves now
    soon = NOW + timedelta(hours=5)
    held, state = run(signals(decayed=True, end=soon, champion=2), cfg, state, now=soon)
    later = NOW + timedelta(hours=7)
    again, _ = run(signals(decayed=True, end=later, champion=2), cfg, state, now=later)
    assert (first.action, held.action, again.action) == ("retrain", "hold", "retrain")
    assert "cooldown" in held.reason
    assert held.cooldown_until == NOW + timedelta(hours=6)


def test_the_governor_remembers_its_request_in_a_new_process(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    cfg = config(cooldown_hours=6)
    first = govern(home=home, model="churn", signals=signals(decayed=True), config=cfg, now=NOW)
    assert first.action == "retrain"
    assert first.request_id is not None
    mark_sent(home=home, model="churn", request_id=first.request_id, event_id="e1", now=NOW)
    code = (
        "import json, sys; from datetime import datetime, timedelta; "
        "from tasks.monitor import governor; import test_monitor as t; "
        f"now = t.NOW + timedelta(hours=1); s = t.signals(decayed=True, end=now); "
        f"d = governor.govern(home={home!r}, model='churn', signals=s, config=t.config("
        "cooldown_hours=6), now=now); print(json.dumps([d.action, d.reason]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    action, reason = json.loads(done.stdout.strip().splitlines()[-1])
    assert action == "hold"
    assert f"request {first.request_id[:8]}" in reason
    assert "in flight" in reason
    assert reason.endswith("(sent)")
    (request,) = load_state(home=home, model="churn").requests
    assert (request["status"], request["event_id"]) == ("sent", "e1")


# Requests: delivered, claimed once, their outcome read back --------------------------------------


def last(state: State) -> dict[str, Any]:
    assert state.last is not None, "no request in the state"
    return state.last


def delivered(state: State, at: datetime = NOW) -> State:
    """The state after the monitor confirmed the last request's event (if one is pending)."""
    last = state.last
    if last is None or last["status"] != "pending":
        return state
    return state.with_request({**last, "status": "sent", "sent_at": at.isoformat()})


def ended(state: State, status: str, *, version: int | None = None, at: datetime = NOW) -> State:
    """The state after the last request's retraining ended (as `reconcile` reads it back)."""
    last = state.last
    assert last is not None
    detail = "reject: roc_auc: gain over champion (-1.2%)" if status == "rejected" else "boom"
    return state.with_request(
        {
            **last,
            "status": status,
            "version": version,
            "detail": detail,
            "ended_at": at.isoformat(),
        }
    )


def with_labels(found: Signals, *, after: datetime, count: int) -> Signals:
    """`found` with `count` labels received after `after` (none after a later time)."""
    return replace(found, labels_after=lambda moment: count if moment and moment <= after else 0)


def test_an_unconfirmed_request_is_sent_again_under_its_id_until_it_is_delivered() -> None:
    cfg = config(cooldown_hours=6)
    first, state = run(signals(decayed=True), cfg)
    assert (first.action, last(state)["status"]) == ("retrain", "pending")
    later = NOW + timedelta(hours=1)
    again, state = run(signals(end=later), cfg, state, now=later)  # no signal needed to re-send
    assert (again.action, again.resend) == ("retrain", True)
    assert (again.request_id, again.event_id) == (first.request_id, first.event_id)
    assert again.reason.startswith(f"re-sending request {str(first.request_id)[:8]}")
    assert len(state.requests) == 1
    state = delivered(state, at=later)
    held, _ = run(signals(decayed=True, end=later + timedelta(hours=1)), cfg, state,
                  now=later + timedelta(hours=1))  # fmt: skip
    assert held.action == "hold"
    assert "in flight" in held.reason


def test_a_crashed_retraining_is_asked_for_again_with_a_new_event_and_a_lost_one_after_a_while(
) -> None:  # fmt: skip
    cfg = config(cooldown_hours=2)
    first, state = run(signals(decayed=True), cfg)
    state = delivered(state)
    crashed = state.with_request({**last(state), "status": "crashed", "flow_run_id": "f-1"})
    again, after = run(signals(end=NOW + timedelta(minutes=30)), cfg, crashed,
                       now=NOW + timedelta(minutes=30))  # fmt: skip
    assert (again.action, again.request_id, again.attempt) == ("retrain", first.request_id, 2)
    assert again.event_id != first.event_id
    assert last(after)["status"] == "pending"
    # delivered, but no retraining claimed it within max(cooldown, 1 h): sent again
    for hours, action in ((1, "hold"), (3, "retrain")):
        at = NOW + timedelta(hours=hours)
        found, _ = run(signals(end=at), cfg, state, now=at)
        assert found.action == action, found.reason
    assert "no retraining claimed it within 2 h" in found.reason


def test_a_rejected_retraining_needs_attention_and_waits_for_new_labels_and_a_back_off() -> None:
    cfg = config(cooldown_hours=2, min_labelled_rows=200)
    first, state = run(signals(decayed=True), cfg)
    state = ended(delivered(state), "rejected", version=5, at=NOW + timedelta(minutes=20))
    ended_at = NOW + timedelta(minutes=20)
    decisions = []
    for hours, labels in ((1, 0), (1.5, 150), (1.9, 400), (2.5, 400)):
        at = NOW + timedelta(hours=hours)
        found = with_labels(signals(decayed=True, end=at), after=ended_at, count=labels)
        decision, state = run(found, cfg, state, now=at)
        decisions.append(decision)
    assert [d.action for d in decisions] == ["hold", "hold", "hold", "retrain"]
    attention = "needs attention: v5 rejected: reject: roc_auc: gain over champion (-1.2%)"
    assert all(d.needs_attention == attention for d in decisions)
    assert "asks again once 200 new labels arrived (0 since" in decisions[0].reason
    assert "(150 since" in decisions[1].reason
    assert "backing off after 1 unsuccessful retraining(s) until" in decisions[2].reason
    assert decisions[3].request_id not in (None, first.request_id)
    assert len(state.requests) == 2


def test_a_failed_retraining_backs_off_twice_as_long_the_second_time() -> None:
    cfg = config(cooldown_hours=1)
    _, state = run(signals(decayed=True), cfg)
    state = ended(delivered(state), "failed", at=NOW)
    _, state = run(with_labels(signals(decayed=True, end=NOW + timedelta(hours=2)), after=NOW,
                               count=500), cfg, state, now=NOW + timedelta(hours=2))  # fmt: skip
    second_end = NOW + timedelta(hours=3)
    state = ended(delivered(state), "failed", at=second_end)
    for hours, action in ((4.5, "hold"), (5.5, "retrain")):  # 2 x 1 h after the second
        at = NOW + timedelta(hours=hours)
        found = with_labels(signals(decayed=True, end=at), after=second_end, count=500)
        decision, _ = run(found, cfg, state, now=at)
        assert decision.action == action, decision.reason
    assert decision.needs_attention == "needs attention: the retraining failed: boom"


def test_without_a_server_to_deliver_to_a_due_request_is_not_recorded() -> None:
    decision, state = decide(
        signals(decayed=True), state=State(), config=config(), now=NOW, can_deliver=False
    )
    assert (decision.action, decision.undeliverable) == ("hold", True)
    assert "no Prefect server is reachable" in decision.reason
    assert state.requests == []


def test_two_passes_over_the_same_rows_count_as_one_window() -> None:
    cfg = config(windows_needed=2, windows_considered=3, min_rows=1000)
    day = [NOW + timedelta(seconds=18 * i) for i in range(5000)]  # 5,000 rows in 25 hours

    def window(hours: float) -> Signals:  # the last 5,000 rows of a steady stream of rows
        times = [t + timedelta(hours=hours) for t in day]
        found = signals(decayed=True, end=times[-1])
        return replace(found, rows_after=lambda m: sum(t > m for t in times) if m else len(times))

    actions, counted = [], []
    state = State()
    for hours in (0, 1, 2, 30):  # an hour apart: 200 new rows each; a day later: all new
        at = NOW + timedelta(hours=hours)
        decision, state = run(window(hours), cfg, state, now=at)
        actions.append(decision.action)
        counted.append((decision.counted, decision.fresh_rows))
    assert counted == [(True, 5000), (False, 200), (False, 400), (True, 5000)]
    assert actions == ["hold", "hold", "hold", "retrain"]
    assert "the same evidence counts once" in state.windows[1]["reason"]


def test_a_request_is_claimed_by_one_run_ended_once_and_a_dead_runs_claim_passes_on(
    tmp_path: Path,
) -> None:
    home = str(tmp_path / "home")
    alive = {"run-1": True}

    def claim(run_id: str) -> str:
        found, _ = requests.claim(
            home=home, model="churn", key="req-1", run_id=run_id, record={"x": 1},
            is_alive=lambda held: alive.get(str(held["flow_run_id"]), False),
        )  # fmt: skip
        return found

    assert claim("run-1") == "claimed"
    assert claim("run-2") == "busy"  # a live run holds it: never two at once
    alive["run-1"] = False  # it crashed without an outcome
    assert claim("run-2") == "claimed"
    record = requests.read_record(home=home, model="churn", key="req-1")
    assert record is not None
    assert [a["flow_run_id"] for a in record["attempts"]] == ["run-1", "run-2"]
    requests.finish(home=home, model="churn", key="req-1", status="rejected", version=3,
                    detail="reject: ...")  # fmt: skip
    assert claim("run-3") == "done"
    assert (requests.read_record(home=home, model="churn", key="req-1") or {})["version"] == 3
    _, state = run(signals(decayed=True), config())
    state, outcome = reconcile(
        state.with_request({**last(state), "request_id": "req-1", "status": "sent"}),
        home=home, model="churn",
    )  # fmt: skip
    assert (last(state)["status"], last(state)["version"]) == ("rejected", 3)
    assert outcome is not None
    assert outcome["status"] == "rejected"


def test_m_of_n_cannot_ask_for_more_windows_than_it_considers() -> None:
    with pytest.raises(ValueError, match="windows_needed"):
        MonitoringConfig(windows_needed=3, windows_considered=2)


# Quality: measured with a CI, estimated with CBPE ------------------------------------------------


def test_expected_roc_auc_matches_the_mean_auc_of_labels_drawn_from_the_probabilities() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for p in (rng.beta(1, 4, 2000), np.round(rng.beta(2, 2, 500), 1)):  # the second with ties
        drawn = [roc_auc_score(rng.random(len(p)) < p, p) for _ in range(500)]
        assert expected_roc_auc(np.stack([1 - p, p], axis=1)) == pytest.approx(
            np.mean(drawn), abs=0.005
        )


@pytest.mark.parametrize(
    "scenario",
    [
        "clean",
        "covariate_shift",
        "unseen_categories",
        "missing_spike",
        "prior_shift",
        "concept_drift",
    ],
)
def test_cbpe_tracks_measured_quality_where_p_y_given_x_holds(
    trained: tuple[m.Predictor, pa.Table, pa.Table], scenario: str
) -> None:
    predictor, holdout, _ = trained
    batch = synthetic.generate(rows=10_000, seed=7, scenario=scenario)
    probs, y = predictor.predict(batch), labels_of(batch)
    holdout_auc = compute_metrics(
        labels_of(holdout), predictor.predict(holdout), task="classification"
    )["roc_auc"]
    cfg = MonitoringConfig()
    guess = estimated(probs, metric_name="roc_auc", baseline=holdout_auc, config=cfg)
    truth = measured(y, probs, metric_name="roc_auc", baseline=holdout_auc, config=cfg)
    assert guess.source == "estimated"
    assert guess.value is not None
    assert truth.value is not None
    if scenario == "concept_drift":  # P(y|x) changed: only labels can see it
        assert truth.decayed
        assert not guess.decayed
        assert abs(guess.value - truth.value) > 0.3
    elif scenario == "prior_shift":  # P(y) moved: calibration off, the estimate within 0.05
        assert abs(guess.value - truth.value) < 0.05
    else:
        assert abs(guess.value - truth.value) < 0.02, (guess.describe(), truth.describe())
        assert not guess.decayed
        assert not truth.decayed


def test_measured_decay_needs_a_large_drop_whose_ci_stays_below_the_holdout() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    noisy = np.clip(y * 0.3 + rng.random(400) * 0.7, 0, 1)
    probs = np.stack([1 - noisy, noisy], axis=1)
    value = compute_metrics(y, probs, task="classification")["roc_auc"]
    cfg = MonitoringConfig()
    slightly_better_baseline = measured(
        y, probs, metric_name="roc_auc", baseline=value * 1.03, config=cfg
    )
    far_better_baseline = measured(
        y, probs, metric_name="roc_auc", baseline=min(value * 1.3, 1), config=cfg
    )
    assert not slightly_better_baseline.decayed  # a 3% drop is inside max_quality_drop (5%)
    assert far_better_baseline.decayed
    assert far_better_baseline.low is not None
    assert far_better_baseline.high is not None
    assert far_better_baseline.low < value < far_better_baseline.high
    assert "measured on 400 labelled rows" in far_better_baseline.describe()


# Evidently's verdicts per column -----------------------------------------------------------------


def test_effect_sizes_flag_a_real_shift_and_not_the_noise_of_a_large_window() -> None:
    reference = synthetic.generate(rows=20_000, seed=1)
    cfg = MonitoringConfig()
    clean = detect_drift(
        synthetic.generate(rows=100_000, seed=2),
        reference,
        numeric=FEATURES.numeric,
        categorical=FEATURES.categorical,
        predictions=[],
        config=cfg,
    )
    assert clean.drifted_features == []
    assert not clean.drift
    assert max(c.score or 0 for c in clean.columns) < 0.05
    shifted = synthetic.generate(
        rows=20_000,
        seed=2,
        scenario="covariate_shift",
        features=["tenure_months", "monthly_charges", "age"],
    )
    found = detect_drift(
        shifted,
        reference,
        numeric=FEATURES.numeric,
        categorical=FEATURES.categorical,
        predictions=[],
        config=cfg,
    )
    assert {"tenure_months", "monthly_charges", "age", "total_charges"} <= set(
        found.drifted_features
    )
    assert found.drift
    assert {c.test for c in found.columns if c.role == "feature"} == {
        "wasserstein",
        "jensenshannon",
    }
    assert all(c.threshold == 0.1 for c in found.columns)


def test_a_column_the_window_lost_is_not_compared_and_says_why() -> None:
    reference = synthetic.generate(rows=5_000, seed=1)
    broken = synthetic.generate(rows=5_000, seed=2, scenario="schema_break", kind="retype")
    found = detect_drift(
        broken,
        reference,
        numeric=FEATURES.numeric,
        categorical=FEATURES.categorical,
        predictions=[],
        config=MonitoringConfig(),
    )
    by_name = {c.column: c for c in found.columns}
    assert by_name["monthly_charges"].score is None
    assert "holds string values" in by_name["monthly_charges"].note
    assert not math.isnan(by_name["tenure_months"].score or math.nan)


# The window and the feedback rows ----------------------------------------------------------------


def test_the_window_reads_the_recent_rows_with_their_newest_labels(
    tmp_path: Path, trained: tuple[m.Predictor, pa.Table, pa.Table]
) -> None:
    predictor, holdout, _ = trained
    home = tmp_path / "home"
    serve(
        home, predictor, holdout.slice(0, 300), version=1, at=NOW - timedelta(days=3), prefix="old"
    )
    served = serve(home, predictor, holdout.slice(300, 1000), version=1, labelled=0.5)
    relabel = pa.table(
        {
            traffic.REQUEST_ID: served[traffic.REQUEST_ID].slice(0, 1),
            TARGET: pa.array([1 - holdout[TARGET][300].as_py()]),
            traffic.RECEIVED_AT: pa.array(
                [NOW + timedelta(minutes=1)], pa.timestamp("us", tz="UTC")
            ),
        }
    )
    traffic.append(home=str(home), model="churn", kind="feedback", rows=relabel)
    cfg = MonitoringConfig(window_hours=24, sample_rows=400)
    window = read_window(
        home=str(home),
        model="churn",
        features=FEATURES.all,
        target=TARGET,
        config=cfg,
        now=NOW + timedelta(hours=1),
    )
    assert (window.rows, window.labelled, window.table.num_rows) == (1000, 500, 400)
    assert not any(r.startswith("old") for r in window.table[traffic.REQUEST_ID].to_pylist())
    assert set(window.table.column_names) >= {*FEATURES.all, TARGET, traffic.PREDICTED_AT}
    assert "probability_1" not in window.table.column_names  # only what the pass needs is read
    labels = dict(
        zip(
            window.labelled_table[traffic.REQUEST_ID].to_pylist(),
            window.labelled_table[TARGET].to_pylist(),
            strict=True,
        )
    )
    first = served[traffic.REQUEST_ID][0].as_py()
    if first in labels:  # the newest label of a request id wins
        assert labels[first] == 1 - holdout[TARGET][300].as_py()
    newest = read_window(
        home=str(home),
        model="churn",
        features=FEATURES.all,
        target=TARGET,
        config=MonitoringConfig(window_hours=None, window_rows=200),
        now=NOW,
    )
    assert newest.rows == 200


def retraining_project(
    root: Path,
    trained: tuple[m.Predictor, pa.Table, pa.Table],
    *,
    trained_on: list[str] | None = None,
) -> Settings:
    """A project whose champion (trained on `trained_on` request ids too) served the traffic
    the test writes; its retraining looks back far enough to see traffic of 2026-06."""
    predictor, holdout, reference = trained
    config = write_project(root)
    register_champion(root / "home", predictor, holdout=holdout, reference=reference, tmp=root,
                      trained_on=trained_on)  # fmt: skip
    settings = load_settings(config)
    return settings.model_copy(update={"retraining": RetrainingConfig(feedback_days=1e5)})


def test_labelled_traffic_splits_by_request_id_and_the_champions_own_rows_never_judge_it(
    tmp_path: Path, trained: tuple[m.Predictor, pa.Table, pa.Table]
) -> None:
    predictor, holdout, _ = trained
    settings = retraining_project(tmp_path, trained, trained_on=[f"r{i:09d}" for i in range(500)])
    serve(tmp_path / "home", predictor, holdout.slice(0, 2000), version=1, labelled=1.0)
    champion = load_champion(settings)
    rows = labelled_traffic(champion=champion, settings=settings)
    again = labelled_traffic(champion=champion, settings=settings)
    assert rows.rows == 2000
    assert rows.dropped is not None
    assert rows.dropped.dropped == 0
    assert 0.2 < rows.gate.num_rows / 1500 < 0.4  # 30% of the 1,500 the champion did not learn
    assert 0.2 < rows.select.num_rows / 2000 < 0.3
    assert rows.gate.equals(again.gate)
    assert rows.select.equals(again.select)
    ids = [set(t[traffic.REQUEST_ID].to_pylist()) for t in (rows.train, rows.select, rows.gate)]
    assert not ids[0] & ids[1]
    assert not ids[0] & ids[2]
    assert not ids[1] & ids[2]
    assert not any(int(r[1:]) < 500 for r in ids[2])  # what it trained on never judges it
    assert set(rows.train.column_names) == {
        traffic.REQUEST_ID,
        traffic.PREDICTED_AT,
        traffic.MODEL_VERSION,
        *FEATURES.all,
        TARGET,
    }


def spoiled(table: pa.Table, scenario: str) -> tuple[pa.Table, set[int]]:
    """`table` as a broken feed logs it, and the rows it broke."""
    bad: set[int] = set()
    if scenario == "outliers":
        values = table["monthly_charges"].to_pylist()
        for i in (3, 500, 999):
            values[i] = 1e12
            bad.add(i)
        table = table.set_column(table.column_names.index("monthly_charges"),
                                 "monthly_charges", pa.array(values))  # fmt: skip
        return table, bad
    broken = synthetic.generate(rows=table.num_rows, seed=5, scenario=scenario)
    for name in FEATURES.all:
        was, now = table[name].to_pylist(), broken[name].to_pylist()
        bad |= {i for i, (a, b) in enumerate(zip(was, now, strict=True)) if a != b}
    return broken, bad


@pytest.mark.parametrize(
    ("scenario", "check", "rows"),
    [
        ("unseen_categories", "unseen_categories", 1000),
        ("missing_spike", "missing_values", 400),  # 78% of them broken: 1,000 would be too many
        ("outliers", "outliers: monthly_charges", 1000),
        ("covariate_shift", None, 1000),  # drift, not breakage: every row may teach
    ],
)
def test_the_bad_labelled_rows_of_each_broken_feed_are_kept_out_of_a_retraining(
    tmp_path: Path, trained: tuple[m.Predictor, pa.Table, pa.Table], scenario: str,
    check: str | None, rows: int,
) -> None:  # fmt: skip
    predictor, holdout, _ = trained
    settings = retraining_project(tmp_path, trained)
    home = tmp_path / "home"
    serve(home, predictor, holdout.slice(0, 2000), version=1, labelled=1.0, prefix="ok")
    clean = synthetic.generate(rows=rows, seed=5)
    logged, bad = spoiled(clean, scenario)
    serve(home, predictor, clean, version=1, labelled=1.0, prefix="feed", features=logged)
    found = labelled_traffic(champion=load_champion(settings), settings=settings)
    parts = (found.train, found.select, found.gate)
    kept = set().union(*(t[traffic.REQUEST_ID].to_pylist() for t in parts))
    assert found.dropped is not None
    if check is None:
        assert found.dropped.dropped == 0
        assert len(kept) == 2000 + rows
        return
    assert bad
    assert {f"feed{i:09d}" for i in bad} & kept == set()  # none of the broken rows joins
    assert any(why.startswith(check) for why in found.dropped.reasons), found.dropped.reasons
    assert found.dropped.dropped >= len(bad)


def test_past_its_share_a_broken_feed_fails_the_retraining_naming_the_check(
    tmp_path: Path, trained: tuple[m.Predictor, pa.Table, pa.Table]
) -> None:
    predictor = trained[0]
    settings = retraining_project(tmp_path, trained)
    clean = synthetic.generate(rows=1000, seed=5)
    logged, _ = spoiled(clean, "missing_spike")
    serve(tmp_path / "home", predictor, clean, version=1, labelled=1.0, features=logged)
    with pytest.raises(LabelledRowsRejected, match="missing_values: data_usage_gb") as caught:
        labelled_traffic(champion=load_champion(settings), settings=settings)
    assert "retraining.max_invalid_share 25%" in str(caught.value)


def test_settings_load_the_monitoring_section_with_its_defaults(tmp_path: Path) -> None:
    settings = load_settings(write_project(tmp_path, retrain_on="drift", windows_needed=1))
    assert settings.monitoring.retrain_on == "drift"
    assert settings.monitoring.windows_needed == 1
    defaults = MonitoringConfig()
    assert (defaults.num_method, defaults.cat_method) == ("wasserstein", "jensenshannon")
    assert (defaults.num_threshold, defaults.drift_share) == (0.1, 0.5)
    assert defaults.retrain_on == "drift_and_decay"


def test_whole_numbers_logged_as_floats_are_judged_as_the_integers_sent() -> None:
    from tasks.monitor.checks import as_sent

    source = pa.schema([("tenure_months", pa.int64()), ("plan", pa.string())])
    logged = pa.table({"tenure_months": [3.0, None, 12.0], "plan": ["a", "b", None]})
    assert as_sent(logged, source=source).schema == source
    assert as_sent(logged, source=source)["tenure_months"].to_pylist() == [3, None, 12]
    fractional = pa.table({"tenure_months": [3.5, 2.0, 1.0], "plan": ["a", "b", "c"]})
    assert as_sent(fractional, source=source).schema.field(0).type == pa.float64()  # a break


def test_labelled_rows_take_the_source_types_or_name_the_column_that_does_not_fit() -> None:
    from tasks.errors import DriftloopError

    source = pa.schema(
        [("customer_id", pa.string()), ("tenure_months", pa.int64()),
         ("event_time", pa.timestamp("us", tz="UTC"))]
    )  # fmt: skip
    logged = pa.table(
        {"tenure_months": [3.0, 12.0], "extra": [1, 2],
         traffic.PREDICTED_AT: pa.array([NOW, NOW], pa.timestamp("us", tz="UTC"))}
    )  # fmt: skip
    fitted = traffic.as_source(logged, schema=source, timestamp="event_time")
    assert fitted.schema == source
    assert fitted.to_pydict() == {
        "customer_id": [None, None],
        "tenure_months": [3, 12],
        "event_time": [NOW, NOW],
    }
    with pytest.raises(DriftloopError, match=r"column 'tenure_months' \(double\) does not fit"):
        traffic.as_source(pa.table({"tenure_months": [3.5, 1.0]}), schema=source)
