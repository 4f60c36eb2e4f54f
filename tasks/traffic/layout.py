"""The prediction log and the feedback labels: the Parquet layout that serving writes and the
gate and the drift monitor read.

    append(home=home, model="churn", kind="predictions", rows=served)  # request_id, features...
    append(home=home, model="churn", kind="feedback", rows=labels)  # request_id, <target>
    recent = labelled(home=home, model="churn", target="churned", limit=5_000)

Under `DRIFTLOOP_HOME` (a folder or a URI, through `pyarrow.fs`):

    predictions/<model>/date=YYYY-MM-DD/<first>-<last>-<name>.parquet   request_id, predicted_at,
                                        model_version, the features, prediction, probabilities
    shadow/<model>/...                  the same columns: a shadow candidate's outputs for the
                                        answered requests of those ids (no one received them)
    feedback/<model>/date=YYYY-MM-DD/<first>-<last>-<name>.parquet      request_id, <target>,
                                        received_at

Each file is written beside its final name and moved into place, so a reader never sees half of
one; its name says the first and last millisecond it covers. Request ids begin with the
millisecond they were answered in (`new_request_ids`), so finding an id opens only the files of
its moment (`logged_ids`): the cost of a feedback look-up does not grow with the log. Labels
arrive later than predictions and may arrive more than once: the one rule every reader uses
(`newest_labels`) keeps the label received last, and of two received at the same microsecond the
one that arrived last.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tasks import data, files

# predictions: every answer given; feedback: labels; shadow: a shadow candidate's outputs for
# the same requests (their ids are the answered rows' ids), never an answer anyone received
Kind = Literal["predictions", "feedback", "shadow"]
LogKind = Literal["predictions", "shadow"]
KINDS: tuple[Kind, ...] = ("predictions", "feedback", "shadow")
REQUEST_ID, PREDICTED_AT, RECEIVED_AT = "request_id", "predicted_at", "received_at"
# The prediction log's columns beside the features (`PROBABILITY<class>`: one per class)
MODEL_VERSION, PREDICTION, PROBABILITY, LATENCY_MS = (
    "model_version", "prediction", "probability_", "latency_ms"
)  # fmt: skip
_TIME = {"predictions": PREDICTED_AT, "feedback": RECEIVED_AT, "shadow": PREDICTED_AT}
FILE = "file"  # the column `read(..., with_file=True)` adds: each row's file name
# a compacted file's footer key: the names of the files it replaces (`upkeep.compact`)
REPLACES = b"driftloop.replaces"
COMPACTED = "-compacted.parquet"  # how a compacted file's name ends


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
    day = pc.min(rows[_TIME[kind]]).as_py().date().isoformat()
    base = location(home=home, model=model, kind=kind)
    arrival = f"{time.time_ns():020d}{uuid.uuid4().hex[:12]}"  # names sort in arrival order
    return write_day_file(base, day=day, rows=rows, name=arrival)


# Row groups of a file sorted by request id (a compacted day): each group's min/max statistics
# let a look-up of a few ids read one group of them. Measured on a 100k-row file: 1.6 ms a
# look-up with groups of 10k rows, 8.3 ms as one group.
SORTED_ROW_GROUP = 10_000


def write_day_file(
    base: str, *, day: str, rows: pa.Table, name: str, row_group_size: int | None = None
) -> str:
    """`rows` as `<base>/date=<day>/<first>-<last>-<name>.parquet`, written atomically, where
    first and last are the rows' earliest and latest time in milliseconds (zero-padded, so the
    names sort by time): a look-up by time opens only the files that cover it."""
    column = PREDICTED_AT if PREDICTED_AT in rows.column_names else RECEIVED_AT
    low, high = pc.min_max(rows[column]).values()
    first, last = (int(v.as_py().timestamp() * 1000) for v in (low, high))
    fs, path = files.resolve(f"{base}/date={day}/{first:013d}-{last:013d}-{name}.parquet")
    sink = pa.BufferOutputStream()
    pq.write_table(rows, sink, row_group_size=row_group_size)
    files.write_atomic_fs(fs, path, sink.getvalue().to_pybytes())
    return path


def file_span(name: str) -> tuple[int, int] | None:
    """The first and last millisecond a log file's name says it covers (None: an older name)."""
    parts = name.split("-", 2)
    if len(parts) < 3 or not (parts[0].isdigit() and parts[1].isdigit()):
        return None
    return int(parts[0]), int(parts[1])


def read(
    *,
    home: str,
    model: str,
    kind: Kind,
    columns: list[str] | None = None,
    since: datetime | None = None,
    with_file: bool = False,
) -> pa.Table | None:
    """The rows of the log or the labels (None when there are none yet): all of them, or those
    stamped at or after `since` (day folders before it are not opened); every column, or only
    `columns` (those the files have: a column no file has is left out, not invented); with
    `with_file`, each row's file too (`FILE`, for `newest_labels`). A file removed between the
    listing and the reading (a compaction, a retirement) makes it read again, once."""
    for attempt in range(2):
        try:
            return _read(home=home, model=model, kind=kind, columns=columns, since=since,
                         with_file=with_file)  # fmt: skip
        except FileNotFoundError:
            if attempt:
                raise
    return None  # unreachable: the second attempt returns or raises


