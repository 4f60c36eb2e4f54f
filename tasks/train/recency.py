"""How fast old rows fade in a retraining: recency weights, and the half-life that predicts the
present best, chosen per retraining on recent labelled rows that no candidate trained on.

    ages = ages_in_days(times, untimed_days=30)          # one per row; NaN: no time
    recency = choose_half_life(pool, ages, select=recent_rows, settings=settings)
    weights = recency_weights(ages, recency.half_life_days)

Every row weighs 0.5 ** (age / half-life), its age counted back from the newest row. No single
half-life fits every world (issue 18's measurements): the generator's concept drift wants the
old source almost gone (gradient boosting on fresh new-concept rows: ROC-AUC 0.73 with the source
at ~0.05 weight, 0.24 unweighted), a real table whose inputs drifted but whose old rows still
teach wants them all. So each candidate of `retraining.half_lives_days` gets a quick fit (the
same network and preprocessing, `retraining.selection_steps` optimizer steps of the per-worker
loop, in this process) on the pool weighted by it, is scored on the selection rows by the
training's validation metric (val_auc, val_accuracy or val_rmse), and the best is chosen; ties go
to the earlier candidate. A row weighing less than `PRUNE` of the heaviest teaches nothing and is
left out of the fit (and of the training that follows).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from tasks import data, traffic
from tasks.budget import plan_budget
from tasks.calibration import effective_rows
from tasks.loop import BatchStream, LoopTraining, Shard, evaluate, make_scheduler, run_steps
from tasks.model import Kind, ModelError, ModelSpec, Preprocessor, TabularMLP
from tasks.train.driver import METRICS

if TYPE_CHECKING:
    from tasks.settings import Settings

PRUNE = 1e-3  # rows lighter than this share of the heaviest are left out
DAY_US = 86_400 * 1_000_000


@dataclass(frozen=True)
class Candidate:
    """One half-life, fitted quickly and scored on the selection rows."""

    half_life_days: float | None  # None: no decay
    metric: float  # on the selection rows (NaN: could not be scored)
    rows: int  # pool rows it kept (heavier than PRUNE of the heaviest)
    effective_rows: float  # what those rows are worth, weighted (Kish)


@dataclass(frozen=True)
class Recency:
    """The half-life a retraining trains with, and how it was chosen."""

    half_life_days: float | None
    metric_name: str
    selection_rows: int
    candidates: list[Candidate]
    reason: str  # one line for people

    def weights(self, ages: np.ndarray) -> np.ndarray:
        return recency_weights(ages, self.half_life_days)

    def describe(self) -> str:
        return self.reason

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["candidates"] = [
            {**c, "metric": c["metric"] if math.isfinite(c["metric"]) else None}
            for c in out["candidates"]
        ]
        return out


def ages_in_days(times_us: np.ndarray, *, untimed_days: float) -> np.ndarray:
    """Each row's age in days, counted back from the newest time (`times_us`: microseconds,
    NaN where a row has no time). A row without a time counts as old as the oldest row, and at
    least `untimed_days` old."""
    times = np.asarray(times_us, dtype=np.float64)
    timed = np.isfinite(times)
    if not timed.any():
        return np.full(len(times), float(untimed_days))
    ages = (times.max(where=timed, initial=-np.inf) - times) / DAY_US
    oldest = float(ages[timed].max())
    return np.where(timed, ages, max(oldest, untimed_days))


def recency_weights(ages: np.ndarray, half_life_days: float | None) -> np.ndarray:
    """0.5 ** (age / half-life) per row; 1 for every row without a half-life."""
    if half_life_days is None:
        return np.ones(len(ages))
    return np.power(0.5, np.asarray(ages, dtype=np.float64) / half_life_days)


def kept(weights: np.ndarray) -> np.ndarray:
    """The rows heavy enough to teach something (>= PRUNE of the heaviest)."""
    w = np.asarray(weights, dtype=np.float64)
    return w >= PRUNE * float(w.max(initial=0.0)) if len(w) else np.zeros(0, dtype=bool)


def choose_half_life(
    pool: pa.Table, ages: np.ndarray, *, select: pa.Table, settings: Settings
) -> Recency:
    """The candidate half-life whose quick fit on `pool` (weighted by it) scores best on
    `select`; the first candidate, unchosen, where fewer than `min_selection_rows` can choose."""
    config = settings.retraining
    options = list(config.half_lives_days)
    metric, mode = METRICS[_kind(pool, settings)]
    if select.num_rows < config.min_selection_rows or len(options) == 1:
        why = (
            f"only {select.num_rows:,} recent labelled rows to choose on "
            f"(< retraining.min_selection_rows {config.min_selection_rows:,})"
            if len(options) > 1
            else "the only candidate"
        )
        return Recency(
            half_life_days=options[0], metric_name=metric, selection_rows=select.num_rows,
            candidates=[], reason=f"half-life {_days(options[0])}: {why}",
        )  # fmt: skip
    found = []
    for half_life in options:
        weights = recency_weights(ages, half_life)
        keep = kept(weights)
        score = quick_score(
            pool.filter(pa.array(keep)), weights[keep], select=select, settings=settings
        )
        found.append(Candidate(half_life, score, int(keep.sum()), effective_rows(weights[keep])))
    scored = [c for c in found if math.isfinite(c.metric)]
    if not scored:
        return Recency(
            half_life_days=options[0], metric_name=metric, selection_rows=select.num_rows,
            candidates=found, reason=f"half-life {_days(options[0])}: no candidate could be scored",
        )  # fmt: skip
    sign = 1.0 if mode == "max" else -1.0
    best = max(scored, key=lambda c: sign * c.metric)  # max keeps the first of equal ones
    shown = ", ".join(f"{_days(c.half_life_days)} {c.metric:.3f}" for c in found)
    reason = (
        f"half-life {_days(best.half_life_days)}: best {metric} on {select.num_rows:,} recent "
        f"labelled rows no candidate trained on ({shown})"
    )
    return Recency(
        half_life_days=best.half_life_days, metric_name=metric, selection_rows=select.num_rows,
        candidates=found, reason=reason,
    )  # fmt: skip


def quick_score(
    train: pa.Table, weights: np.ndarray, *, select: pa.Table, settings: Settings, seed: int = 0
) -> float:
    """A quick fit of the network on `train` (rows weighted) scored on `select` by the
    training's validation metric; NaN where they cannot be fitted or scored (one class only,
    classes the fit never saw)."""
    training, ds = settings.training, settings.dataset
    try:
        pre = Preprocessor.fit(train, features=settings.features, target=ds.target, task=ds.task)
        fit_rows, judge = shard_of(pre, train, weights), shard_of(pre, select)
    except ModelError:
        return math.nan
    steps = settings.retraining.selection_steps
    loop = LoopTraining.of(training.model_copy(update={"min_steps": steps, "max_steps": steps}))
    budget = plan_budget(rows=len(fit_rows), config=loop)
    torch.manual_seed(seed)
    model = TabularMLP(ModelSpec.build(pre, training))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=training.learning_rate, weight_decay=training.weight_decay
    )
    stream = BatchStream(fit_rows, batch=budget.global_batch, seed=seed, rank=0)
    run_steps(
        model, optimizer, stream, kind=pre.kind, start=0, stop=budget.total_steps,
        dropout_seed=(seed, 0, 0),
        scheduler=make_scheduler(optimizer, budget, min_lr_share=training.min_lr_share),
    )  # fmt: skip
    return evaluate(model, judge, kind=pre.kind, target_std=pre.target_std)[1]


def shard_of(pre: Preprocessor, table: pa.Table, weights: np.ndarray | None = None) -> Shard:
    """`table` encoded as a loop's rows, in this process (weights scaled to average 1)."""
    encoded = pre.transform(table)
    w = np.ones(table.num_rows) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.mean() if len(w) and w.mean() > 0 else w
    return Shard(
        torch.from_numpy(encoded.numeric),
        torch.from_numpy(encoded.categorical),
        torch.from_numpy(pre.encode_target(table)),
        torch.from_numpy(w.astype(np.float32)),
    )


