"""Evaluation and the promotion gate: only a model that is better, by evidence, reaches production.

    ds, cfg = settings.dataset, settings.evaluation
    report = evaluate(predictor, splits.holdout, dataset=ds, config=cfg)
    old = load_model(registry.resolve(root=home, model=ds.name, ref="champion"))
    champion = evaluate(old, splits.holdout, dataset=ds, config=cfg)
    decision = gate(challenger=report, champion=champion, config=settings.gate)
    print(gate_table_markdown(decision))

A report holds the metrics on the holdout (overall, per slice value, under perturbed inputs, and on
labelled production rows when given) plus the predictions themselves, so the gate can compare two
models on the very same rows with a paired bootstrap.

The gate's rules (`GateConfig`), each recorded with both models' values:
- floors: every model meets absolute bounds (default ROC-AUC >= 0.6, R² >= 0). A first model (no
  champion) is judged on these and on the model-only rules below.
- gain: the primary metric improves on the champion's by at least `min_improvement` (relative),
  AND the lower bound of the paired bootstrap CI of the difference (at `confidence`, two-sided,
  percentile) is above 0: the gain is both large enough to matter and unlikely to be noise.
- slices: no slice value with >= `min_slice_rows` rows loses more than `max_slice_regression`.
- calibration: expected calibration error <= `max_calibration_error` (classification).
- robustness: the primary metric loses at most `max_robustness_drop` under the worst perturbation.
- production: on labelled production rows (when both reports have enough), no loss beyond
  `max_production_regression`.
Tolerances are relative (0.05 = 5% of the reference value), so one default fits ROC-AUC and RMSE.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import data, events, registry
from tasks.errors import DriftloopError
from tasks.settings import EvaluationConfig, GateConfig, MetricName

if TYPE_CHECKING:
    from tasks.settings import DatasetConfig, Features

Task = Literal["classification", "regression"]


# Metrics ------------------------------------------------------------------------------------------

CLASSIFICATION_METRICS: tuple[MetricName, ...] = (
    "accuracy", "f1", "roc_auc", "pr_auc", "log_loss", "brier", "ece",
)  # fmt: skip
REGRESSION_METRICS: tuple[MetricName, ...] = ("rmse", "mae", "r2")
HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True, "f1": True, "roc_auc": True, "pr_auc": True, "r2": True,
    "log_loss": False, "brier": False, "ece": False, "rmse": False, "mae": False,
}  # fmt: skip
DEFAULT_PRIMARY: dict[str, MetricName] = {"classification": "roc_auc", "regression": "rmse"}
PERTURBATIONS = ("noise", "missing", "unseen")
UNSEEN = "<unseen>"  # the category value no training data contains
# what a model raises on rows it cannot score (a column it needs is gone, a class it never saw)
CANNOT_SCORE: tuple[type[Exception], ...] = (DriftloopError, KeyError, ValueError)


class EvaluationError(DriftloopError, ValueError):
    """The model and the data do not fit together for evaluation; the message says how."""


class Predictor(Protocol):
    """What evaluation needs of a model (tasks.model.Predictor is one)."""

    @property
    def classes(self) -> Sequence[Any] | None:
        """Class labels in the column order of `predict` (None for regression)."""

    def predict(self, table: pa.Table) -> np.ndarray:
        """(n, k) class probabilities, or (n,) values for regression."""


def expected_calibration_error(y: np.ndarray, probs: np.ndarray, *, bins: int = 15) -> float:
    """ECE: the share-weighted gap between stated confidence and observed frequency.

    Predictions fall into `bins` equal-width bins of [0, 1] by confidence; ECE = sum over bins of
    (rows in bin / rows) * |observed frequency - mean confidence|. Binary: the confidence is the
    positive class's probability and the frequency the positive rate (the score users threshold).
    Multiclass: top-label, i.e. the highest probability against the accuracy of the argmax.
    Small samples inflate it (noise in each bin): ~0.02 with 1,500 rows and 15 bins.
    """
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    if probs.ndim == 1 or probs.shape[1] == 2:
        confidence = probs if probs.ndim == 1 else probs[:, 1]
        hit = (y == 1).astype(np.float64)
    else:
        confidence = probs.max(axis=1)
        hit = (probs.argmax(axis=1) == y).astype(np.float64)
    if confidence.size == 0:
        return math.nan
    index = np.minimum((np.clip(confidence, 0, 1) * bins).astype(np.int64), bins - 1)
    gap = np.bincount(index, weights=hit, minlength=bins) - np.bincount(
        index, weights=confidence, minlength=bins
    )
    return float(np.abs(gap).sum() / confidence.size)


def classification_metrics(y: np.ndarray, probs: np.ndarray, *, bins: int = 15) -> dict[str, float]:
    """Metrics of class probabilities `probs` (n, k) against class indices `y` (0..k-1).

    F1 is of the positive class (index 1: the second sorted label) when binary, macro otherwise;
    ROC-AUC and PR-AUC are one-vs-rest macro averages over the classes present when multiclass.
    """
    return {name: metric(name, y, probs, bins=bins) for name in CLASSIFICATION_METRICS}


def regression_metrics(y: np.ndarray, values: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R² of predicted `values` against `y`."""
    return {name: metric(name, y, values) for name in REGRESSION_METRICS}


