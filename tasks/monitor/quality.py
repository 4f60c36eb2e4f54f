"""Model quality on a window: measured where feedback labels arrived, else estimated (CBPE).

    q = measured(y, probs, metric="roc_auc", baseline=0.85, task="classification", config=cfg)
    q = estimated(probs, metric="roc_auc", baseline=0.85, config=cfg)
    q.decayed, q.describe()

Measured: the metric on the labelled rows of the window, with a percentile bootstrap CI.
Estimated: confidence-based performance estimation (CBPE, as in NannyML): with calibrated
probabilities, row i is positive with probability p_i, so the expected accuracy is the mean of
max_k p_ik and the expected ROC-AUC is the share of (positive, negative) pairs ranked right,
each pair weighted by p_i (1 - p_j). It assumes P(y|x) held: it follows covariate shift, and it
cannot see concept drift (only labels can); it is reported as an estimate.

Decay: the window's value is worse than the champion's holdout value by more than
`monitoring.max_quality_drop` (relative), AND the better end of its CI is still worse than the
holdout value: a drop both large enough to matter and unlikely to be noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from tasks.evaluate import HIGHER_IS_BETTER, metric, relative_loss
from tasks.settings import MonitoringConfig

Source = Literal["measured", "estimated", "none"]
ESTIMABLE = ("roc_auc", "accuracy")  # what CBPE estimates from probabilities alone
NAMES = {
    "roc_auc": "ROC-AUC",
    "accuracy": "accuracy",
    "pr_auc": "PR-AUC",
    "r2": "R²",
    "rmse": "RMSE",
    "mae": "MAE",
    "f1": "F1",
    "log_loss": "log loss",
    "brier": "Brier",
    "ece": "ECE",
}


@dataclass(frozen=True)
class Quality:
    """The model's quality on a window, where it came from, and whether it decayed."""

    source: Source
    metric: str
    value: float | None
    low: float | None  # the CI (at monitoring.confidence)
    high: float | None
    baseline: float | None  # the champion's value on its holdout (registry metadata)
    rows: int  # labelled rows measured on, or rows estimated on
    decayed: bool
    loss: float | None  # relative loss against the baseline (positive: worse)
    detail: str = ""

    def describe(self) -> str:
        """One line: "ROC-AUC 0.612 measured on 1,200 labelled rows (CI 0.58-0.64) vs 0.854
        on the holdout (-28.3%): decayed"."""
        if self.source == "none" or self.value is None:
            return f"quality unknown: {self.detail}"
        name = NAMES.get(self.metric, self.metric)
        how = (
            f"measured on {self.rows:,} labelled rows"
            if self.source == "measured"
            else f"estimated from the probabilities of {self.rows:,} rows (CBPE)"
        )
        ci = f" (CI {self.low:.3f}-{self.high:.3f})" if self.low is not None else ""
        against = (
            f" vs {self.baseline:.3f} on the holdout ({-(self.loss or 0):+.1%})"
            if self.baseline is not None
            else ""
        )
        verdict = ": decayed" if self.decayed else ": holds"
        return f"{name} {self.value:.3f} {how}{ci}{against}{verdict}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.describe()}


def unknown(detail: str, *, metric_name: str = "") -> Quality:
    return Quality(
        source="none",
        metric=metric_name,
        value=None,
        low=None,
        high=None,
        baseline=None,
        rows=0,
        decayed=False,
        loss=None,
        detail=detail,
    )


def measured(
    y: np.ndarray,
    pred: np.ndarray,
    *,
    metric_name: str,
    baseline: float | None,
    config: MonitoringConfig,
) -> Quality:
    """The metric on labelled rows (`y`: class indices or values; `pred`: probabilities (n, k)
    or values (n,)), its bootstrap CI, and the verdict against the holdout `baseline`."""
    value = metric(metric_name, y, pred)
    low, high = bootstrap(
        lambda idx: metric(metric_name, y[idx], pred[idx]), rows=len(y), config=config
    )
    return _judged("measured", metric_name, value, low, high, baseline, rows=len(y), config=config)


