"""The rollout's judgement (tasks/monitor/canary.py) on evidence built here: promote a candidate
that is not worse, roll back one that is, wait while undecided, and judge each milestone once."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa

from tasks import traffic
from tasks.monitor.canary import Judgement, judge, milestones
from tasks.monitor.evidence import Evidence
from tasks.settings import RolloutConfig

START = datetime(2026, 12, 1, tzinfo=timezone.utc)
CONFIG = RolloutConfig(min_rows=200, max_rows=4_000, tolerance=0.01, resamples=200)


def rows(
    n: int, *, version: int, skill: float, seed: int, labelled: float = 1.0, latency: float = 1.0
) -> pa.Table:
    """`n` answered rows of a binary model whose probabilities follow the label with `skill`
    (0: noise, 1: sharp), and the labels that came back for a share of them."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    logit = skill * 4 * (y - 0.5) + rng.normal(0, 1, n)
    p = 1 / (1 + np.exp(-logit))
    label = pa.array([int(v) if rng.random() < labelled else None for v in y], pa.int64())
    return pa.table({
        traffic.REQUEST_ID: [f"{version}-{seed}-{i:06d}" for i in range(n)],
        traffic.PREDICTED_AT: pa.array([START + timedelta(seconds=i) for i in range(n)],
                                       pa.timestamp("us", tz="UTC")),
        traffic.MODEL_VERSION: np.full(n, version, np.int64),
        traffic.LATENCY_MS: rng.normal(latency, 0.05, n),
        traffic.PREDICTION: (p > 0.5).astype(np.int64),
        f"{traffic.PROBABILITY}0": 1 - p,
        f"{traffic.PROBABILITY}1": p,
        "y": label,
    })  # fmt: skip


def evidence(champion: pa.Table, candidate: pa.Table, *, failures: int = 0) -> Evidence:
    return Evidence(mode="canary", champion=champion, candidate=candidate, failures=failures,
                    started=START, target="y", classes=["0", "1"])  # fmt: skip


def decide(found: Evidence, *, minutes: float = 1, config: RolloutConfig = CONFIG) -> Judgement:
    return judge(found, config=config, metric_name="roc_auc", champion=1, candidate=2,
                 now=START + timedelta(minutes=minutes))  # fmt: skip


def test_a_candidate_as_good_as_the_champion_is_promoted_on_its_labelled_rows() -> None:
    found = evidence(
        rows(3_600, version=1, skill=1.0, seed=1), rows(400, version=2, skill=1.0, seed=2)
    )
    verdict = decide(found)
    assert verdict.decision == "promote", verdict.reason
    assert verdict.basis == "labels"
    assert verdict.look_rows == 400  # the highest milestone both reached: 200, 400
    assert verdict.high is not None
    assert verdict.high <= CONFIG.tolerance
    assert "not worse than the champion" in verdict.reason
    assert {"failures", "latency", "roc_auc: not worse"} == {r["rule"] for r in verdict.rules}


def test_a_worse_candidate_is_rolled_back_as_soon_as_it_is_worse_with_confidence() -> None:
    found = evidence(
        rows(3_600, version=1, skill=1.0, seed=1), rows(200, version=2, skill=0.0, seed=3)
    )
    verdict = decide(found)
    assert verdict.decision == "roll_back", verdict.reason
    assert verdict.look_rows == 200
    assert verdict.low is not None
    assert verdict.low > 0
    assert (verdict.candidate.value or 1) < 0.6 < (verdict.champion.value or 0)
    assert "worse than the champion with confidence" in verdict.reason


def test_until_min_rows_are_labelled_it_waits_and_says_how_far_it_is() -> None:
    found = evidence(
        rows(1_000, version=1, skill=1.0, seed=1), rows(150, version=2, skill=0.0, seed=3)
    )
    verdict = decide(found)
    assert verdict.decision == "continue"
    assert verdict.reason.startswith("150 labelled rows of each model (judged from 200)")


def test_a_milestone_is_judged_on_its_first_rows_only_so_asking_again_changes_nothing() -> None:
    champion = rows(3_600, version=1, skill=1.0, seed=1)
    candidate = rows(390, version=2, skill=0.9, seed=4)
    early = decide(evidence(champion, candidate.slice(0, 250)))
    later = decide(evidence(champion, candidate))  # 140 more labelled rows, the same milestone
    assert early.look_rows == later.look_rows == 200
    assert (early.loss, early.low, early.high) == (later.loss, later.low, later.high)
    # one look per milestone, each at the confidence split over all of them (Bonferroni)
    assert milestones(CONFIG) == [200, 400, 800, 1600, 3200]
    assert early.confidence == 1 - 0.05 / 5