def compute_metrics(
    y: np.ndarray, pred: np.ndarray, *, task: Task, bins: int = 15
) -> dict[str, float]:
    """Every metric of the task; NaN where one is undefined (one class only, no rows)."""
    if task == "classification":
        return classification_metrics(y, pred, bins=bins)
    return regression_metrics(y, pred)


def metric(name: str, y: np.ndarray, pred: np.ndarray, *, bins: int = 15) -> float:
    """One metric (scikit-learn's where it has it); NaN where undefined."""
    from sklearn import metrics as skm

    if len(y) == 0:
        return math.nan
    if name in REGRESSION_METRICS:
        if name == "rmse":
            return float(skm.root_mean_squared_error(y, pred))
        if name == "mae":
            return float(skm.mean_absolute_error(y, pred))
        return float(skm.r2_score(y, pred)) if len(y) > 1 and np.ptp(y) > 0 else math.nan
    probs = _normalise(pred)
    k = probs.shape[1]
    labels = list(range(k))
    if name == "accuracy":
        return float(skm.accuracy_score(y, probs.argmax(axis=1)))
    if name == "f1":
        average = "binary" if k == 2 else "macro"
        return float(
            skm.f1_score(y, probs.argmax(axis=1), labels=labels, average=average, zero_division=0)
        )
    if name == "roc_auc":
        return _one_vs_rest(skm.roc_auc_score, y, probs)
    if name == "pr_auc":
        return _one_vs_rest(skm.average_precision_score, y, probs)
    if name == "log_loss":
        return float(skm.log_loss(y, probs, labels=labels))
    if name == "brier":
        if k == 2:
            return float(skm.brier_score_loss(y, probs[:, 1], pos_label=1))
        return float(skm.brier_score_loss(y, probs, labels=labels))
    if name == "ece":
        return expected_calibration_error(y, probs, bins=bins)
    raise EvaluationError(f"unknown metric {name!r}")


