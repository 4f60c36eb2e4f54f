"""Labelled production rows for the retraining flow: some to train on, the rest for the gate.

    rows = split_feedback(home=home, model="churn", target="churned", features=features,
                          config=settings.monitoring)
    rows.train   # joins the source data's training split
    rows.gate    # the labelled traffic the gate judges challenger and champion on

The split is by request id (a hash, so the same rows always fall the same way), and the rows the
gate judges on are never trained on: a challenger is not graded on what it learned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks import data, traffic
from tasks.monitor.window import with_labels
from tasks.settings import MonitoringConfig

_BUCKETS = 10_000


@dataclass(frozen=True)
class FeedbackRows:
    """Labelled production rows of the last `feedback_days`, split for training and the gate."""

    train: pa.Table
    gate: pa.Table
    since: datetime

    @property
    def rows(self) -> int:
        return self.train.num_rows + self.gate.num_rows


def split_feedback(
    *,
    home: str,
    model: str,
    target: str,
    features: Sequence[str],
    config: MonitoringConfig,
    now: datetime | None = None,
) -> FeedbackRows:
    """The production rows of the last `monitoring.feedback_days` that have a label (features
    and the target only), `feedback_gate_share` of them kept for the gate."""
    since = (now or datetime.now(timezone.utc)) - timedelta(days=config.feedback_days)
    columns = [traffic.REQUEST_ID, traffic.PREDICTED_AT, *features]
    served = traffic.read(home=home, model=model, kind="predictions", columns=columns, since=since)
    empty = pa.table({name: pa.array([], pa.null()) for name in [*features, target]})
    if served is None:
        return FeedbackRows(train=empty, gate=empty, since=since)
    joined = with_labels(served, home=home, model=model, target=target)
    if target not in joined.column_names:
        return FeedbackRows(train=empty, gate=empty, since=since)
    labelled = joined.filter(pc.is_valid(joined[target]))
    buckets = data.row_hashes(labelled.select([traffic.REQUEST_ID])) % np.uint64(_BUCKETS)
    to_gate = buckets < np.uint64(round(config.feedback_gate_share * _BUCKETS))
    keep = [c for c in [*features, target] if c in labelled.column_names]
    rows = labelled.select(keep)
    return FeedbackRows(
        train=rows.filter(pa.array(~to_gate)), gate=rows.filter(pa.array(to_gate)), since=since
    )


def conform(rows: pa.Table, *, schema: pa.Schema) -> pa.Table:
    """`rows` in the columns and types of `schema` (the source's): columns the prediction log
    does not carry (the id, the timestamp) are null, columns `schema` lacks are dropped."""
    columns = []
    for field in schema:
        if field.name in rows.column_names:
            try:
                columns.append(rows[field.name].cast(field.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise data.DataError(
                    f"labelled production rows: column {field.name!r} ({rows[field.name].type}) "
                    f"does not fit the source's {field.type}: {str(exc).splitlines()[0]}"
                ) from None
        else:
            columns.append(pa.nulls(rows.num_rows, field.type))
    return pa.table(columns, schema=schema)
