"""What a monitoring pass measures on a window: the champion it judges, the champion's outputs,
data quality (the validation suite), and quality against the champion's holdout.

    champion = load_champion(settings)
    outputs = champion.outputs(window.table)            # probability_<class> or prediction
    report = check_data(window, champion=champion, settings=settings)
    quality = judge_quality(window, champion=champion, settings=settings)

The champion's outputs are recomputed on the window's rows (a window may hold rows an earlier
version served): the prediction's drift and the quality are the champion's, the one the governor
would replace.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks import data, files, registry, traffic, validation
from tasks.errors import DriftloopError
from tasks.evaluate import CANNOT_SCORE, primary_metric
from tasks.model import Predictor, load_model
from tasks.monitor import quality as q
from tasks.monitor.window import Window, probability_columns, sample
from tasks.settings import Features, Settings
from tasks.traffic import PREDICTION


class MonitorError(DriftloopError):
    """A monitoring pass cannot run (no champion, no reference); the message says what to do."""


@dataclass(frozen=True)
class Champion:
    """The serving model a pass judges: its version, predictor, holdout metrics, reference."""

    model: str
    version: int
    predictor: Predictor
    metrics: dict[str, Any]  # on its holdout, from the registry metadata
    reference: pa.Table  # its training sample (sampled to monitoring.sample_rows)
    location: str
    # request ids of the labelled production rows it trained on (a retraining's): its quality
    # is never measured on them, and the gate never judges it on them
    trained_on: pa.Array = field(default_factory=lambda: pa.array([], pa.string()), repr=False)

    @property
    def features(self) -> Features:
        pre = self.predictor.preprocessor
        return Features(numeric=list(pre.numeric), categorical=list(pre.categorical))

    @property
    def output_columns(self) -> list[str]:
        """The outputs whose drift is watched: the positive class's probability (binary), each
        class's (multiclass), the value (regression)."""
        columns = probability_columns(self.predictor.classes)
        if not columns:
            return [PREDICTION]
        return columns[-1:] if len(columns) == 2 else columns

    def outputs(self, table: pa.Table) -> pa.Table | None:
        """The champion's outputs on `table`'s rows; None when it cannot score them."""
        try:
            out = self.predictor.predict(table)
        except CANNOT_SCORE:
            return None
        if self.predictor.classes is None:
            return pa.table({PREDICTION: pa.array(out, pa.float64())})
        names = probability_columns(self.predictor.classes)
        return pa.table({n: pa.array(out[:, k], pa.float64()) for k, n in enumerate(names)})


def champion_ref(settings: Settings) -> registry.VersionRef:
    """The champion's registry entry; a MonitorError where there is none (nothing to judge)."""
    model = settings.dataset.name
    ref = registry.champion(root=settings.home, model=model)
    if ref is None:
        raise MonitorError(
            f"{model}: no champion to monitor yet; train one first (driftloop train)"
        )
    return ref


def load_champion(settings: Settings) -> Champion:
    """The champion, loaded, with its training sample; a MonitorError where there is none."""
    model = settings.dataset.name
    ref = champion_ref(settings)
    meta = registry.get_version(root=settings.home, model=model, version=ref.version)
    try:
        reference = data.read_table(ref.file(files.REFERENCE))
    except (data.DataError, FileNotFoundError) as exc:
        why = f"{model} v{ref.version}: no training sample to compare with: {exc}"
        raise MonitorError(why) from None
    config = settings.monitoring
    return Champion(
        model=model,
        version=ref.version,
        predictor=load_model(ref.location),
        metrics=dict(meta.get("metrics") or {}),
        reference=sample(reference, rows=config.sample_rows, seed=config.seed),
        location=ref.location,
        trained_on=registry.trained_on(ref),
    )


def not_trained_on(table: pa.Table, champion: Champion) -> pa.Table:
    """The rows of `table` (with request ids) the champion did not train on."""
    if len(champion.trained_on) == 0 or traffic.REQUEST_ID not in table.column_names:
        return table
    seen = pc.is_in(table[traffic.REQUEST_ID], value_set=champion.trained_on)
    return table.filter(pc.invert(seen))


def with_outputs(table: pa.Table, outputs: pa.Table | None) -> pa.Table:
    """`table` with the champion's output columns beside it (replacing logged ones)."""
    if outputs is None:
        return table
    keep = table.drop_columns([c for c in outputs.column_names if c in table.column_names])
    for name in outputs.column_names:
        keep = keep.append_column(name, outputs[name])
    return keep


# Data quality ------------------------------------------------------------------------------------


def without_outliers(window: Window, *, champion: Champion, settings: Settings) -> Window:
    """The window whose sample leaves out the rows with a value far outside the champion's
    training range (`validation.outlier_spans`), which it records: a handful of them would
    move a drift score or a type check by themselves; they are a finding of their own, and a
    problem past `validation.batch_range_share` of the rows."""
    cfg = settings.validation
    far, found = validation.find_outliers(
        window.table, outlier_bounds(champion, settings), spans=cfg.outlier_spans,
        limit=cfg.batch_range_share,
    )  # fmt: skip
    table = window.table.filter(pa.array(~far)) if found.rows else window.table
    return replace(window, table=table, outliers=found)