def estimated(
    probs: np.ndarray, *, metric_name: str, baseline: float | None, config: MonitoringConfig
) -> Quality:
    """CBPE's expected `metric_name` (roc_auc or accuracy) from calibrated probabilities."""
    if metric_name not in ESTIMABLE:
        raise ValueError(f"CBPE estimates {' and '.join(ESTIMABLE)}, not {metric_name!r}")
    estimate = expected_roc_auc if metric_name == "roc_auc" else expected_accuracy
    value = estimate(probs)
    low, high = bootstrap(lambda idx: estimate(probs[idx]), rows=len(probs), config=config)
    quality = _judged(
        "estimated", metric_name, value, low, high, baseline, rows=len(probs), config=config
    )
    detail = "an estimate: it assumes P(y|x) held, so only labels can show concept drift"
    return Quality(**{**asdict(quality), "detail": detail})


def expected_accuracy(probs: np.ndarray) -> float:
    """CBPE's accuracy: each row is right with the probability of its most likely class."""
    probs = np.asarray(probs, dtype=np.float64)
    return float(probs.max(axis=1).mean()) if len(probs) else math.nan


def expected_roc_auc(probs: np.ndarray) -> float:
    """CBPE's ROC-AUC: binary from the positive column; multiclass the one-vs-rest mean."""
    probs = np.asarray(probs, dtype=np.float64)
    columns = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    values = [_expected_binary_auc(probs[:, c]) for c in columns]
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _expected_binary_auc(p: np.ndarray) -> float:
    """The AUC expected when row i is positive with probability p_i: over pairs of rows i != j,
    the weight p_i (1 - p_j) of pairs with i scored above j (ties count half), over the weight
    of all pairs."""
    p = np.sort(np.asarray(p, dtype=np.float64))
    self_pairs = float(np.sum(p * (1 - p)))
    pairs = p.sum() * (1 - p).sum() - self_pairs
    if len(p) < 2 or pairs <= 0:
        return math.nan
    _, starts = np.unique(p, return_index=True)  # groups of equal scores, in ascending order
    negatives_before = np.concatenate([[0.0], np.cumsum(1 - p)])
    below = negatives_before[starts]  # negative mass scored strictly lower than the group
    tied = np.diff(np.append(negatives_before[starts], negatives_before[-1]))  # within the group
    positives = np.add.reduceat(p, starts)
    right = np.sum(positives * below) + 0.5 * (np.sum(positives * tied) - self_pairs)
    return float(right / pairs)


def bootstrap(
    statistic: Callable[[np.ndarray], float], *, rows: int, config: MonitoringConfig
) -> tuple[float | None, float | None]:
    """The percentile CI of `statistic(indices)` over row resamples (seeded); None for no rows."""
    if rows < 2:
        return None, None
    rng = np.random.default_rng(config.seed)
    values = np.array(
        [statistic(rng.integers(0, rows, rows)) for _ in range(config.bootstrap_resamples)]
    )
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None, None
    tail = (1 - config.confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _judged(
    source: Source,
    metric_name: str,
    value: float,
    low: float | None,
    high: float | None,
    baseline: float | None,
    *,
    rows: int,
    config: MonitoringConfig,
) -> Quality:
    if not math.isfinite(value):
        return unknown(
            f"{metric_name} is undefined on these {rows} rows (one class only?)",
            metric_name=metric_name,
        )
    if baseline is None or not math.isfinite(baseline):
        detail = f"the champion has no holdout {metric_name} to compare with"
        return Quality(
            source=source,
            metric=metric_name,
            value=value,
            low=low,
            high=high,
            baseline=None,
            rows=rows,
            decayed=False,
            loss=None,
            detail=detail,
        )
    loss = relative_loss(metric_name, reference=baseline, value=value)
    better_end = high if HIGHER_IS_BETTER[metric_name] else low
    still_worse = (
        better_end is not None
        and relative_loss(metric_name, reference=baseline, value=better_end) > 0
    )
    decayed = loss > config.max_quality_drop and still_worse
    return Quality(
        source=source,
        metric=metric_name,
        value=value,
        low=low,
        high=high,
        baseline=baseline,
        rows=rows,
        decayed=decayed,
        loss=loss,
    )
