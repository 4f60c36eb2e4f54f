"""Measuring a model: metrics on the holdout, per slice value, under perturbed inputs, and on
labelled production rows.

    report = evaluate(predictor, holdout, dataset=settings.dataset, config=settings.evaluation)
    report.metrics["roc_auc"], report.slice("contract", "two-year"), report.robustness["noise"]

A report keeps the targets and the predictions themselves, so the gate can compare two models on
the very same rows (`EvaluationReport.fingerprint` says which).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks import data, events
from tasks.calibration import bins_for, calibration_error
from tasks.errors import DriftloopError
from tasks.settings import EvaluationConfig, MetricName

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
    on: str = "holdout"  # which rows: the source's "holdout", or labelled "production" rows
    # a calibrated classifier: its temperature, what it did on the validation split, and the
    # holdout ECE (equal-mass bins) of its probabilities without (`before`) and with it
    calibration: dict[str, Any] | None = None
    y_true: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    predictions: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)

    def slice(self, column: str, value: str) -> SliceMetrics | None:
        return next((s for s in self.slices if s.column == column and s.value == value), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (no per-row arrays; NaN as null)."""
        keep = ("task", "classes", "rows", "on", "fingerprint", "metrics", "robustness",
                "robustness_errors", "calibration_bins", "calibration")  # fmt: skip
        out = {k: getattr(self, k) for k in keep}
        out["slices"] = [asdict(s) for s in self.slices]
        return dict(events.jsonable(out))


def evaluate(
    predictor: Predictor,
    holdout: pa.Table,
    *,
    dataset: DatasetConfig,
    config: EvaluationConfig,
    on: str = "holdout",
) -> EvaluationReport:
    """Measure a model on `holdout`: the source's holdout, or labelled production rows (`on`
    says which; their slices are the slice columns the rows have).

    Rows whose target is null are left out (unlabelled production rows, say).
    """
    table = _labelled(holdout, target=dataset.target, what=on)
    if on != "holdout":  # the prediction log has the features, not every slice column
        slices = [c for c in dataset.slices if c in table.column_names]
        dataset = dataset.model_copy(update={"slices": slices})
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
        on=on,
        calibration=_calibration(predictor, table, y, pred, dataset=dataset, bins=bins),
        y_true=y,
        predictions=pred,
    )
    return report


def _calibration(
    predictor: Predictor,
    table: pa.Table,
    y: np.ndarray,
    pred: np.ndarray,
    *,
    dataset: DatasetConfig,
    bins: int,
) -> dict[str, Any] | None:
    """The model's fitted calibration (a `tasks.model.Predictor` has one) and the holdout ECE of
    its probabilities before and after it; None for regression or an uncalibrated model."""
    fitted = getattr(predictor, "calibration", None)
    uncalibrated = getattr(predictor, "uncalibrated", None)
    if dataset.task != "classification" or fitted is None or uncalibrated is None:
        return None
    _, raw = predict_encoded(uncalibrated, table, target=dataset.target, task=dataset.task)
    holdout_bins = bins_for(len(y), max_bins=bins)
    return {
        **fitted.to_json(),
        "holdout_rows": len(y),
        "holdout_bins": holdout_bins,
        "holdout_ece_before": calibration_error(y, raw, bins=holdout_bins),
        "holdout_ece_after": calibration_error(y, pred, bins=holdout_bins),
    }


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
    features = dataset_features(dataset)
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


def dataset_features(dataset: DatasetConfig) -> Features:
    """The dataset's resolved features; refused when `load_settings` has not resolved them."""
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


def fmt(value: float | None) -> str:
    """A metric value as the gate table and the model card show it: four decimals, "n/a" where
    undefined, a dash where there is none."""
    if value is None:
        return "–"
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.4f}"