def test_a_candidate_that_fails_or_is_slow_is_rolled_back_on_operations_alone() -> None:
    champion, candidate = (
        rows(900, version=1, skill=1.0, seed=1),
        rows(100, version=2, skill=1.0, seed=2),
    )
    failing = decide(evidence(champion, candidate, failures=5))
    assert failing.decision == "roll_back"
    assert failing.basis == "operations"
    assert failing.error_rate == 5 / 105
    assert "failed on 4.76% of its rows" in failing.reason
    slow = decide(evidence(champion, rows(100, version=2, skill=1.0, seed=2, latency=5.0)))
    assert slow.decision == "roll_back"
    assert "median latency" in slow.reason


def test_without_labels_the_budget_ends_it_on_cbpe_s_estimate() -> None:
    champion = rows(3_000, version=1, skill=1.0, seed=1, labelled=0.0)
    good = evidence(champion, rows(300, version=2, skill=1.0, seed=2, labelled=0.0))
    assert decide(good, minutes=30).decision == "continue"  # in budget: it waits for labels
    ended = decide(good, minutes=CONFIG.max_minutes + 1)
    assert ended.decision == "promote", ended.reason
    assert ended.basis == "estimate"
    assert "CBPE" in ended.reason
    noise = evidence(champion, rows(300, version=2, skill=0.0, seed=5, labelled=0.0))
    rolled = decide(noise, minutes=CONFIG.max_minutes + 1)
    assert rolled.decision == "roll_back"
    assert rolled.basis == "estimate"


def test_undecided_when_the_rows_run_out_is_rolled_back() -> None:
    config = CONFIG.model_copy(update={"max_rows": 300})
    found = evidence(
        rows(3_000, version=1, skill=0.5, seed=1), rows(300, version=2, skill=0.5, seed=6)
    )  # as good, but 200 rows of a weak model cannot show it within 1%
    verdict = decide(found, config=config)
    assert verdict.decision == "roll_back", verdict.reason
    assert verdict.reason.startswith("undecided when the budget (300 rows or 120 minutes) ran out")
    assert verdict.low is not None
    assert verdict.high is not None
    assert verdict.low < 0 < CONFIG.tolerance < verdict.high


def sliced(n: int, *, version: int, skills: dict[str, float], seed: int) -> pa.Table:
    """`rows` in two values of a slice column, each with its own skill."""
    parts = []
    for i, (value, skill) in enumerate(skills.items()):
        part = rows(n // 2, version=version, skill=skill, seed=seed * 10 + i)
        parts.append(part.append_column("contract", pa.array([value] * part.num_rows)))
    return pa.concat_tables(parts).sort_by(traffic.PREDICTED_AT)


def test_a_candidate_not_worse_overall_waits_while_a_slice_loses_too_much() -> None:
    champion = sliced(3_600, version=1, skills={"x": 1.0, "y": 1.0}, seed=1)
    candidate = sliced(800, version=2, skills={"x": 3.0, "y": 0.7}, seed=2)  # y: worse
    found = replace(evidence(champion, candidate), slices=("contract",))
    args = {"config": CONFIG, "metric_name": "roc_auc", "champion": 1, "candidate": 2,
            "now": START + timedelta(minutes=1), "min_slice_rows": 200}  # fmt: skip
    lenient = judge(found, **args, max_slice_regression=0.05)  # type: ignore[arg-type]
    assert lenient.decision == "promote", lenient.reason
    strict = judge(found, **args, max_slice_regression=0.02)  # type: ignore[arg-type]
    assert strict.decision == "continue"
    assert strict.reason.endswith("but slice contract=y loses 2.46% (> 2.00%)")
    verdicts = {r["rule"]: r["verdict"] for r in strict.rules if r["rule"].startswith("slice")}
    assert verdicts == {"slice contract=x": "passed", "slice contract=y": "failed"}


def test_a_shadow_reports_how_often_the_two_models_agree() -> None:
    champion = rows(400, version=1, skill=1.0, seed=1)
    same = champion.set_column(2, traffic.MODEL_VERSION, pa.array(np.full(400, 2, np.int64)))
    flipped = same.set_column(
        same.column_names.index(traffic.PREDICTION), traffic.PREDICTION,
        pa.array(np.r_[1 - same[traffic.PREDICTION].to_numpy()[:100],
                       same[traffic.PREDICTION].to_numpy()[100:]]),
    )  # fmt: skip
    found = Evidence(mode="shadow", champion=champion, candidate=flipped, failures=0,
                     started=START, target="y", classes=["0", "1"])  # fmt: skip
    verdict = decide(found)
    assert verdict.agreement == 0.75
    assert "| agreement with the champion | – | 75.00% |" in verdict.markdown()