def _read(
    *,
    home: str,
    model: str,
    kind: Kind,
    columns: list[str] | None = None,
    since: datetime | None = None,
    with_file: bool = False,
) -> pa.Table | None:
    fs, base = files.resolve(location(home=home, model=model, kind=kind))
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return None
    first_day = f"date={since.astimezone(timezone.utc).date().isoformat()}" if since else ""
    found_files = [
        i for i in _live(fs, base) if i.path.rsplit("/", 2)[-2] >= first_day
    ]  # fmt: skip
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
        if not with_file:
            return found.to_table(columns=wanted, filter=where)
        parts = []
        for fragment in found.get_fragments():
            rows = fragment.to_table(schema=schema, columns=wanted, filter=where)
            name = fragment.path.rsplit("/", 1)[-1]
            parts.append(rows.append_column(FILE, pa.array([name] * rows.num_rows, pa.string())))
        return pa.concat_tables(parts)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise TrafficError(f"{kind}/{model}: its files disagree on a column's type: "
                           f"{files.first_line(exc)}") from None  # fmt: skip


def labelled(*, home: str, model: str, target: str, limit: int) -> pa.Table | None:
    """The most recent `limit` predictions that have a label, with the label as `target`, newest
    first; None when no prediction has one yet."""
    served = read(home=home, model=model, kind="predictions")
    labels = read(home=home, model=model, kind="feedback", with_file=True)
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


def new_request_ids(n: int) -> list[str]:
    """`n` request ids of 32 hex digits: the millisecond now (12 digits), then 80 random bits
    (one system call, not n): unique as uuid4 within a millisecond, and they say when."""
    stamp = f"{int(time.time() * 1000):012x}"
    raw = os.urandom(10 * n).hex()
    return [stamp + raw[i : i + 20] for i in range(0, 20 * n, 20)]


def id_millisecond(request_id: str) -> int | None:
    """The millisecond a request id of `new_request_ids` was made in (None: another id)."""
    if len(request_id) != 32:
        return None
    try:
        return int(request_id[:12], 16)
    except ValueError:
        return None


def logged_ids(*, home: str, model: str, wanted: Iterable[str], slack_ms: int = 60_000) -> set[str]:
    """Which of `wanted` the prediction log's Parquet files hold. Only the files whose names
    cover each id's millisecond (within `slack_ms`: a replica's clock, a file's first row) are
    opened; ids that do not say when, and files whose names do not, fall back to a full scan."""
    wanted = set(wanted)
    fs, base = files.resolve(location(home=home, model=model, kind="predictions"))
    if not wanted or fs.get_file_info(base).type != pafs.FileType.Directory:
        return set()
    moments = [id_millisecond(r) for r in wanted]
    found = _live(fs, base)
    if None not in moments:
        found = [i for i in found if _covers(i.base_name, moments, slack_ms)]  # type: ignore[arg-type]
    if not found:
        return set()
    dataset = pads.dataset([i.path for i in found], filesystem=fs, format="parquet")
    rows = dataset.to_table(
        columns=[REQUEST_ID], filter=pc.field(REQUEST_ID).isin(pa.array(sorted(wanted)))
    )
    return set(rows[REQUEST_ID].to_pylist())


def log_files(*, home: str, model: str, kind: Kind) -> list[str]:
    """The paths of the log's (or the labels') live Parquet files: those a compacted file
    replaced are left out (`upkeep.compact`)."""
    fs, base = files.resolve(location(home=home, model=model, kind=kind))
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return []
    return [i.path for i in _live(fs, base)]


def _live(fs: pafs.FileSystem, base: str) -> list[pafs.FileInfo]:
    """The Parquet files under `base` that no compacted file replaced (a compacted file names
    them in its footer: one atomic rename switches a reader from them to it)."""
    found = [
        i for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))
        if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
    ]  # fmt: skip
    replaced: set[str] = set()
    for info in found:
        if info.base_name.endswith(COMPACTED):
            with contextlib.suppress(FileNotFoundError, OSError):
                meta = pq.read_schema(info.path, filesystem=fs).metadata or {}
                folder = info.path.rsplit("/", 1)[0]
                replaced |= {f"{folder}/{n}" for n in json.loads(meta.get(REPLACES, b"[]"))}
    return [i for i in found if i.path not in replaced]


def _covers(name: str, moments: Sequence[int], slack_ms: int) -> bool:
    span = file_span(name)
    if span is None:
        return True  # an older file: its name does not say, so it is read
    first, last = span
    return any(first - slack_ms <= m <= last + slack_ms for m in moments)


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
    """One label per request id: the one received last; of two received at the same
    microsecond, the one that arrived last (the name of the file it was written to carries the
    writer's nanosecond clock; `read(..., with_file=True)` adds it, without it the one read last
    wins). Every reader of the labels uses this rule: `request_id`, `received_at`, `target`."""
    frame = labels.select([REQUEST_ID, RECEIVED_AT, target]).to_pandas()
    order = [RECEIVED_AT]
    if FILE in labels.column_names:  # arrival: the file name's last part (`append`'s clock)
        frame["_arrival"] = [name.split("-", 2)[-1] for name in labels[FILE].to_pylist()]
        order.append("_arrival")
    frame = frame.sort_values(order, kind="stable").drop_duplicates(REQUEST_ID, keep="last")
    frame = frame[[REQUEST_ID, RECEIVED_AT, target]]
    schema = labels.schema
    fields = [schema.field(REQUEST_ID), schema.field(RECEIVED_AT), schema.field(target)]
    return pa.Table.from_pandas(frame, schema=pa.schema(fields), preserve_index=False)