def _kind(pool: pa.Table, settings: Settings) -> Kind:
    """The model kind the pool makes (a classifier's by its number of classes)."""
    ds = settings.dataset
    if ds.task == "regression":
        return "regression"
    classes = pc.count_distinct(pool[ds.target]).as_py() if ds.target in pool.column_names else 2
    return "binary" if classes <= 2 else "multiclass"


def _days(half_life: float | None) -> str:
    return "none (no decay)" if half_life is None else f"{half_life:g} d"


# A retraining's rows: the source's splits and the labelled traffic, weighted ---------------------


@dataclass(frozen=True)
class Labelled:
    """A retraining's labelled production rows (request_id, predicted_at, features, target):
    to train on, to validate and choose on, and for the gate (`tasks.monitor.feedback`)."""

    train: pa.Table
    select: pa.Table
    gate: pa.Table


@dataclass(frozen=True)
class TrainingRows:
    """What a training trains on: the rows (in the source's schema), their weights, and for a
    retraining the choice of weighting and what it means for the holdout."""

    train: pa.Table
    validation: pa.Table
    weights: np.ndarray | None = None  # None: every row alike (a first training)
    validation_weights: np.ndarray | None = None
    recency: Recency | None = None
    holdout_weight: float = 1.0  # the holdout rows' mean weight (the newest rows weigh 1)
    trained_on: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))

    def reference(self, *, rows: int) -> bytes:
        """A sample of what it trained on, weighted as it was (Parquet bytes): the next
        validation profile and the drift monitor's reference."""
        return data.sample_parquet(self.train, rows=rows, weights=self.weights)

    def describe(self) -> str:
        if self.recency is None:
            return f"{self.train.num_rows:,} training rows, {self.validation.num_rows:,} validation"
        return (
            f"{self.train.num_rows:,} training rows ({len(self.trained_on):,} labelled "
            f"production rows among train and validation), {self.validation.num_rows:,} "
            f"validation; {self.recency.reason}; the source holdout weighs "
            f"{self.holdout_weight:.3g}"
        )