def outlier_bounds(champion: Champion, settings: Settings) -> validation.Bounds:
    """Beyond these a numeric feature's value is an outlier: the champion's training range
    widened by `validation.outlier_spans` spans."""
    spans = settings.validation.outlier_spans
    return validation.outlier_bounds(
        champion.reference, columns=champion.features.numeric, spans=spans
    )


def data_problems(window: Window, report: validation.ValidationReport | None) -> list[str]:
    """The problems that block a retraining: the failed checks, and outliers once they are a
    problem (past `validation.batch_range_share` of the rows: a broken feed, not a stray value)."""
    problems = [] if report is None else list(report.problems)
    return problems + (["outliers"] if window.outliers and window.outliers.problem else [])


def window_settings(settings: Settings, champion: Champion) -> Settings:
    """The contract a prediction log can meet: the champion's features and the target (the log
    has no id or timestamp column; slices are judged only where they are features)."""
    ds = settings.dataset
    features = champion.features
    contract = ds.model_copy(
        update={
            "features": features,
            "id": None,
            "timestamp": None,
            "slices": [s for s in ds.slices if s in features.all],
        }
    )
    return settings.model_copy(update={"dataset": contract})


def check_data(
    window: Window, *, champion: Champion, settings: Settings
) -> validation.ValidationReport:
    """The window's sample against the validation suite (built from the champion's training
    sample): data quality, not drift (`validation.check_batch`)."""
    return check_rows(window.table, champion=champion, settings=settings)


def check_rows(
    rows: pa.Table, *, champion: Champion, settings: Settings
) -> validation.ValidationReport:
    """Logged rows (features, and the target where labels came) against the validation suite
    built from the champion's training sample; the rows as checked are `sent_rows(rows, ...)`."""
    contract = window_settings(settings, champion)
    suite = validation.build_suite(
        champion.reference, settings=contract,
        profile_source=f"{contract.dataset.name} v{champion.version}",
    )  # fmt: skip
    table = sent_rows(rows, champion=champion, settings=settings)
    return validation.check_batch(table, suite=suite, settings=contract, source="prediction log")


def sent_rows(rows: pa.Table, *, champion: Champion, settings: Settings) -> pa.Table:
    """The features and the target of logged rows, integers back where they were sent."""
    target = settings.dataset.target
    columns = [c for c in [*champion.features.all, target] if c in rows.column_names]
    return as_sent(rows.select(columns), source=champion.reference.schema)


def as_sent(table: pa.Table, *, source: pa.Schema) -> pa.Table:
    """The logged rows with the source's integer types back where every value is whole: the
    log keeps each number as a float (`traffic.NUMERIC_TYPE`), so an integer sent as 3 is
    logged as 3.0. A fraction in an integer column stays a float: a schema break."""
    for i, name in enumerate(table.column_names):
        want = source.field(name).type if name in source.names else None
        if want is None or not pa.types.is_integer(want):
            continue
        if pa.types.is_floating(table.schema.field(name).type):
            with contextlib.suppress(pa.ArrowInvalid):  # not whole: left as it is
                table = table.set_column(i, name, table[name].cast(want))
    return table


# Quality -----------------------------------------------------------------------------------------


def judge_quality(window: Window, *, champion: Champion, settings: Settings) -> q.Quality:
    """Measured on the window's labelled rows when there are `min_labelled_rows`, else
    estimated from the champion's probabilities (classification), else unknown."""
    config, ds = settings.monitoring, settings.dataset
    try:
        primary = primary_metric(ds.task, settings.gate)
    except DriftloopError as exc:
        return q.unknown(str(exc))
    baseline = _number(champion.metrics.get(primary))
    if window.labelled >= config.min_labelled_rows:  # never on rows it trained on
        rows = not_trained_on(window.labelled_table, champion)
        y, pred = _labelled(rows, champion=champion, target=ds.target)
        if y is not None and pred is not None and len(y) >= config.min_labelled_rows:
            return q.measured(y, pred, metric_name=primary, baseline=baseline, config=config)
    if champion.predictor.classes is None:
        why = f"{window.labelled} labelled row(s) (< {config.min_labelled_rows}), and a "
        return q.unknown(why + "regression has no estimate without labels", metric_name=primary)
    outputs = champion.outputs(window.table)
    if outputs is None or window.table.num_rows < 2:
        return q.unknown("the champion cannot score the window's rows", metric_name=primary)
    probs = np.column_stack([outputs[c].to_numpy() for c in outputs.column_names])
    name = primary if primary in q.ESTIMABLE else "roc_auc"
    baseline = _number(champion.metrics.get(name))
    return q.estimated(probs, metric_name=name, baseline=baseline, config=config)


def _labelled(
    table: pa.Table, *, champion: Champion, target: str
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The labels (class indices in the champion's order, or values) and the champion's
    outputs on the labelled rows; labels of classes it never saw are left out."""
    outputs = champion.outputs(table)
    if outputs is None:
        return None, None
    pred = np.column_stack([outputs[c].to_numpy() for c in outputs.column_names])
    classes = champion.predictor.classes
    labels = table[target].to_pylist()
    if classes is None:
        return np.asarray(labels, dtype=np.float64), pred[:, 0]
    index = {str(c): k for k, c in enumerate(classes)}
    y = np.array([index.get(str(v), -1) for v in labels], dtype=np.int64)
    known = y >= 0
    return y[known], pred[known]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None
