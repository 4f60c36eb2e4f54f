"""The window of traffic a monitoring pass judges, read from the prediction log with pyarrow.

    window = read_window(home=home, model="churn", features=features, config=settings.monitoring)
    window.table          # the sampled rows (features, outputs, and labels where they arrived)
    window.rows           # all rows of the window, before sampling

Only the columns a pass needs are read (the features, the model's outputs, the request id and the
time), only the day folders the window reaches are opened, and the rows are sampled (seeded) to
`monitoring.sample_rows` before anything costly sees them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks import traffic
from tasks.settings import MonitoringConfig
from tasks.traffic import MODEL_VERSION, PREDICTION, PROBABILITY
from tasks.validation import Outliers


@dataclass(frozen=True)
class Window:
    """The traffic one pass judges: a sample of it, and what the whole window was."""

    table: pa.Table  # sampled rows: request_id, predicted_at, the features, <target> if any
    labelled_table: pa.Table  # a sample of the rows that have a label (<target> not null)
    rows: int  # rows in the window before sampling
    labelled: int  # rows of the window that have a label (all of them, before sampling)
    start: datetime | None  # the oldest and newest row's time (None: an empty window)
    end: datetime | None
    since: datetime | None  # where the time window begins (None: by rows only)
    # rows of the sample with a value far outside the champion's training range, left out of
    # `table` (drift and data quality judge the rest); None: not looked for yet
    outliers: Outliers | None = None
    version: int | None = None  # only the rows this model version answered (None: every row)
    # every row's predicted_at and every label's received_at (UTC microseconds, sorted): how
    # much of the window, and of its labels, is newer than a time the governor remembers
    row_times: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64), repr=False)
    label_times: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64), repr=False)

    def rows_after(self, moment: datetime | None) -> int:
        """Rows of the window predicted after `moment` (all of them for None)."""
        return _after(self.row_times, moment)

    def labels_after(self, moment: datetime | None) -> int:
        """Labels of the window's rows received after `moment` (all of them for None)."""
        return _after(self.label_times, moment)

    def describe(self) -> str:
        """For people: how many rows, over which span."""
        if self.start is None or self.end is None:
            return "no rows"
        span = f"{self.start:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d %H:%M} UTC"
        which = f" answered by v{self.version}" if self.version is not None else ""
        return f"{self.rows:,} rows{which} ({self.labelled:,} labelled), {span}"

    def to_dict(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "labelled": self.labelled,
            "sampled": self.table.num_rows,
            "version": self.version,
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
            "since": self.since.isoformat() if self.since else None,
            "outliers": self.outliers.to_dict() if self.outliers else None,
        }


def micros(moment: datetime) -> int:
    """A time as UTC microseconds since the epoch (how `Window` keeps its times)."""
    return int(moment.timestamp() * 1_000_000)


def _after(times: np.ndarray, moment: datetime | None) -> int:
    if moment is None:
        return len(times)
    return len(times) - int(np.searchsorted(times, micros(moment), side="right"))


def probability_columns(classes: Sequence[object] | None) -> list[str]:
    """The log's probability columns, in the model's class order (none for regression)."""
    return [f"{PROBABILITY}{c}" for c in classes or []]


