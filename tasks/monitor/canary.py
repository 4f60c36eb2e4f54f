"""The judgement of a rollout: is the candidate not worse than the champion on live traffic?

    found = read_evidence(home=home, model="churn", target="churned", rollout=rollout)
    verdict = judge(found, config=settings.rollout, metric_name="roc_auc", now=now)
    verdict.decision            # "promote", "roll_back" or "continue"; verdict.reason says why

The evidence (tasks/monitor/evidence.py): the rows each model answered since the rollout began
(a canary: the requests each one answered; a shadow: the same requests, answered by the champion
and scored by the candidate in the shadow log), the feedback labels that came for them, and the
failures the replicas wrote down for the candidate.

The rules, in order:
1. Operations, from `min_requests` rows on: the candidate's failures per row it took above
   `max_error_rate`, or its median latency above `max_latency_ratio` x the champion's + 1 ms:
   rolled back.
2. Quality, from `min_rows` labelled rows of each model on: the primary metric of each, and a
   bootstrap CI of the candidate's relative loss (paired on a shadow's common rows, each model's
   rows resampled on their own for a canary). Worse with confidence (the CI's low end above 0):
   rolled back. Not worse beyond `tolerance` with confidence (the CI's high end at most
   `tolerance`): promoted, unless a slice (the dataset's `slices`) with `gate.min_slice_rows`
   labelled rows of each loses more than `gate.max_slice_regression`. Else it goes on. The
   gate's rules, on live rows. A shadow also reports how often the two models agree.
   Repeated looks would spend the error rate many times over, so the metric is judged only at
   milestones (min_rows, 2x, 4x ... labelled rows of the candidate, on exactly the first that
   many: a look at a milestone gives the same answer however often it is asked), each at the
   confidence split evenly over the milestones the budget allows (Bonferroni).
3. The budget (`max_rows` rows of the candidate, or `max_minutes`): still undecided, a
   classifier without enough labels is judged on CBPE's estimate of the metric from each
   model's probabilities (it assumes calibration and cannot see concept drift: it says so);
   anything else still undecided is rolled back. An undecided candidate never stays.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks import traffic
from tasks.evaluate import metric, relative_loss
from tasks.monitor.evidence import (
    Evidence,
    agreement,
    count_labelled,
    milestone_rows,
    probabilities,
    suffix,
    y_and_outputs,
)
from tasks.monitor.quality import NAMES, expected_roc_auc
from tasks.settings import RolloutConfig

Decision = Literal["promote", "roll_back", "continue"]


@dataclass(frozen=True)
class Arm:
    """One model's figures in a judgement."""

    version: int
    rows: int  # answered (canary) or scored (shadow)
    labelled: int
    value: float | None  # the primary metric on the rows judged (or CBPE's estimate)
    latency_p50_ms: float | None


@dataclass(frozen=True)
class Judgement:
    decision: Decision
    reason: str
    metric: str
    basis: str  # "labels", "estimate" or "operations"
    champion: Arm
    candidate: Arm
    loss: float | None = None  # the candidate's relative loss (positive: worse)
    low: float | None = None  # its CI at the look's confidence
    high: float | None = None
    look_rows: int | None = None  # the milestone judged at (labelled rows of each model)
    confidence: float | None = None  # of this look (after the split over milestones)
    failures: int = 0
    error_rate: float | None = None
    agreement: float | None = None  # a shadow: the share of requests both models answered alike
    rules: list[dict[str, Any]] = field(default_factory=list)  # every rule and what it found

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        """The evidence as a table, for the Prefect artifact and the status."""
        name = NAMES.get(self.metric, self.metric)
        lines = [
            f"**{self.decision.replace('_', ' ')}**: {self.reason}",
            "",
            "| | champion | candidate |",
            "|---|---|---|",
            f"| version | v{self.champion.version} | v{self.candidate.version} |",
            f"| rows | {self.champion.rows:,} | {self.candidate.rows:,} |",
            f"| labelled rows | {self.champion.labelled:,} | {self.candidate.labelled:,} |",
            f"| {name} ({self.basis}) | {_fmt(self.champion.value)} | "
            f"{_fmt(self.candidate.value)} |",
            f"| median latency, ms | {_fmt(self.champion.latency_p50_ms, 2)} | "
            f"{_fmt(self.candidate.latency_p50_ms, 2)} |",
            f"| failures | – | {self.failures:,} |",
            *(
                [f"| agreement with the champion | – | {self.agreement:.2%} |"]
                if self.agreement is not None
                else []
            ),
            "",
            "| rule | found | passed |",
            "|---|---|---|",
        ]
        lines += [f"| {r['rule']} | {r['detail']} | {r['verdict']} |" for r in self.rules]
        return "\n".join(lines)


