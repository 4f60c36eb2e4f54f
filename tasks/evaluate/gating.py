"""The promotion gate: only a model that is better, by evidence, reaches production.

    decision = gate(challenger=report, champion=champion, config=settings.gate)
    decision.promote, decision.summary(), decision.failed

The gate's rules (`GateConfig`), each recorded with both models' values:
- floors: every model meets absolute bounds (default ROC-AUC >= 0.6, R² >= 0). A first model (no
  champion) is judged on these and on the model-only rules below.
- baseline (a first model): the primary metric beats the trivial model of the same holdout rows
  (the class prior, or the mean) with the low end of a paired bootstrap CI of the gain above 0.
  A refused first model leaves the message of what failed and how to serve it anyway
  (`GateDecision.advice`: `driftloop deploy --version N`).
- gain: the primary metric improves on the champion's by at least `min_improvement` (relative),
  AND the lower bound of the paired bootstrap CI of the difference (at `confidence`, two-sided,
  percentile) is above 0: the gain is both large enough to matter and unlikely to be noise.
- slices: no slice value with >= `min_slice_rows` rows loses more than `max_slice_regression`.
- calibration (classification): the ECE over equal-mass bins suited to the holdout rows
  (`tasks.calibration.ece_interval`) fails only when the low end of its basic bootstrap CI
  (which takes out the ECE's upward bias on few rows) is above `max_calibration_error`; under
  `min_calibration_rows` rows it says "not enough rows" (skipped).
- robustness: the primary metric loses at most `max_robustness_drop` under the worst perturbation.
- holdout (when labelled production rows decided): on the source's holdout, no loss beyond
  `max_holdout_regression`, while the retraining's recency weighting still gives the holdout's
  rows `min_holdout_weight` (below it the source no longer describes the present: skipped).
Tolerances are relative (0.05 = 5% of the reference value), so one default fits ROC-AUC and RMSE.

Which rows decide: the reports handed in. A retraining (or any training once feedback labels
arrived) hands in reports on labelled production rows neither model trained on when there are
`min_production_rows` of them, and the holdout's as a `HoldoutCheck`; otherwise the holdout's.
`GateDecision.basis` says which rows decided, and why.
"""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tasks import events
from tasks.calibration import calibration_error, ece_interval
from tasks.evaluate.measure import (
    CLASSIFICATION_METRICS,
    DEFAULT_PRIMARY,
    HIGHER_IS_BETTER,
    REGRESSION_METRICS,
    EvaluationError,
    EvaluationReport,
    Task,
    fmt,
    metric,
    relative_loss,
)
from tasks.settings import GateConfig, MetricName


@dataclass(frozen=True)
class RuleResult:
    """One rule's outcome: `observed` is compared with `threshold` by `op` (">=", "<=", ">")."""

    rule: str
    champion: float | None
    challenger: float | None
    observed: float | None
    op: str
    threshold: float | None
    passed: bool
    detail: str
    relative: bool = False  # observed and threshold are shares (0.05 = 5%), not metric values
    skipped: bool = False  # not judged (too few rows, nothing to compare): passes, decides nothing


@dataclass(frozen=True)
class HoldoutCheck:
    """Both models on the source's holdout, when labelled production rows decided: a
    no-regression check, as much as the recency weighting still counts the holdout's rows."""

    challenger: EvaluationReport
    champion: EvaluationReport | None  # None: the champion could not score the holdout
    weight: float = 1.0  # the holdout rows' mean recency weight (the newest rows weigh 1)