def _normalise(pred: np.ndarray) -> np.ndarray:
    probs = np.asarray(pred, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise EvaluationError(f"expected class probabilities of shape (n, k>=2); got {probs.shape}")
    total = probs.sum(axis=1, keepdims=True)
    return np.divide(probs, total, out=np.full_like(probs, 1 / probs.shape[1]), where=total > 0)


def _one_vs_rest(score: Any, y: np.ndarray, probs: np.ndarray) -> float:
    """Binary: the positive column. Multiclass: the mean over classes with both outcomes present."""
    columns = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    values = [
        float(score(y == c, probs[:, c])) for c in columns if 0 < np.count_nonzero(y == c) < len(y)
    ]
    return float(np.mean(values)) if values else math.nan


def is_better(name: str, a: float, b: float) -> bool:
    """Whether metric value `a` is strictly better than `b`."""
    return a > b if HIGHER_IS_BETTER[name] else a < b


def relative_loss(name: str, *, reference: float, value: float) -> float:
    """How much worse `value` is than `reference`, as a share of it (negative: better)."""
    gap = reference - value if HIGHER_IS_BETTER[name] else value - reference
    return gap / max(abs(reference), 1e-12)


# Evaluation ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceMetrics:
    """Metrics of the rows where `column` has `value` (nulls are "(null)")."""

    column: str
    value: str
    rows: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class EvaluationReport:
    """One model on one holdout: metrics, slices, robustness, production rows, and predictions."""

    task: Task
    classes: list[Any] | None
    rows: int
    fingerprint: str  # of the holdout rows in order: the gate pairs two reports only on equal ones
    metrics: dict[str, float]
    slices: list[SliceMetrics]
    robustness: dict[str, dict[str, float]]  # perturbation -> metrics
    robustness_errors: dict[str, str] = field(default_factory=dict)  # perturbation -> error
    calibration_bins: int = 15
    production: dict[str, float] | None = None
    production_rows: int = 0
    production_fingerprint: str | None = None
    production_error: str | None = None  # why the model could not score the production rows
    y_true: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    predictions: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)

    def slice(self, column: str, value: str) -> SliceMetrics | None:
        return next((s for s in self.slices if s.column == column and s.value == value), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (no per-row arrays; NaN as null)."""
        keep = ("task", "classes", "rows", "fingerprint", "metrics", "robustness",
                "robustness_errors", "calibration_bins", "production", "production_rows",
                "production_fingerprint", "production_error")  # fmt: skip
        out = {k: getattr(self, k) for k in keep}
        out["slices"] = [asdict(s) for s in self.slices]
        return dict(events.jsonable(out))


def evaluate(
    predictor: Predictor,
    holdout: pa.Table,
    *,
    dataset: DatasetConfig,
    config: EvaluationConfig,
    production: pa.Table | None = None,
) -> EvaluationReport:
    """Measure a model on the holdout (and on labelled production rows when given).

    Rows whose target is null are left out (unlabelled production rows, say).
    """
    table = _labelled(holdout, target=dataset.target, what="holdout")
    y, pred = predict_encoded(predictor, table, target=dataset.target, task=dataset.task)
    bins = config.calibration_bins
    perturbed, errors = robustness(predictor, table, dataset=dataset, config=config)
    report = EvaluationReport(
        task=dataset.task,
        classes=list(predictor.classes) if predictor.classes is not None else None,
        rows=table.num_rows,
        fingerprint=rows_fingerprint(table),
        metrics=compute_metrics(y, pred, task=dataset.task, bins=bins),
        slices=slice_metrics(table, y, pred, columns=dataset.slices, task=dataset.task, bins=bins),
        robustness=perturbed,
        robustness_errors=errors,
        calibration_bins=bins,
        y_true=y,
        predictions=pred,
    )
    if production is None:
        return report
    recent = _labelled(production, target=dataset.target, what="production rows")
    try:
        py, ppred = predict_encoded(predictor, recent, target=dataset.target, task=dataset.task)
    except CANNOT_SCORE as exc:  # e.g. traffic lacks a new feature
        return replace(report, production_error=f"{type(exc).__name__}: {exc}")
    return _with_production(report, recent, py, ppred)


def _with_production(
    report: EvaluationReport, table: pa.Table, y: np.ndarray, pred: np.ndarray
) -> EvaluationReport:
    return replace(
        report,
        production=compute_metrics(y, pred, task=report.task, bins=report.calibration_bins),
        production_rows=table.num_rows,
        production_fingerprint=rows_fingerprint(table),
    )


def predict_encoded(
    predictor: Predictor, table: pa.Table, *, target: str, task: Task
) -> tuple[np.ndarray, np.ndarray]:
    """The target (class indices in the predictor's class order, or floats) and the predictions."""
    if target not in table.column_names:
        raise EvaluationError(f"target column {target!r} is not in the table")
    pred = np.asarray(predictor.predict(table), dtype=np.float64)
    if not np.isfinite(pred).all():
        bad = int((~np.isfinite(pred)).sum())
        raise EvaluationError(f"the model returned {bad} NaN or infinite prediction value(s)")
    if task == "regression":
        if predictor.classes is not None:
            raise EvaluationError("the dataset is a regression task but the model is a classifier")
        y = pc.fill_null(pc.cast(table[target], pa.float64()), np.nan).to_numpy()
        return y, pred.reshape(-1)
    classes = predictor.classes
    if classes is None:
        raise EvaluationError("the dataset is a classification task but the model is a regressor")
    if pred.shape != (table.num_rows, len(classes)):
        raise EvaluationError(f"predictions of shape {pred.shape}; expected ({table.num_rows}, "
                              f"{len(classes)}) for classes {list(classes)}")  # fmt: skip
    values = pa.array(list(classes))
    index = pc.index_in(table[target].cast(values.type), value_set=values)
    if index.null_count:
        unseen = pc.unique(pc.filter(table[target], pc.is_null(index))).to_pylist()[:5]
        raise EvaluationError(f"target {target!r} has classes the model does not know: {unseen}")
    return index.to_numpy().astype(np.int64), pred


def slice_metrics(
    table: pa.Table,
    y: np.ndarray,
    pred: np.ndarray,
    *,
    columns: Sequence[str],
    task: Task,
    bins: int = 15,
) -> list[SliceMetrics]:
    """Metrics for every value of every slice column, with its row count."""
    out = []
    for column in columns:
        if column not in table.column_names:
            raise EvaluationError(f"slice column {column!r} is not in the table")
        values = pc.fill_null(pc.cast(_plain(table[column]), pa.string()), "(null)").to_numpy(
            zero_copy_only=False
        )
        for value in sorted(set(values.tolist())):
            mask = values == value
            metrics = compute_metrics(y[mask], pred[mask], task=task, bins=bins)
            out.append(SliceMetrics(column, str(value), int(mask.sum()), metrics))
    return out


def robustness(
    predictor: Predictor, table: pa.Table, *, dataset: DatasetConfig, config: EvaluationConfig
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Metrics under each perturbation of the inputs (`PERTURBATIONS`), and what failed outright.

    noise: gaussian noise of `noise_scale` x std on numeric features; missing: `missing_share` of
    every feature's values blanked to null; unseen: `unseen_share` of categorical values swapped to
    the rarest seen value or to a value never seen. The target is untouched. A model that raises
    or returns NaN on such inputs gets NaN metrics there (the gate fails it) and the error.
    """
    features = _features(dataset)
    metrics: dict[str, dict[str, float]] = {}
    errors: dict[str, str] = {}
    names = CLASSIFICATION_METRICS if dataset.task == "classification" else REGRESSION_METRICS
    for i, kind in enumerate(PERTURBATIONS):
        if kind == "unseen" and not features.categorical:
            continue
        noisy = perturb(table, kind=kind, features=features, config=config, seed=config.seed + i)
        try:
            y, pred = predict_encoded(predictor, noisy, target=dataset.target, task=dataset.task)
        except Exception as exc:  # any failure of the model on bad inputs is a finding, not a crash
            errors[kind] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            metrics[kind] = dict.fromkeys(names, math.nan)
            continue
        metrics[kind] = compute_metrics(y, pred, task=dataset.task, bins=config.calibration_bins)
    return metrics, errors


def perturb(
    table: pa.Table, *, kind: str, features: Features, config: EvaluationConfig, seed: int
) -> pa.Table:
    """A copy of `table` with one perturbation applied to the feature columns (see `robustness`)."""
    rng = np.random.default_rng(seed)
    n = table.num_rows
    if kind == "noise":
        changes = {c: _add_noise(table[c], rng, scale=config.noise_scale) for c in features.numeric}
    elif kind == "missing":
        changes = {c: _blank(table[c], rng.random(n) < config.missing_share) for c in features.all}
    elif kind == "unseen":
        changes = {c: _swap(table[c], rng, share=config.unseen_share) for c in features.categorical}
    else:
        raise EvaluationError(f"unknown perturbation {kind!r}; known: {', '.join(PERTURBATIONS)}")
    for name, column in changes.items():
        table = table.set_column(table.column_names.index(name), name, column)
    return table


def _add_noise(column: pa.ChunkedArray, rng: np.random.Generator, *, scale: float) -> pa.Array:
    kind = data.column_kind(column.type)
    values = pc.fill_null(pc.cast(_plain(column), pa.float64()), np.nan).to_numpy(
        zero_copy_only=False
    )
    missing = ~np.isfinite(values)
    std = float(np.nanstd(np.where(missing, np.nan, values))) if (~missing).any() else 0.0
    noisy = values + rng.normal(0.0, scale * std, size=values.shape)
    if kind == "integer":
        noisy = np.round(noisy)
        if pa.types.is_unsigned_integer(column.type):
            noisy = np.maximum(noisy, 0)
    out = pa.array(np.where(missing, 0.0, noisy), mask=missing)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return out.cast(column.type, safe=False)
    return out  # decimals and dictionary-encoded numbers come back as float64


def _blank(column: pa.ChunkedArray, mask: np.ndarray) -> pa.Array:
    plain = _plain(column)
    return pc.if_else(pa.array(mask), pa.nulls(len(plain), plain.type), plain)


def _swap(column: pa.ChunkedArray, rng: np.random.Generator, *, share: float) -> pa.Array:
    plain = _plain(column)
    if not (pa.types.is_string(plain.type) or pa.types.is_large_string(plain.type)):
        return plain  # booleans and others have no room for an unseen value
    counts = pc.value_counts(plain.drop_null())
    seen = counts.field("values").to_pylist()
    rare = seen[int(np.argmin(counts.field("counts").to_numpy()))] if seen else UNSEEN
    values = plain.to_numpy(zero_copy_only=False).astype(object)
    mask = rng.random(len(values)) < share
    values[mask] = np.where(rng.random(int(mask.sum())) < 0.5, rare, UNSEEN)
    return pa.array(values, type=plain.type)


def _plain(column: pa.ChunkedArray) -> pa.Array:
    """One contiguous array; dictionary-encoded values decoded."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    return array


def _features(dataset: DatasetConfig) -> Features:
    if dataset.features is None:
        raise EvaluationError(
            "dataset.features is not resolved: load settings with load_settings()"
        )
    return dataset.features


def _labelled(table: pa.Table, *, target: str, what: str) -> pa.Table:
    if target not in table.column_names:
        raise EvaluationError(f"{what}: no target column {target!r}")
    labelled = table.filter(pc.is_valid(table[target]))
    if labelled.num_rows == 0:
        raise EvaluationError(f"{what}: no rows with a label in {target!r}")
    return labelled


def rows_fingerprint(table: pa.Table) -> str:
    """A hash of the rows in their order: equal only for the same holdout, so reports can pair."""
    return hashlib.sha256(data.row_hashes(table).tobytes()).hexdigest()[:16]


# The gate -----------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class GateDecision:
    """Promote or not, and every rule that decided it."""

    promote: bool
    primary_metric: str
    challenger_value: float  # the primary metric on the holdout
    champion_value: float | None  # None: there was no champion (or it could not be scored)
    rules: list[RuleResult]
    champion_version: int | None = None  # the champion judged against: promotion expects it

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
            return f"promote: {what} ({len(self.rules)} rules passed)"
        return "reject: " + "; ".join(f"{r.rule} ({r.detail})" for r in self.failed)

    def to_dict(self) -> dict[str, Any]:
        return dict(events.jsonable(asdict(self)))


def gate(
    *,
    challenger: EvaluationReport,
    champion: EvaluationReport | None,
    config: GateConfig,
    champion_version: int | None = None,
    champion_error: str | None = None,
) -> GateDecision:
    """Decide whether `challenger` replaces `champion` (None: there is no champion yet).

    `champion_error` says why a champion that exists could not be measured on these rows (a
    schema change, say): the challenger is then rejected, never waved through as a first model.
    """
    primary = primary_metric(challenger.task, config)
    if champion is not None:
        _check_pair(challenger, champion)
    rules = [
        *_comparable_rules(champion_version, champion_error),
        *_floor_rules(challenger, champion, config),
        *_gain_rules(challenger, champion, config, primary),
        *_slice_rules(challenger, champion, config, primary),
        *_calibration_rules(challenger, champion, config),
        *_robustness_rules(challenger, champion, config, primary),
        *_production_rules(challenger, champion, config, primary),
    ]
    return GateDecision(
        promote=all(r.passed for r in rules),
        primary_metric=primary,
        challenger_value=challenger.metrics[primary],
        champion_value=champion.metrics[primary] if champion is not None else None,
        rules=rules,
        champion_version=champion_version,
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


def _skipped(rule: str, detail: str) -> RuleResult:
    return RuleResult(rule, None, None, None, "", None, True, detail)


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
            detail=f"{name} {_fmt(value)} must be {op} {_fmt(bound)}",
        ))  # fmt: skip
    return rules


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
            detail=f"{_fmt(old)} → {_fmt(new)}: {gain:+.2%} (needs {config.min_improvement:+.2%})",
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
    ece = c.metrics["ece"]
    return [_rule(
        "calibration: ECE", champion=champion.metrics["ece"] if champion else None,
        challenger=ece, observed=ece, op="<=", threshold=config.max_calibration_error,
        detail=f"expected calibration error over {c.calibration_bins} bins",
    )]  # fmt: skip


def _robustness_rules(
    c: EvaluationReport, champion: EvaluationReport | None, config: GateConfig, primary: str
) -> list[RuleResult]:
    if config.max_robustness_drop is None or not c.robustness:
        return []
    kind, loss = _worst_loss(c, primary)
    old = _worst_loss(champion, primary)[1] if champion and champion.robustness else None
    detail = (
        f"worst perturbation: {kind} ({primary} {_fmt(c.metrics[primary])} → "
        f"{_fmt(c.robustness[kind][primary])})"
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


def _production_rules(
    c: EvaluationReport, champion: EvaluationReport | None, config: GateConfig, primary: str
) -> list[RuleResult]:
    if c.production_error is not None:  # what it would be served cannot go through it
        error = c.production_error
        detail = f"the challenger could not score the labelled production rows ({error})"
        return [_failed("production rows: challenger can score them", detail)]
    if champion is None or c.production is None or champion.production is None:
        return []
    if c.production_fingerprint != champion.production_fingerprint:
        raise EvaluationError("the two reports saw different production rows: use the same ones")
    if c.production_rows < config.min_production_rows:
        detail = f"{c.production_rows} labelled rows < {config.min_production_rows}"
        return [_skipped("production rows: no regression", detail)]
    new, old = c.production[primary], champion.production[primary]
    loss = relative_loss(primary, reference=old, value=new)
    return [_rule(
        f"production rows: {primary}", champion=old, challenger=new, observed=loss, op="<=",
        threshold=config.max_production_regression, relative=True,
        detail=f"{c.production_rows} labelled production rows; loss {loss:+.2%}",
    )]  # fmt: skip


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.4f}"


# Reports ------------------------------------------------------------------------------------------


def gate_table_markdown(decision: GateDecision) -> str:
    """The gate as a markdown table: rule | champion | challenger | threshold | result | detail."""
    lines = [
        ("✅ " if decision.promote else "❌ ") + _escape(decision.summary()),
        "",
        "| rule | champion | challenger | threshold | result | detail |",
        "|---|---|---|---|---|---|",
    ]
    for r in decision.rules:
        threshold = f"{r.op} {_fmt_threshold(r)}" if r.threshold is not None else "–"
        result = "pass" if r.passed else "**FAIL**"
        if r.threshold is None and r.passed:
            result = "n/a"
        cells = [r.rule, _fmt(r.champion), _fmt(r.challenger), threshold, result, r.detail]
        lines.append("| " + " | ".join(_escape(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt_threshold(r: RuleResult) -> str:
    assert r.threshold is not None
    return f"{r.threshold:.2%}" if r.relative else _fmt(r.threshold)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def model_card(
    *,
    dataset: DatasetConfig,
    report: EvaluationReport,
    decision: GateDecision,
    data_fingerprint: str | None = None,
    version: int | None = None,
    params: Mapping[str, Any] | None = None,
    intended_use: str | None = None,
) -> str:
    """A markdown model card: intended use, data, metrics overall and per slice, gate, limits."""
    features = _features(dataset)
    title = f"# Model card: {dataset.name}" + (f" v{version}" if version is not None else "")
    use = intended_use or (
        f"Predicts `{dataset.target}` ({dataset.task}) for rows shaped like `{dataset.source}`, "
        "to rank or score them for a human or a downstream rule. Not for decisions about people "
        "without review, nor for rows unlike the training data (the drift monitor watches this)."
    )
    lines = [
        title, "", "## Intended use", "", use, "",
        "## Data", "",
        f"- source: `{dataset.source}`; target `{dataset.target}`",
        f"- numeric features: {', '.join(features.numeric) or 'none'}",
        f"- categorical features: {', '.join(features.categorical) or 'none'}",
        f"- training data fingerprint: `{data_fingerprint or 'unknown'}`",
        f"- holdout: {report.rows} rows (fingerprint `{report.fingerprint}`)"
        + (f"; labelled production rows: {report.production_rows}" if report.production else ""),
        "", "## Metrics (holdout)", "", _metrics_table(report), "",
    ]  # fmt: skip
    if params:
        lines += ["## Parameters", "", "```json", json.dumps(events.jsonable(params), indent=1),
                  "```", ""]  # fmt: skip
    if report.slices:
        lines += ["## Metrics per slice", "", _slice_table(report), ""]
    lines += ["## Gate decision", "", gate_table_markdown(decision), "## Known limitations", ""]
    lines += [f"- {text}" for text in _limitations(report, primary=decision.primary_metric)]
    return "\n".join(lines) + "\n"


def _metrics_table(report: EvaluationReport) -> str:
    columns = {"holdout": report.metrics, **{f"+{k}": v for k, v in report.robustness.items()}}
    if report.production:
        columns["production rows"] = report.production
    header = "| metric | " + " | ".join(columns) + " |"
    rule = "|---" * (len(columns) + 1) + "|"
    rows = [
        f"| {name} | " + " | ".join(_fmt(m.get(name)) for m in columns.values()) + " |"
        for name in report.metrics
    ]
    return "\n".join([header, rule, *rows])


def _slice_table(report: EvaluationReport) -> str:
    names = list(report.metrics)
    header = "| slice | rows | " + " | ".join(names) + " |"
    rule = "|---" * (len(names) + 2) + "|"
    rows = [
        f"| {_escape(s.column)}={_escape(s.value)} | {s.rows} | "
        + " | ".join(_fmt(s.metrics[n]) for n in names)
        + " |"
        for s in report.slices
    ]
    return "\n".join([header, rule, *rows])


def _limitations(report: EvaluationReport, *, primary: str) -> list[str]:
    notes = [
        "Measured on a holdout drawn from the same data as training: it says nothing about rows "
        "from a different population or period (the drift monitor checks production inputs).",
    ]
    small = [f"{s.column}={s.value} ({s.rows})" for s in report.slices if s.rows < 200]
    if small:
        notes.append("Slices too small for reliable metrics: " + ", ".join(small) + ".")
    if report.task == "classification":
        notes.append(
            f"Calibration (ECE {_fmt(report.metrics['ece'])}) is measured overall; per-slice "
            "probabilities may be less reliable."
        )
    for kind, metrics in report.robustness.items():
        loss = relative_loss(primary, reference=report.metrics[primary], value=metrics[primary])
        notes.append(f"Under `{kind}` inputs, {primary} is {loss:+.1%} worse than on clean rows.")
    notes.append("No fairness audit has been made; check slices that matter for your use.")
    return notes


# Prefect ------------------------------------------------------------------------------------------


@task(name="evaluate-model", cache_policy=NO_CACHE)
def evaluate_task(
    predictor: Predictor,
    holdout: pa.Table,
    *,
    dataset: DatasetConfig,
    config: EvaluationConfig,
    production: pa.Table | None = None,
    role: str = "challenger",
) -> EvaluationReport:
    """Measure a model on the holdout; publish its metrics as a table artifact."""
    report = evaluate(predictor, holdout, dataset=dataset, config=config, production=production)
    _publish_metrics(report, model=dataset.name, role=role)
    return report


def _publish_metrics(report: EvaluationReport, *, model: str, role: str) -> None:
    from prefect.artifacts import create_table_artifact

    rows = [{"metric": k, "holdout": v, **{k2: m[k] for k2, m in report.robustness.items()}}
            for k, v in report.metrics.items()]  # fmt: skip
    create_table_artifact(
        table=events.jsonable(rows),
        key=f"evaluation-{_slug(model)}-{_slug(role)}",
        description=f"{model} ({role}): metrics on {report.rows} holdout rows",
    )


@task(name="promotion-gate", cache_policy=NO_CACHE)
def gate_task(
    *,
    challenger: EvaluationReport,
    champion: Champion,
    config: GateConfig,
    model: str,
) -> GateDecision:
    """Apply the gate's rules; publish the gate table (markdown artifact `gate-<model>`)."""
    from prefect.artifacts import create_markdown_artifact

    decision = gate(
        challenger=challenger, champion=champion.report, config=config,
        champion_version=champion.version, champion_error=champion.error,
    )  # fmt: skip
    create_markdown_artifact(
        markdown=gate_table_markdown(decision),
        key=f"gate-{_slug(model)}",
        description=f"{model}: {decision.summary()}"[:500],
    )
    return decision


@dataclass(frozen=True)
class Champion:
    """The champion measured on the challenger's rows, or why it could not be."""

    version: int | None  # None: no champion yet
    report: EvaluationReport | None
    error: str | None = None


def measure_champion(
    holdout: pa.Table,
    *,
    root: str,
    dataset: DatasetConfig,
    config: EvaluationConfig,
    production: pa.Table | None = None,
) -> Champion:
    """The champion measured on the challenger's rows; its error when it cannot score them."""
    from tasks.model import load_model

    version = registry.aliases(root=root, model=dataset.name).get(registry.CHAMPION)
    if version is None:
        return Champion(version=None, report=None)
    try:
        predictor = load_model(registry.resolve(root=root, model=dataset.name, ref=version))
        report = evaluate(predictor, holdout, dataset=dataset, config=config, production=production)
    except CANNOT_SCORE as exc:  # e.g. a column it needs is gone
        return Champion(version=version, report=None, error=f"{type(exc).__name__}: {exc}")
    return Champion(version=version, report=report)


@task(name="evaluate-champion", cache_policy=NO_CACHE)
def champion_task(
    holdout: pa.Table,
    *,
    root: str,
    dataset: DatasetConfig,
    config: EvaluationConfig,
    production: pa.Table | None = None,
) -> Champion:
    """Measure the champion on the challenger's holdout (and production rows), if there is one."""
    from prefect import get_run_logger

    champion = measure_champion(
        holdout, root=root, dataset=dataset, config=config, production=production
    )
    if champion.report is not None:
        _publish_metrics(champion.report, model=dataset.name, role="champion")
    if champion.error is not None:
        get_run_logger().warning("champion v%s: %s", champion.version, champion.error)
    return champion


@dataclass(frozen=True)
class Promotion:
    """What became of a challenger: its registry version, and whether it is champion now."""

    version: int
    promoted: bool
    previous: int | None  # the champion before
    reason: str


@task(name="promote-model", cache_policy=NO_CACHE)
def promote_task(
    *,
    decision: GateDecision,
    report: EvaluationReport,
    dataset: DatasetConfig,
    root: str,
    model_dir: str,
    metadata: Mapping[str, Any],
    extra_files: Mapping[str, str | bytes] | None = None,
) -> Promotion:
    """Register the challenger with its decision; make it champion when the gate passed.

    Every candidate becomes a registry version (weights, evaluation, gate table, card), so a
    rejection is kept with its reasons and a person can still deploy it by hand. The champion
    alias moves by compare-and-set against the champion the gate judged against: if another run
    promoted a model meanwhile, this one stays a plain version. Publishes the model card
    (`model-card-<model>`) and emits `driftloop.model.promoted` or `driftloop.model.rejected`.
    """
    from prefect.artifacts import create_markdown_artifact

    model, previous = dataset.name, decision.champion_version

    def card(version: int | None) -> str:
        return model_card(
            dataset=dataset, report=report, decision=decision, version=version,
            data_fingerprint=metadata.get("data_fingerprint"), params=metadata.get("params"),
        )  # fmt: skip

    gate_record = {
        "passed": decision.promote,
        "summary": decision.summary(),
        "judged_against": previous,
    }
    version = registry.register(
        root=root, model=model, model_dir=model_dir,
        metadata={**metadata, "metrics": report.to_dict()["metrics"], "gate": gate_record},
        extra_files={
            **(extra_files or {}),
            "evaluation.json": json.dumps(report.to_dict(), indent=1).encode(),
            "gate.json": json.dumps(decision.to_dict(), indent=1).encode(),
            "model_card.md": card(None).encode(),  # the number is claimed as it is published
        },
    )  # fmt: skip
    promotion = Promotion(version=version, promoted=False, previous=previous,
                          reason=decision.summary())  # fmt: skip
    if decision.promote:
        try:
            registry.set_alias(
                root=root, model=model, alias=registry.CHAMPION, version=version,
                reason=f"gate: {decision.summary()}"[:300], expect=previous,
            )  # fmt: skip
            promotion = replace(promotion, promoted=True)
        except registry.AliasMoved as exc:
            promotion = replace(promotion, reason=f"reject: {exc}")
    verdict = "promoted to champion" if promotion.promoted else "registered, not promoted"
    create_markdown_artifact(
        markdown=card(version),
        key=f"model-card-{_slug(model)}",
        description=f"{model} v{version}: {verdict}",
    )
    name = events.MODEL_PROMOTED if promotion.promoted else events.MODEL_REJECTED
    payload = decision_payload(decision, version=version, previous=previous)
    payload.update(promote=promotion.promoted, reason=promotion.reason)
    events.emit(name, model=model, payload=payload)
    return promotion


def decision_payload(
    decision: GateDecision, *, version: int | None = None, previous: int | None = None
) -> dict[str, Any]:
    """The figures that explain a gate decision, for the promoted/rejected event."""
    return dict(events.jsonable({
        "promote": decision.promote,
        "version": version,
        "previous_champion": previous,
        "primary_metric": decision.primary_metric,
        "challenger": decision.challenger_value,
        "champion": decision.champion_value,
        "summary": decision.summary(),
        "failed": [
            {"rule": r.rule, "observed": r.observed, "threshold": r.threshold, "detail": r.detail}
            for r in decision.failed
        ],
        "rules": [asdict(r) for r in decision.rules],
    }))  # fmt: skip


def _slug(name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "".join(c if c.isascii() and c.isalnum() else "-" for c in name.lower()).strip("-")