def read_window(
    *,
    home: str,
    model: str,
    features: Sequence[str],
    target: str,
    config: MonitoringConfig,
    now: datetime | None = None,
    version: int | None = None,
) -> Window:
    """The window of the prediction log: the last `window_hours` (and/or the newest
    `window_rows` rows) that `version` answered (every version's for None), with the labels that
    have arrived for it as `target`, sampled to `sample_rows` rows (seeded, so the same window
    always gives the same sample)."""
    now = now or datetime.now(timezone.utc)
    since = None if config.window_hours is None else now - timedelta(hours=config.window_hours)
    needed = [traffic.REQUEST_ID, traffic.PREDICTED_AT, MODEL_VERSION, *features]
    served = traffic.answered(home=home, model=model, columns=needed, since=since)
    if served is not None and version is not None and MODEL_VERSION in served.column_names:
        served = served.filter(pc.equal(served[MODEL_VERSION], version))
    if served is None or served.num_rows == 0:
        empty = pa.table({})
        return Window(
            table=empty, labelled_table=empty, rows=0, labelled=0, start=None, end=None,
            since=since, version=version,
        )  # fmt: skip
    if config.window_rows is not None and served.num_rows > config.window_rows:
        ordered = served.sort_by(traffic.PREDICTED_AT)
        served = ordered.slice(ordered.num_rows - config.window_rows)
    served = with_labels(served, home=home, model=model, target=target)
    labelled = (
        served.filter(pc.is_valid(served[target]))
        if target in served.column_names
        else served.slice(0, 0)
    )
    times = served[traffic.PREDICTED_AT]
    return Window(
        table=sample(served, rows=config.sample_rows, seed=config.seed),
        labelled_table=sample(labelled, rows=config.sample_rows, seed=config.seed),
        rows=served.num_rows,
        labelled=labelled.num_rows,
        start=pc.min(times).as_py(),
        end=pc.max(times).as_py(),
        since=since,
        version=version,
        row_times=_sorted_micros(times),
        label_times=_sorted_micros(labelled[traffic.RECEIVED_AT])
        if traffic.RECEIVED_AT in labelled.column_names
        else np.empty(0, np.int64),
    )


def with_labels(served: pa.Table, *, home: str, model: str, target: str) -> pa.Table:
    """`served` with the newest label of each request id as `target` (null where none came)
    and the time it was received (`received_at`)."""
    labels = traffic.read(
        home=home,
        model=model,
        kind="feedback",
        columns=[traffic.REQUEST_ID, traffic.RECEIVED_AT, target],
        with_file=True,
    )
    if labels is None or target not in labels.column_names:
        return served
    unique = traffic.newest_labels(labels, target=target)
    keyed = unique.select([traffic.REQUEST_ID, target, traffic.RECEIVED_AT])
    served = served.drop_columns(
        [c for c in (target, traffic.RECEIVED_AT) if c in served.column_names]
    )
    joined = served.join(keyed, keys=traffic.REQUEST_ID, join_type="left outer")
    return joined.combine_chunks()


def _sorted_micros(times: pa.ChunkedArray) -> np.ndarray:
    values = pc.cast(times.drop_null(), pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return np.sort(np.asarray(values.to_numpy(), dtype=np.int64))


def sample(table: pa.Table, *, rows: int, seed: int) -> pa.Table:
    """At most `rows` rows of `table`, drawn without replacement with `seed`, in their order."""
    if table.num_rows <= rows:
        return table
    picked = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=rows, replace=False))
    return table.take(pa.array(picked))


def logged_rows(
    *,
    features: pa.Table,
    outputs: np.ndarray,
    classes: Sequence[object] | None,
    version: int,
    at: datetime | None = None,
    request_ids: Sequence[str] | None = None,
) -> pa.Table:
    """The rows Serve logs for these predictions (`outputs`: `Predictor.predict`'s): for tests,
    benchmarks and the demo, which write traffic without an HTTP round trip."""
    n = features.num_rows
    ids = list(request_ids) if request_ids is not None else [f"r{i:012d}" for i in range(n)]
    stamp = at or datetime.now(timezone.utc)
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        traffic.REQUEST_ID: pa.array(ids, pa.string()),
        traffic.PREDICTED_AT: pa.array([stamp] * n, pa.timestamp("us", tz="UTC")),
        MODEL_VERSION: pa.array(np.full(n, version, dtype=np.int64)),
    }
    for name in features.column_names:  # numbers as Serve logs them (traffic.feature_types)
        numeric = pa.types.is_integer(features[name].type) or pa.types.is_floating(
            features[name].type
        )
        columns[name] = features[name].cast(traffic.NUMERIC_TYPE) if numeric else features[name]
    if classes is None:
        columns[PREDICTION] = pa.array(np.asarray(outputs, dtype=np.float64))
    else:
        labels = np.asarray(list(classes), dtype=object)[np.asarray(outputs).argmax(axis=1)]
        columns[PREDICTION] = pa.array(labels.tolist())
        for k, name in enumerate(probability_columns(classes)):
            columns[name] = pa.array(np.asarray(outputs)[:, k], pa.float64())
    return pa.table(columns)
