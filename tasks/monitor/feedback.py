"""Labelled production rows for a retraining: checked like any batch, then split three ways.

    rows = labelled_traffic(champion=champion, settings=settings)
    rows.train     # join the source's training split
    rows.select    # validate the retraining and choose how fast old rows fade
    rows.gate      # the gate judges challenger and champion on these: neither trained on them
    rows.dropped   # the rows the batch checks left out, and why

The rows of the last `retraining.feedback_days` that have a label pass the champion's batch
checks first (`tasks.validation.failing_rows`): the rows that break a check the batch fails (the
nulls of a column with too many, the categories outside a domain too many left) and the outliers
are left out and counted; past `retraining.max_invalid_share` of them the retraining fails,
naming the checks. The split is by request id (a hash, so the same rows always fall the same
way); the rows the champion trained on never judge it, so they go to training.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks import data, traffic, validation
from tasks.errors import DriftloopError
from tasks.monitor.checks import Champion, check_rows, outlier_bounds, sent_rows
from tasks.monitor.window import with_labels
from tasks.settings import Settings

_BUCKETS = 10_000


class LabelledRowsRejected(DriftloopError):
    """Too many labelled production rows break the batch checks to retrain on them."""


@dataclass(frozen=True)
class LabelledTraffic:
    """A retraining's labelled production rows: request_id, predicted_at, model_version, the
    features and the target, split three ways."""

    train: pa.Table
    select: pa.Table
    gate: pa.Table
    since: datetime
    dropped: validation.RowFailures | None = None  # None: there were no labelled rows

    @property
    def rows(self) -> int:
        return self.train.num_rows + self.select.num_rows + self.gate.num_rows

    def describe(self) -> str:
        counts = (
            f"{self.train.num_rows:,} to train on, {self.select.num_rows:,} to validate and "
            f"choose the weighting, {self.gate.num_rows:,} for the gate"
        )
        if self.dropped is not None and self.dropped.dropped:
            return f"{counts}; left out: {self.dropped.describe()}"
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "train_rows": self.train.num_rows,
            "select_rows": self.select.num_rows,
            "gate_rows": self.gate.num_rows,
            "dropped_rows": 0 if self.dropped is None else self.dropped.dropped,
            "dropped": {} if self.dropped is None else dict(self.dropped.reasons),
        }


def labelled_traffic(
    *, champion: Champion, settings: Settings, now: datetime | None = None
) -> LabelledTraffic:
    """The production rows of the last `retraining.feedback_days` that have a label and pass
    the batch checks, split for training, choosing and the gate (see the module docstring).

    Raises:
        LabelledRowsRejected: more than `retraining.max_invalid_share` of the labelled rows
            break the checks; the message names the checks and their rows.
    """
    config, ds = settings.retraining, settings.dataset
    since = (now or datetime.now(timezone.utc)) - timedelta(days=config.feedback_days)
    columns = [traffic.REQUEST_ID, traffic.PREDICTED_AT, traffic.MODEL_VERSION]
    columns += champion.features.all
    served = traffic.answered(home=settings.home, model=ds.name, columns=columns, since=since)
    joined = (
        None
        if served is None
        else with_labels(served, home=settings.home, model=ds.name, target=ds.target)
    )
    if joined is None or ds.target not in joined.column_names:
        empty = pa.table({name: pa.array([], pa.null()) for name in [*columns, ds.target]})
        return LabelledTraffic(train=empty, select=empty, gate=empty, since=since)
    labelled = joined.filter(pc.is_valid(joined[ds.target])).drop_columns([traffic.RECEIVED_AT])
    failures = validation.failing_rows(
        sent_rows(labelled, champion=champion, settings=settings),
        report=check_rows(labelled, champion=champion, settings=settings),
        bounds=outlier_bounds(champion, settings),
    )
    if failures.share > config.max_invalid_share:
        raise LabelledRowsRejected(
            f"labelled production rows: {failures.describe()}; more than "
            f"retraining.max_invalid_share {config.max_invalid_share:.0%}: fix the feed first"
        )
    kept = labelled.filter(pa.array(failures.keep))
    gate, select = _split(kept, champion=champion, settings=settings)
    return LabelledTraffic(
        train=kept.filter(pa.array(~gate & ~select)),
        select=kept.filter(pa.array(select)),
        gate=kept.filter(pa.array(gate)),
        since=since,
        dropped=failures,
    )


def _split(
    rows: pa.Table, *, champion: Champion, settings: Settings
) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the gate's rows and the selection rows, by request-id hashes; rows the champion
    trained on never go to the gate."""
    config = settings.retraining
    ids = rows.select([traffic.REQUEST_ID])
    hashes = data.row_hashes(ids)
    trained = (
        pc.is_in(rows[traffic.REQUEST_ID], value_set=champion.trained_on).to_numpy(
            zero_copy_only=False
        )
        if len(champion.trained_on)
        else np.zeros(rows.num_rows, dtype=bool)
    )
    gate = _share(hashes, config.gate_share) & ~trained
    salted = pc.binary_join_element_wise(rows[traffic.REQUEST_ID], "select", "#")
    select = _share(data.row_hashes(pa.table({"id": salted})), config.selection_share)
    return gate, select & ~gate


def _share(hashes: np.ndarray, share: float) -> np.ndarray:
    """The rows whose hash falls in the first `share` of the buckets."""
    return hashes % np.uint64(_BUCKETS) < np.uint64(round(share * _BUCKETS))
