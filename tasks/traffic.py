"""The prediction log and the feedback labels: the Parquet layout that serving writes and the
gate and the drift monitor read.

    append(home=home, model="churn", kind="predictions", rows=served)  # request_id, features...
    append(home=home, model="churn", kind="feedback", rows=labels)  # request_id, <target>
    recent = labelled(home=home, model="churn", target="churned", limit=5_000)

Under `DRIFTLOOP_HOME` (a folder or a URI, through `pyarrow.fs`):

    predictions/<model>/date=YYYY-MM-DD/<uuid>.parquet   request_id, predicted_at, model_version,
                                                         the features, prediction
    feedback/<model>/date=YYYY-MM-DD/<uuid>.parquet      request_id, <target>, received_at

Each append is one new file, written beside its final name and moved into place, so a reader never
sees half of one. Labels arrive later than predictions and may arrive twice: the newest label of a
request id wins.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tasks import data, files

Kind = Literal["predictions", "feedback"]
REQUEST_ID, PREDICTED_AT, RECEIVED_AT = "request_id", "predicted_at", "received_at"
# The prediction log's columns beside the features (`PROBABILITY<class>`: one per class)
MODEL_VERSION, PREDICTION, PROBABILITY, LATENCY_MS = (
    "model_version", "prediction", "probability_", "latency_ms"
)  # fmt: skip
_TIME = {"predictions": PREDICTED_AT, "feedback": RECEIVED_AT}


# A feature's column type in the prediction log: Serve parses every numeric feature as a JSON
# number (a float) and every category as text
NUMERIC_TYPE, CATEGORY_TYPE = pa.float64(), pa.string()


def feature_types(*, numeric: Sequence[str], categorical: Sequence[str]) -> dict[str, pa.DataType]:
    """The Arrow type of each feature column in the prediction log."""
    return {**dict.fromkeys(numeric, NUMERIC_TYPE), **dict.fromkeys(categorical, CATEGORY_TYPE)}


class TrafficError(data.DataError):
    """Rows that cannot join the log; the message names the column and what is wrong."""


def append(*, home: str, model: str, kind: Kind, rows: pa.Table) -> str | None:
    """Add rows to the prediction log or the feedback labels; returns the file written (or None
    for no rows). A missing time column is stamped with now (UTC)."""
    if REQUEST_ID not in rows.column_names:
        raise TrafficError(
            f"{kind}: no {REQUEST_ID!r} column; columns: {', '.join(rows.column_names)}"
        )
    if rows[REQUEST_ID].null_count:
        raise TrafficError(f"{kind}: {rows[REQUEST_ID].null_count} row(s) have no {REQUEST_ID}")
    if rows.num_rows == 0:
        return None
    rows = _stamped(rows, column=_TIME[kind])
    fs, base = files.resolve(location(home=home, model=model, kind=kind))
    day = pc.min(rows[_TIME[kind]]).as_py().date().isoformat()
    folder = f"{base}/date={day}"
    final = f"{folder}/{uuid.uuid4().hex}.parquet"
    sink = pa.BufferOutputStream()
    pq.write_table(rows, sink)
    files.write_atomic_fs(fs, final, sink.getvalue().to_pybytes())
    return final


def read(
    *,
    home: str,
    model: str,
    kind: Kind,
    columns: list[str] | None = None,
    since: datetime | None = None,
) -> pa.Table | None:
    """The rows of the log or the labels (None when there are none yet): all of them, or those
    stamped at or after `since` (day folders before it are not opened); every column, or only
    `columns` (those the files have: a column no file has is left out, not invented)."""
    fs, base = files.resolve(location(home=home, model=model, kind=kind))
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return None
    first_day = f"date={since.astimezone(timezone.utc).date().isoformat()}" if since else ""
    found_files = [
        i
        for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))
        if i.type == pafs.FileType.File
        and i.base_name.endswith(".parquet")
        and i.path.rsplit("/", 2)[-2] >= first_day
    ]
    if not found_files:
        return None
    parts = [i.path for i in found_files]
    # the newest file's schema governs: older files are read into it (a column they lack is null)
    newest = max(found_files, key=lambda i: (i.path.rsplit("/", 2)[-2], i.mtime_ns or 0))
    schema = pq.read_schema(newest.path, filesystem=fs)
    found = pads.dataset(parts, schema=schema, filesystem=fs, format="parquet")
    wanted = None if columns is None else [c for c in columns if c in schema.names]
    where = (
        None
        if since is None
        else pc.field(_TIME[kind]) >= pa.scalar(since, schema.field(_TIME[kind]).type)
    )
    try:
        return found.to_table(columns=wanted, filter=where)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise TrafficError(f"{kind}/{model}: its files disagree on a column's type: "
                           f"{files.first_line(exc)}") from None  # fmt: skip


def labelled(*, home: str, model: str, target: str, limit: int) -> pa.Table | None:
    """The most recent `limit` predictions that have a label, with the label as `target`, newest
    first; None when no prediction has one yet."""
    served = read(home=home, model=model, kind="predictions")
    labels = read(home=home, model=model, kind="feedback")
    if served is None or labels is None:
        return None
    if target not in labels.column_names:
        raise TrafficError(f"feedback/{model}: no {target!r} column (the target) in the labels")
    labels = newest_labels(labels.filter(pc.is_valid(labels[target])), target=target)
    served = served.drop_columns([c for c in (target,) if c in served.column_names])
    joined = served.join(labels.select([REQUEST_ID, target]), keys=REQUEST_ID, join_type="inner")
    if joined.num_rows == 0:
        return None
    newest = joined.sort_by([(PREDICTED_AT, "descending"), (REQUEST_ID, "ascending")])
    return newest.slice(0, limit)


def as_source(rows: pa.Table, *, schema: pa.Schema, timestamp: str | None = None) -> pa.Table:
    """Logged rows in the columns and types of `schema` (the source's): columns the prediction
    log does not carry (the id) are null, columns `schema` lacks are dropped; the source's
    `timestamp` column, where it has one, is when the row was predicted.

    Raises:
        TrafficError: a logged column does not fit the source's type (names it).
    """
    columns = []
    for field in schema:
        name = PREDICTED_AT if field.name == timestamp else field.name
        if name in rows.column_names:
            try:
                columns.append(rows[name].cast(field.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise TrafficError(
                    f"labelled production rows: column {field.name!r} ({rows[name].type}) "
                    f"does not fit the source's {field.type}: {files.first_line(exc)}"
                ) from None
        else:
            columns.append(pa.nulls(rows.num_rows, field.type))
    return pa.table(columns, schema=schema)


def location(*, home: str, model: str, kind: Kind) -> str:
    """`<home>/<kind>/<model>`: a path or a URI."""
    return files.join(home, kind, model)


def _stamped(rows: pa.Table, *, column: str) -> pa.Table:
    if column in rows.column_names:
        if not pa.types.is_timestamp(rows.schema.field(column).type):
            raise TrafficError(
                f"{column}: must be a timestamp, not {rows.schema.field(column).type}"
            )
        return rows
    now = pa.array([datetime.now(timezone.utc)] * rows.num_rows, pa.timestamp("us", tz="UTC"))
    return rows.append_column(column, now)


def newest_labels(labels: pa.Table, *, target: str) -> pa.Table:
    """One label per request id: the one received last (of equal times, the one read last).
    Every reader of the labels uses this rule: `request_id`, `received_at`, `target`."""
    frame = labels.select([REQUEST_ID, RECEIVED_AT, target]).to_pandas()
    frame = frame.sort_values(RECEIVED_AT, kind="stable").drop_duplicates(REQUEST_ID, keep="last")
    schema = labels.schema
    fields = [schema.field(REQUEST_ID), schema.field(RECEIVED_AT), schema.field(target)]
    return pa.Table.from_pandas(frame, schema=pa.schema(fields), preserve_index=False)