@dataclass(frozen=True)
class GateDecision:
    """Promote or not, and every rule that decided it."""

    promote: bool
    primary_metric: str
    challenger_value: float  # the primary metric on the rows that decided
    champion_value: float | None  # None: there was no champion (or it could not be scored)
    rules: list[RuleResult]
    champion_version: int | None = None  # the champion judged against: promotion expects it
    decided_on: str = "holdout"  # "holdout" or "production": which rows decided
    rows: int = 0  # how many
    basis: str = ""  # which rows decided and why, for people

    @property
    def failed(self) -> list[RuleResult]:
        return [r for r in self.rules if not r.passed]

    @property
    def has_champion(self) -> bool:
        return self.champion_value is not None

    def summary(self) -> str:
        """One line: the verdict and what decided it."""
        if self.promote:
            what = "beats the champion" if self.has_champion else "first model, floors met"
            where = f" on {self.rows:,} labelled production rows" if self.decided_on != "holdout" \
                else ""  # fmt: skip
            return f"promote: {what}{where} ({len(self.rules)} rules passed)"
        return "reject: " + "; ".join(f"{r.rule} ({r.detail})" for r in self.failed)

    def advice(self, version: int | None = None) -> str | None:
        """For a refused first model: why nothing serves yet and what the user can do."""
        if self.promote or self.has_champion:
            return None
        which = f"--version {version}" if version is not None else "--version N"
        failed = ", ".join(r.rule for r in self.failed)
        return (
            f"no model serves yet: this first model was refused ({failed}); "
            "fix what failed (more rows, better features, or the gate.* settings named) and "
            f"retrain, or serve this version anyway with `driftloop deploy {which}`"
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(events.jsonable(asdict(self)))


def gate(
    *,
    challenger: EvaluationReport,
    champion: EvaluationReport | None,
    config: GateConfig,
    champion_version: int | None = None,
    champion_error: str | None = None,
    holdout: HoldoutCheck | None = None,
    basis: str | None = None,
    challenger_error: str | None = None,
) -> GateDecision:
    """Decide whether `challenger` replaces `champion` (None: there is no champion yet), both
    measured on the same rows: the holdout, or labelled production rows (then `holdout` holds
    both on the holdout, for the no-regression check). `basis`: why these rows decide.

    `champion_error` says why a champion that exists could not be measured on these rows (a
    schema change, say): the challenger is then rejected, never waved through as a first model.
    `challenger_error`: why the challenger could not score the labelled production rows that
    were to decide (a feature the traffic lacks): rejected too.
    """
    primary = primary_metric(challenger.task, config)
    if champion is not None:
        _check_pair(challenger, champion)
    rows = "labelled production rows" if challenger.on != "holdout" else "holdout rows"
    rules = [
        *_comparable_rules(champion_version, champion_error),
        *_scoring_rules(challenger_error),
        *_floor_rules(challenger, champion, config),
        *_baseline_rules(challenger, champion, config, primary),
        *_gain_rules(challenger, champion, config, primary),
        *_slice_rules(challenger, champion, config, primary),
        *_calibration_rules(challenger, champion, config),
        *_robustness_rules(challenger, champion, config, primary),
        *_holdout_rules(holdout, config, primary),
    ]
    return GateDecision(
        promote=all(r.passed for r in rules),
        primary_metric=primary,
        challenger_value=challenger.metrics[primary],
        champion_value=champion.metrics[primary] if champion is not None else None,
        rules=rules,
        champion_version=champion_version,
        decided_on=challenger.on,
        rows=challenger.rows,
        basis=basis or f"{challenger.rows:,} {rows}",
    )


def primary_metric(task: Task, config: GateConfig) -> MetricName:
    """The configured primary metric, checked against the task, or the task's default."""
    name = config.primary_metric or DEFAULT_PRIMARY[task]
    allowed = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    if name not in allowed:
        raise EvaluationError(
            f"gate.primary_metric {name!r} does not fit a {task} task; "
            f"allowed: {', '.join(allowed)}"
        )
    return name


def paired_bootstrap(
    *,
    metric_name: str,
    challenger: tuple[np.ndarray, np.ndarray],
    champion: tuple[np.ndarray, np.ndarray],
    resamples: int,
    seed: int,
    confidence: float,
    bins: int = 15,
) -> tuple[float, float, float]:
    """The gain of the challenger over the champion (positive: better) and its percentile CI.

    Both models are scored on the SAME resampled rows each time, so row-to-row noise that hits
    both alike cancels out of the difference.
    """
    (y_a, pred_a), (y_b, pred_b) = challenger, champion
    sign = 1.0 if HIGHER_IS_BETTER[metric_name] else -1.0

    def gain(rows: np.ndarray | slice) -> float:
        a = metric(metric_name, y_a[rows], pred_a[rows], bins=bins)
        b = metric(metric_name, y_b[rows], pred_b[rows], bins=bins)
        return sign * (a - b)

    rng = np.random.default_rng(seed)
    n = len(y_a)
    draws = np.array([gain(rng.integers(0, n, size=n)) for _ in range(resamples)])
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return gain(slice(None)), math.nan, math.nan
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return gain(slice(None)), float(low), float(high)


def _check_pair(challenger: EvaluationReport, champion: EvaluationReport) -> None:
    if challenger.task != champion.task:
        raise EvaluationError(
            f"cannot compare a {challenger.task} model with a {champion.task} one"
        )
    if challenger.fingerprint != champion.fingerprint:
        raise EvaluationError(
            "the champion and the challenger were evaluated on different rows "
            f"({champion.rows} vs {challenger.rows}): evaluate both on the same holdout"
        )


def _rule(
    rule: str,
    *,
    champion: float | None,
    challenger: float | None,
    observed: float | None,
    op: str,
    threshold: float | None,
    detail: str,
    relative: bool = False,
) -> RuleResult:
    compare = {">=": operator.ge, "<=": operator.le, ">": operator.gt}[op]
    passed = (
        observed is not None
        and threshold is not None
        and math.isfinite(observed)
        and bool(compare(observed, threshold))
    )
    return RuleResult(rule, champion, challenger, observed, op, threshold, passed, detail, relative)


def _comparable_rules(version: int | None, error: str | None) -> list[RuleResult]:
    if error is None:
        return []
    detail = (
        f"champion v{version} could not score these rows ({error}); compare the two by hand and "
        "make this version champion with `driftloop deploy --version N` if it should serve"
    )
    return [_failed("champion: measured on the same rows", detail)]


def _scoring_rules(error: str | None) -> list[RuleResult]:
    if error is None:
        return []
    detail = f"the challenger could not score the labelled production rows ({error})"
    return [_failed("production rows: challenger can score them", detail)]


def _skipped(rule: str, detail: str) -> RuleResult:
    return RuleResult(rule, None, None, None, "", None, True, detail, skipped=True)


def _failed(rule: str, detail: str) -> RuleResult:
    """A rule that could not be measured and so blocks promotion."""
    return RuleResult(rule, None, None, None, "", None, False, detail)


def _floor_rules(
    c: EvaluationReport, champion: EvaluationReport | None, config: GateConfig
) -> list[RuleResult]:
    rules = []
    for name, bound in config.floors.items():
        if name not in c.metrics:
            continue  # a floor for the other task
        op = ">=" if HIGHER_IS_BETTER[name] else "<="
        value = c.metrics[name]
        rules.append(_rule(
            f"floor: {name}", champion=champion.metrics[name] if champion else None,
            challenger=value, observed=value, op=op, threshold=bound,
            detail=f"{name} {fmt(value)} must be {op} {fmt(bound)}",
        ))  # fmt: skip
    return rules


def trivial_predictions(report: EvaluationReport) -> np.ndarray:
    """The trivial model of the report's own rows: the class prior (n, k), or the mean (n,)."""
    y = report.y_true
    if report.task == "regression":
        return np.full(len(y), float(np.mean(y)) if len(y) else 0.0)
    k = len(report.classes or []) or int(y.max(initial=0)) + 1
    prior = np.bincount(y.astype(np.int64), minlength=k)[:k] / max(len(y), 1)
    return np.tile(prior, (len(y), 1))


def _baseline_rules(
    c: EvaluationReport, champion: EvaluationReport | None, config: GateConfig, primary: str
) -> list[RuleResult]:
    if champion is not None:
        return []  # the champion is the bar
    trivial = trivial_predictions(c)
    what = "the class prior" if c.task == "classification" else "the mean"
    base = metric(primary, c.y_true, trivial, bins=c.calibration_bins)
    point, low, high = paired_bootstrap(
        metric_name=primary, challenger=(c.y_true, c.predictions), champion=(c.y_true, trivial),
        resamples=config.bootstrap_resamples, seed=config.bootstrap_seed,
        confidence=config.confidence, bins=c.calibration_bins,
    )  # fmt: skip
    return [_rule(
        f"{primary}: beats the baseline", champion=base, challenger=c.metrics[primary],
        observed=low, op=">", threshold=0.0,
        detail=f"first model against {what} of these {c.rows} rows ({primary} {fmt(base)}): gain "
        f"{point:+.4f}, {config.confidence:.0%} CI [{low:+.4f}, {high:+.4f}] over "
        f"{config.bootstrap_resamples} paired resamples",
    )]  # fmt: skip


def _gain_rules(
    c: EvaluationReport, champion: EvaluationReport | None, config: GateConfig, primary: str
) -> list[RuleResult]:
    if champion is None:
        return [_skipped(f"{primary}: gain over champion", "no champion yet: first model")]
    new, old = c.metrics[primary], champion.metrics[primary]
    gain = -relative_loss(primary, reference=old, value=new)
    point, low, high = paired_bootstrap(
        metric_name=primary, challenger=(c.y_true, c.predictions),
        champion=(champion.y_true, champion.predictions), resamples=config.bootstrap_resamples,
        seed=config.bootstrap_seed, confidence=config.confidence, bins=c.calibration_bins,
    )  # fmt: skip
    level = f"{config.confidence:.0%}"
    return [
        _rule(
            f"{primary}: gain over champion", champion=old, challenger=new, observed=gain,
            op=">=", threshold=config.min_improvement, relative=True,
            detail=f"{fmt(old)} → {fmt(new)}: {gain:+.2%} (needs {config.min_improvement:+.2%})",
        ),
        _rule(
            f"{primary}: gain is significant", champion=old, challenger=new, observed=low,
            op=">", threshold=0.0,
            detail=f"gain {point:+.4f}, {level} CI [{low:+.4f}, {high:+.4f}] over "
            f"{config.bootstrap_resamples} paired resamples of {c.rows} rows",
        ),
    ]  # fmt: skip


def _slice_rules(
    c: EvaluationReport, champion: EvaluationReport | None, config: GateConfig, primary: str
) -> list[RuleResult]:
    if not c.slices:
        return []
    if champion is None:
        return [_skipped("slices: no regression", "no champion yet: first model")]
    rules = []
    for s in c.slices:
        old = champion.slice(s.column, s.value)
        if s.rows < config.min_slice_rows or old is None:
            continue
        new_value, old_value = s.metrics[primary], old.metrics[primary]
        name = f"slice {s.column}={s.value}: {primary}"
        if not (math.isfinite(new_value) and math.isfinite(old_value)):
            rules.append(_skipped(name, f"{primary} undefined in this slice ({s.rows} rows)"))
            continue
        loss = relative_loss(primary, reference=old_value, value=new_value)
        rules.append(_rule(
            name, champion=old_value, challenger=new_value, observed=loss, op="<=",
            threshold=config.max_slice_regression, relative=True,
            detail=f"{s.rows} rows; loss {loss:+.2%} (allowed {config.max_slice_regression:.2%})",
        ))  # fmt: skip
    if not rules:
        return [_skipped("slices: no regression", f"no slice has {config.min_slice_rows}+ rows")]
    return rules


def _calibration_rules(
    c: EvaluationReport, champion: EvaluationReport | None, config: GateConfig
) -> list[RuleResult]:
    if c.task != "classification" or config.max_calibration_error is None:
        return []
    name = "calibration: ECE"
    if c.rows < config.min_calibration_rows:
        least = config.min_calibration_rows
        detail = f"not enough rows: {c.rows} holdout rows < gate.min_calibration_rows={least}"
        return [_skipped(name, detail)]
    found = ece_interval(
        c.y_true, c.predictions, max_bins=c.calibration_bins, resamples=config.bootstrap_resamples,
        confidence=config.confidence, seed=config.bootstrap_seed,
    )  # fmt: skip
    old = (
        calibration_error(champion.y_true, champion.predictions, bins=found.bins)
        if champion is not None and len(champion.y_true) else None
    )  # fmt: skip
    return [_rule(
        name, champion=old, challenger=found.ece, observed=found.low, op="<=",
        threshold=config.max_calibration_error,
        detail=f"ECE {fmt(found.ece)} ({fmt(found.debiased)} less the noise of few rows a bin) "
        f"over {found.bins} equal-mass bins of {c.rows} rows, {config.confidence:.0%} CI "
        f"[{fmt(found.low)}, {fmt(found.high)}] (basic bootstrap, {config.bootstrap_resamples} "
        "resamples); fails only when the CI's low end is above the bound",
    )]  # fmt: skip


def _robustness_rules(
    c: EvaluationReport, champion: EvaluationReport | None, config: GateConfig, primary: str
) -> list[RuleResult]:
    if config.max_robustness_drop is None or not c.robustness:
        return []
    kind, loss = _worst_loss(c, primary)
    old = _worst_loss(champion, primary)[1] if champion and champion.robustness else None
    detail = (
        f"worst perturbation: {kind} ({primary} {fmt(c.metrics[primary])} → "
        f"{fmt(c.robustness[kind][primary])})"
    )
    if kind in c.robustness_errors:
        detail = f"the model failed under {kind}: {c.robustness_errors[kind]}"
    return [_rule(
        f"robustness: {primary} loss", champion=old, challenger=loss, observed=loss, op="<=",
        threshold=config.max_robustness_drop, relative=True, detail=detail,
    )]  # fmt: skip


def _worst_loss(report: EvaluationReport, primary: str) -> tuple[str, float]:
    clean = report.metrics[primary]
    losses = {
        kind: relative_loss(primary, reference=clean, value=m[primary])
        for kind, m in report.robustness.items()
    }
    kind = max(losses, key=lambda k: losses[k] if math.isfinite(losses[k]) else math.inf)
    return kind, losses[kind]


def _holdout_rules(
    check: HoldoutCheck | None, config: GateConfig, primary: str
) -> list[RuleResult]:
    if check is None:
        return []
    name = f"holdout: {primary}"
    c = check.challenger
    if check.champion is None:
        return [_skipped(name, "the champion could not score the source's holdout")]
    if check.weight < config.min_holdout_weight:
        detail = (
            f"{c.rows:,} source holdout rows weigh {check.weight:.3g} on average under the "
            f"chosen recency weighting (< gate.min_holdout_weight {config.min_holdout_weight:g}): "
            "the source no longer describes the present"
        )
        return [_skipped(name, detail)]
    new, old = c.metrics[primary], check.champion.metrics[primary]
    loss = relative_loss(primary, reference=old, value=new)
    return [_rule(
        name, champion=old, challenger=new, observed=loss, op="<=",
        threshold=config.max_holdout_regression, relative=True,
        detail=f"{c.rows:,} source holdout rows; loss {loss:+.2%} "
        f"(allowed {config.max_holdout_regression:.2%})",
    )]  # fmt: skip