# The judgement ------------------------------------------------------------------------------------


def judge(
    found: Evidence,
    *,
    config: RolloutConfig,
    metric_name: str,
    champion: int,
    candidate: int,
    now: datetime | None = None,
    min_slice_rows: int = 200,
    max_slice_regression: float = 0.05,
) -> Judgement:
    """The decision on the evidence, by the rules of the module's docstring (a slice's rule
    is the gate's: `gate.min_slice_rows`, `gate.max_slice_regression`)."""
    now = now or datetime.now(timezone.utc)
    champ_rows, cand_rows, target = found.champion, found.candidate, found.target
    rules: list[dict[str, Any]] = []
    took = cand_rows.num_rows + found.failures
    rate = found.failures / took if took else None

    def decided(decision: Decision, reason: str, basis: str, values: tuple[Any, Any] = (None, None),
                **judged: Any) -> Judgement:  # fmt: skip
        return Judgement(
            decision=decision, reason=reason, metric=metric_name, basis=basis,
            champion=_arm(champion, champ_rows, target, values[0]),
            candidate=_arm(candidate, cand_rows, target, values[1]),
            failures=found.failures, error_rate=rate, rules=rules,
            agreement=agreement(found), **judged,
        )  # fmt: skip

    # 1. operations
    if took >= config.min_requests and rate is not None:
        bad = rate > config.max_error_rate
        rules.append(_rule("failures", f"{found.failures:,} of {took:,} rows ({rate:.2%}; "
                           f"allowed {config.max_error_rate:.2%})", not bad))  # fmt: skip
        if bad:
            why = f"the candidate failed on {rate:.2%} of its rows (> {config.max_error_rate:.2%})"
            return decided("roll_back", why, "operations")
        slow = _latency_rule(champ_rows, cand_rows, config, rules)
        if slow:
            return decided("roll_back", slow, "operations")

    # 2. quality on labels, at the highest milestone both models reached
    looks = milestones(config)
    confidence = 1 - (1 - config.confidence) / len(looks)
    have = min(count_labelled(cand_rows, target), count_labelled(champ_rows, target))
    elapsed = (now - found.started).total_seconds()
    spent = cand_rows.num_rows >= config.max_rows or elapsed >= config.max_minutes * 60
    reached = [m for m in looks if have >= m]
    if reached:
        m = reached[-1]
        a_rows, b_rows = milestone_rows(found, m)
        y_a, p_a = y_and_outputs(a_rows, target, found.classes)
        y_b, p_b = y_and_outputs(b_rows, target, found.classes, suffix=suffix(found))
        paired = found.mode == "shadow"
        interval = _loss_interval(y_a, p_a, y_b, p_b, metric_name=metric_name, paired=paired,
                                  config=config, confidence=confidence)  # fmt: skip
        verdict = _verdict(interval, config)
        rules.append(_rule(f"{metric_name}: not worse", f"{_interval(interval, confidence)} on "
                           f"the first {m:,} labelled rows of each (tolerance "
                           f"{config.tolerance:.2%})", verdict != "roll_back"))  # fmt: skip
        values = (metric(metric_name, y_a, p_a), metric(metric_name, y_b, p_b))
        judged = {"loss": interval[0], "low": interval[1], "high": interval[2], "look_rows": m,
                  "confidence": confidence}  # fmt: skip
        why = _why(verdict, metric_name, interval, config)
        worst = _slice_rule(found, a_rows, b_rows, metric_name=metric_name, rules=rules,
                            min_rows=min_slice_rows, max_loss=max_slice_regression)  # fmt: skip
        if verdict == "promote" and worst is not None:  # not while a slice loses too much
            verdict, why = "continue", f"{why}, but {worst}"
        if verdict == "continue" and spent:
            verdict, why = "roll_back", f"undecided when {_budget(config)} ran out: {why}"
        return decided(verdict, why, "labels", values, **judged)
    if not spent:
        why = (f"{have:,} labelled rows of each model (judged from {looks[0]:,}); "
               f"{cand_rows.num_rows:,} of {config.max_rows:,} rows of the candidate, "
               f"{elapsed / 60:.1f} of {config.max_minutes:g} minutes")  # fmt: skip
        return decided("continue", why, "labels")

    # 3. the budget ran out without the labels to judge: CBPE's estimate, or roll back
    if found.classes is None or metric_name != "roc_auc":
        why = (f"{have:,} labelled rows (< {looks[0]:,}) when {_budget(config)} ran out, and "
               f"no estimate of {metric_name} without labels")  # fmt: skip
        return decided("roll_back", why, "labels")
    p_a, p_b = probabilities(champ_rows, found.classes), probabilities(cand_rows, found.classes)
    interval = _estimated_interval(p_a, p_b, paired=found.mode == "shadow", config=config)
    verdict = "promote" if _verdict(interval, config) == "promote" else "roll_back"
    rules.append(_rule(f"{metric_name}: not worse (CBPE estimate)",
                       f"{_interval(interval, config.confidence)} on every row",
                       verdict == "promote"))  # fmt: skip
    why = (
        f"{_why(verdict, metric_name, interval, config)}, estimated without labels (CBPE: "
        "it assumes calibrated probabilities and cannot see concept drift)"
    )
    values = (expected_roc_auc(p_a), expected_roc_auc(p_b))
    return decided(verdict, why, "estimate", values, loss=interval[0], low=interval[1],
                   high=interval[2])  # fmt: skip