def training_rows(
    parts: data.Splits, labelled: Labelled | None, *, settings: Settings
) -> TrainingRows:
    """The source's training and validation splits, plus for a retraining its labelled rows
    (`labelled.train` to train on, `labelled.select` to validate and choose the half-life on),
    weighted by the chosen half-life, the rows too light to teach left out. Only source rows
    of the last `retraining.source_window_days` take part, where that is set."""
    if labelled is None:
        return TrainingRows(train=parts.train, validation=parts.validation)
    ds, config = settings.dataset, settings.retraining
    source = [parts.train, parts.validation, parts.holdout]
    new = [traffic.as_source(t, schema=parts.train.schema, timestamp=ds.timestamp)
           for t in (labelled.train, labelled.select)]  # fmt: skip
    times = [_source_times(t, ds.timestamp) for t in source]
    times += [_micros(t[traffic.PREDICTED_AT]) for t in (labelled.train, labelled.select)]
    ages = np.split(
        ages_in_days(np.concatenate(times), untimed_days=config.feedback_days),
        np.cumsum([len(t) for t in times])[:-1],
    )
    window = np.inf if config.source_window_days is None else config.source_window_days
    in_window = [a <= window for a in ages[:2]]
    pool = pa.concat_tables([parts.train.filter(pa.array(in_window[0])), new[0]])
    pool_ages = np.concatenate([ages[0][in_window[0]], ages[3]])
    validation = pa.concat_tables([parts.validation.filter(pa.array(in_window[1])), new[1]])
    validation_ages = np.concatenate([ages[1][in_window[1]], ages[4]])
    recency = choose_half_life(pool, pool_ages, select=new[1], settings=settings)
    weights, validation_weights = recency.weights(pool_ages), recency.weights(validation_ages)
    keep, keep_validation = kept(weights), kept(validation_weights)
    ids = pa.concat_arrays(
        [
            t[traffic.REQUEST_ID].combine_chunks().cast(pa.string())
            for t in (labelled.train, labelled.select)
        ]
    )
    return TrainingRows(
        train=pool.filter(pa.array(keep)),
        validation=validation.filter(pa.array(keep_validation)),
        weights=weights[keep],
        validation_weights=validation_weights[keep_validation],
        recency=recency,
        holdout_weight=float(np.mean(recency.weights(ages[2]))) if len(ages[2]) else 1.0,
        trained_on=ids,
    )


def _source_times(table: pa.Table, column: str | None) -> np.ndarray:
    if column is None or column not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return _micros(table[column])


def _micros(column: pa.ChunkedArray) -> np.ndarray:
    """Microseconds since the epoch (float, NaN where null) of a timestamp or date column."""
    stamped = column.cast(pa.timestamp("us", tz=getattr(column.type, "tz", None)))
    return np.asarray(
        pc.fill_null(stamped.cast(pa.int64()).cast(pa.float64()), np.nan).to_numpy(),
        dtype=np.float64,
    )