def milestones(config: RolloutConfig) -> list[int]:
    """The labelled-row counts the metric is judged at: min_rows, doubling, up to max_rows."""
    looks = [config.min_rows]
    while looks[-1] * 2 <= max(config.max_rows, config.min_rows):
        looks.append(looks[-1] * 2)
    return looks


Interval = tuple[float | None, float | None, float | None]  # the loss and its CI


def _verdict(interval: Interval, config: RolloutConfig) -> Decision:
    """Worse with confidence: roll back; not worse beyond the tolerance with it: promote."""
    _, low, high = interval
    if low is not None and low > 0:
        return "roll_back"
    if high is not None and high <= config.tolerance:
        return "promote"
    return "continue"


def _loss_interval(
    y_a: np.ndarray, p_a: np.ndarray, y_b: np.ndarray, p_b: np.ndarray, *, metric_name: str,
    paired: bool, config: RolloutConfig, confidence: float,
) -> Interval:  # fmt: skip
    """The candidate's (b) relative loss against the champion (a) and its bootstrap CI: paired
    resamples of the same rows for a shadow, each model's rows on their own for a canary."""

    def loss(ia: np.ndarray, ib: np.ndarray) -> float:
        a, b = metric(metric_name, y_a[ia], p_a[ia]), metric(metric_name, y_b[ib], p_b[ib])
        return (
            relative_loss(metric_name, reference=a, value=b) if math.isfinite(a + b) else math.nan
        )

    rng = np.random.default_rng(config.seed)
    n_a, n_b = len(y_a), len(y_b)
    draws = []
    for _ in range(config.resamples):
        ia = rng.integers(0, n_a, n_a)
        draws.append(loss(ia, ia if paired else rng.integers(0, n_b, n_b)))
    return _percentiles(loss(np.arange(n_a), np.arange(n_b)), np.array(draws), confidence)


def _estimated_interval(
    p_a: np.ndarray, p_b: np.ndarray, *, paired: bool, config: RolloutConfig
) -> Interval:
    """The same for CBPE's expected ROC-AUC of each model's own probabilities."""

    def loss(ia: np.ndarray, ib: np.ndarray) -> float:
        a, b = expected_roc_auc(p_a[ia]), expected_roc_auc(p_b[ib])
        return relative_loss("roc_auc", reference=a, value=b) if math.isfinite(a + b) else math.nan

    rng = np.random.default_rng(config.seed)
    draws = []
    for _ in range(config.resamples):
        ia = rng.integers(0, len(p_a), len(p_a))
        draws.append(loss(ia, ia if paired else rng.integers(0, len(p_b), len(p_b))))
    whole = loss(np.arange(len(p_a)), np.arange(len(p_b)))
    return _percentiles(whole, np.array(draws), config.confidence)


def _percentiles(value: float, draws: np.ndarray, confidence: float) -> Interval:
    draws = draws[np.isfinite(draws)]
    if not math.isfinite(value) or draws.size == 0:
        return None, None, None
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(value), float(low), float(high)


# The rows -----------------------------------------------------------------------------------------


def _slice_rule(
    found: Evidence, a: pa.Table, b: pa.Table, *, metric_name: str, rules: list[dict[str, Any]],
    min_rows: int, max_loss: float,
) -> str | None:  # fmt: skip
    """The gate's slice rule on the milestone's rows: no slice value with `min_rows` labelled
    rows of each model loses more than `max_loss`. Its rules are added; the worst slice that
    fails, in words (None: none fails)."""
    worst: tuple[float, str] | None = None
    for column in found.slices:
        values = set(a[column].to_pylist()) & set(b[column].to_pylist())
        for value in sorted(values, key=str):
            sa = a.filter(pc.equal(a[column], value))
            sb = b.filter(pc.equal(b[column], value))
            if min(sa.num_rows, sb.num_rows) < min_rows:
                continue
            va = metric(metric_name, *y_and_outputs(sa, found.target, found.classes))
            vb = metric(metric_name, *y_and_outputs(sb, found.target, found.classes,
                                                      suffix=suffix(found)))  # fmt: skip
            if not math.isfinite(va + vb):
                continue
            loss = relative_loss(metric_name, reference=va, value=vb)
            name = f"slice {column}={value}"
            rules.append(_rule(name, f"{min(sa.num_rows, sb.num_rows):,} rows; loss {_pct(loss)} "
                               f"(allowed {max_loss:.2%})", loss <= max_loss))  # fmt: skip
            if loss > max_loss and (worst is None or loss > worst[0]):
                worst = (loss, f"{name} loses {loss:.2%} (> {max_loss:.2%})")
    return None if worst is None else worst[1]


def _arm(version: int, rows: pa.Table, target: str, value: float | None) -> Arm:
    latency = (
        float(np.median(rows[traffic.LATENCY_MS].to_numpy()))
        if rows.num_rows and traffic.LATENCY_MS in rows.column_names
        else None
    )
    finite = value if value is not None and math.isfinite(value) else None
    return Arm(version, rows.num_rows, count_labelled(rows, target), finite, latency)


def _latency_rule(
    champion: pa.Table, candidate: pa.Table, config: RolloutConfig, rules: list[dict[str, Any]]
) -> str | None:
    """Why the candidate is too slow (None: it is not), its rule added to `rules`."""
    a = _arm(0, champion, "", None).latency_p50_ms
    b = _arm(0, candidate, "", None).latency_p50_ms
    if a is None or b is None:
        return None
    bound = a * config.max_latency_ratio + 1.0
    rules.append(_rule("latency", f"median {b:.2f} ms against the champion's {a:.2f} ms "
                       f"(allowed {bound:.2f})", b <= bound))  # fmt: skip
    return None if b <= bound else f"its median latency is {b:.2f} ms (> {bound:.2f} ms)"


# Words --------------------------------------------------------------------------------------------


def _rule(rule: str, detail: str, passed: bool) -> dict[str, Any]:
    return {"rule": rule, "detail": detail, "verdict": "passed" if passed else "failed"}


def _why(verdict: Decision, name: str, interval: Interval, config: RolloutConfig) -> str:
    loss, low, high = interval
    shown = f"{NAMES.get(name, name)} loss {_pct(loss)}, CI [{_pct(low)}, {_pct(high)}]"
    if verdict == "roll_back":
        return f"worse than the champion with confidence ({shown})"
    if verdict == "promote":
        return f"not worse than the champion beyond {config.tolerance:.2%} ({shown})"
    return f"not decided yet ({shown})"


def _interval(interval: Interval, confidence: float) -> str:
    loss, low, high = interval
    return f"loss {_pct(loss)}, {confidence:.2%} CI [{_pct(low)}, {_pct(high)}]"


def _budget(config: RolloutConfig) -> str:
    return f"the budget ({config.max_rows:,} rows or {config.max_minutes:g} minutes)"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2%}"


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"
