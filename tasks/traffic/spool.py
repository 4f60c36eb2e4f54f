"""The prediction log's spool: every answer is appended to its replica's segment before it leaves,
and closed segments become the Parquet layout the monitor reads.

    spool = Spool(spool_folder(home, "churn"), fsync="segment")
    spool.append(record)            # one write(2) of one JSON line: a process kill loses nothing
    spool.rotate()                  # close this segment (fsync'd under "segment"), open the next
    convert_closed(home=home, model="churn")   # closed and orphaned segments -> Parquet

A segment is `<folder>/<writer>-<seq>.jsonl`, one JSON line per answered request (`encode`). The
OS holds each line once `append` returns, so a replica killed the next instant has lost nothing;
`fsync` says what a machine crash may take: `never`, the open segment (`segment`, the default:
synced when it closes) or nothing (`always`: one fsync per request, ~70 us here). The writer
holds an exclusive flock on its open segment; a segment nobody holds is closed (rotated, or left
by a killed replica), and whoever converts it (a replica, the monitor) holds the lock while it
does. A segment converts to Parquet files named after it, one per UTC day it spans, so converting
it twice writes the same files: every answered row lands in the log exactly once. A kill in the
middle of a write leaves a partial last line, which no answered request owns; it is skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import os
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from tasks import files
from tasks.traffic.layout import (
    LATENCY_MS,
    MODEL_VERSION,
    PREDICTED_AT,
    PREDICTION,
    PROBABILITY,
    REQUEST_ID,
    LogKind,
    location,
    read,
    write_day_file,
)

Fsync = Literal["never", "segment", "always"]
SUFFIX = ".jsonl"
TIME = pa.timestamp("us", tz="UTC")
_TYPES: dict[str, pa.DataType] = {
    str(t): t for t in (pa.float64(), pa.string(), pa.int64(), pa.bool_())
}


def spool_folder(home: str, model: str, kind: LogKind = "predictions") -> Path:
    """Where a model's segments live: `<home>/spool/<model>` on a local home (a shadow's in
    its `shadow/` folder); on a bucket, a folder of this machine's (a segment is appended to,
    which an object store cannot do)."""
    fs, path = files.resolve(home)
    if files.is_local(fs):
        folder = Path(path) / "spool" / model
    else:
        digest = hashlib.sha256(home.encode()).hexdigest()[:16]
        folder = Path(tempfile.gettempdir()) / "driftloop-spool" / digest / model
    return folder if kind == "predictions" else folder / kind


@dataclass(frozen=True)
class Answered:
    """One request's answers as a segment line holds them: Python values, no Arrow."""

    request_ids: list[str]
    version: int
    features: dict[str, list[Any]]  # validated values, column by column
    types: dict[str, pa.DataType]  # each feature's column type in the log
    predictions: Sequence[object]
    prediction_type: pa.DataType
    probabilities: dict[str, Any] | None  # class -> one probability per record (floats)
    latency_ms: float
    predicted_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def rows(self) -> int:
        return len(self.request_ids)

    def encode(self) -> bytes:
        """The segment line: JSON (orjson), newline-terminated."""
        probabilities = (
            None
            if self.probabilities is None
            else {k: [float(x) for x in v] for k, v in self.probabilities.items()}
        )
        return orjson.dumps({
            "ids": self.request_ids,
            "at": int(self.predicted_at.timestamp() * 1_000_000),
            "v": self.version,
            "types": {k: str(t) for k, t in self.types.items()},
            "f": self.features,
            "p": list(self.predictions),
            "pt": str(self.prediction_type),
            "pr": probabilities,
            "l": self.latency_ms,
        }, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"  # fmt: skip


class SpoolError(OSError):
    """A segment could not be written: the answer must not leave."""


class Spool:
    """One writer's segments in a folder: the open one, locked, and the rotation."""

    def __init__(self, folder: Path, *, fsync: Fsync = "segment") -> None:
        self.folder, self.fsync = folder, fsync
        self.writer = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._fd: int | None = None
        self.path: Path | None = None
        self.rows = 0  # in the open segment
        self.ids: set[str] = set()  # of the open segment
        folder.mkdir(parents=True, exist_ok=True)
        self._open()

    def append(self, answered: Answered) -> None:
        """Write one request's line to the open segment (raises SpoolError when it cannot)."""
        line = answered.encode()
        with self._lock:
            if self._fd is None:
                raise SpoolError("the spool is closed")
            try:
                written = os.write(self._fd, line)
                if written != len(line):  # a full disk: the rest would not follow
                    raise OSError(f"wrote {written} of {len(line)} bytes")
                if self.fsync == "always":
                    os.fsync(self._fd)
            except OSError as exc:
                raise SpoolError(f"{self.path}: {exc}") from None
            self.rows += answered.rows
            self.ids.update(answered.request_ids)

    def rotate(self) -> int:
        """Close the open segment and open the next; returns the rows the closed one holds."""
        with self._lock:
            closed = self._close()
            self._open()
        return closed

    def close(self) -> int:
        """Close the open segment (the last rotation); returns the rows it holds."""
        with self._lock:
            return self._close()

    def _open(self) -> None:
        self.path = self.folder / f"{self.writer}-{next(self._seq):06d}{SUFFIX}"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self.rows, self.ids = 0, set()

    def _close(self) -> int:
        fd, path, rows = self._fd, self.path, self.rows
        if fd is None or path is None:
            return 0
        if self.fsync != "never" and rows:
            os.fsync(fd)
        os.close(fd)  # the lock goes with it: the segment is closed, for anyone to convert
        self._fd = None
        if not rows:
            path.unlink(missing_ok=True)
        self.rows, self.ids = 0, set()
        return rows


# Reading segments ---------------------------------------------------------------------------------


def segments(folder: Path) -> list[Path]:
    """Every segment in the folder, open or closed, oldest first by name within a writer."""
    if not folder.is_dir():
        return []
    return sorted(folder.glob(f"*{SUFFIX}"))


def lines(path: Path) -> Iterator[dict[str, Any]]:
    """The complete lines of a segment (a partial last one, from a kill mid-write, is skipped)."""
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as handle:
        data = handle.read()
        for raw in data.split(b"\n")[:-1]:
            with contextlib.suppress(orjson.JSONDecodeError):
                yield orjson.loads(raw)


class SegmentIds:
    """The request ids of every segment in a folder (all writers), read incrementally: a file's
    bytes are parsed once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._seen: dict[Path, tuple[int, set[str]]] = {}
        self._lock = threading.Lock()

    def __call__(self) -> set[str]:
        with self._lock:
            found: set[str] = set()
            present = segments(self.folder)
            for path in present:
                offset, ids = self._seen.get(path, (0, set()))
                with contextlib.suppress(FileNotFoundError), open(path, "rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
                    complete = data.rfind(b"\n") + 1
                    for raw in data[:complete].split(b"\n")[:-1]:
                        with contextlib.suppress(orjson.JSONDecodeError):
                            ids.update(orjson.loads(raw)["ids"])
                    offset += complete
                self._seen[path] = (offset, ids)
                found |= ids
            for gone in set(self._seen) - set(present):
                del self._seen[gone]
            return found


# Converting closed segments to the Parquet layout -----------------------------------------------


def convert_closed(
    *, home: str, model: str, folder: Path | None = None, kind: LogKind = "predictions"
) -> int:
    """Turn every closed segment of the model's spool (rotated, or left by a dead writer) into
    the Parquet layout, then remove it; returns the rows converted. A segment a live writer
    holds is left alone; so is one another converter holds."""
    total = 0
    for path in segments(folder or spool_folder(home, model, kind)):
        with _held(path) as held:
            if not held:
                continue
            total += convert(path, home=home, model=model, kind=kind)
            path.unlink(missing_ok=True)
    return total


@contextlib.contextmanager
def _held(path: Path) -> Iterator[bool]:
    """Whether this process could take the segment's lock (nobody writes or converts it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def convert(path: Path, *, home: str, model: str, kind: LogKind = "predictions") -> int:
    """One segment as Parquet files under the log's day folders, named after the segment (the
    same files whenever it is converted); returns its rows."""
    records = list(lines(path))
    if not records:
        return 0
    groups = [list(g) for _, g in itertools.groupby(records, key=_shape)]
    table = pa.concat_tables([to_table(g) for g in groups], promote_options="permissive")
    days = pc.strftime(table[PREDICTED_AT], format="%Y-%m-%d").to_numpy(zero_copy_only=False)
    base = location(home=home, model=model, kind=kind)
    for day in sorted(set(days.tolist())):
        rows = table.filter(pa.array(days == day))
        write_day_file(base, day=day, rows=rows, name=path.stem)
    return table.num_rows


def _shape(record: dict[str, Any]) -> tuple[object, ...]:
    """Records of one shape (a version's columns) become one Arrow table together."""
    return (tuple(record["types"].items()), record["pt"], tuple(record["pr"] or ()))


def to_table(records: Sequence[dict[str, Any]]) -> pa.Table:
    """The log rows of records of one shape: ids, time, version, features, outputs; one Arrow
    array per column for the whole segment."""
    first = records[0]
    counts = [len(r["ids"]) for r in records]

    def repeated(key: str, kind: pa.DataType) -> pa.Array:
        return pa.array(np.repeat([r[key] for r in records], counts), kind)

    def joined(values: Iterator[Sequence[Any]], kind: pa.DataType) -> pa.Array:
        return pa.array(list(itertools.chain.from_iterable(values)), kind)

    columns: dict[str, pa.Array] = {
        REQUEST_ID: joined((r["ids"] for r in records), pa.string()),
        PREDICTED_AT: repeated("at", pa.int64()).cast(TIME),
        MODEL_VERSION: repeated("v", pa.int64()),
    }
    for name, kind in first["types"].items():
        columns[name] = joined((r["f"][name] for r in records), _TYPES[kind])
    columns[PREDICTION] = joined((r["p"] for r in records), _TYPES[first["pt"]])
    for label in first["pr"] or {}:
        values = np.concatenate([np.asarray(r["pr"][label], dtype=np.float64) for r in records])
        columns[f"{PROBABILITY}{label}"] = pa.array(values, pa.float64())
    columns[LATENCY_MS] = repeated("l", pa.float64())
    return pa.table(columns)


# Reading every answered row: the Parquet layout and the segments not converted yet -----------


def spooled(*, home: str, model: str) -> pa.Table | None:
    """The rows of every segment of the model's spool (open ones too, to their last complete
    line), None when there are none."""
    records = [r for path in segments(spool_folder(home, model)) for r in lines(path)]
    if not records:
        return None
    groups = [list(g) for _, g in itertools.groupby(records, key=_shape)]
    return pa.concat_tables([to_table(g) for g in groups], promote_options="permissive")


def answered(
    *, home: str, model: str, columns: list[str] | None = None, since: datetime | None = None
) -> pa.Table | None:
    """Every answered row of the prediction log: its Parquet files and the spool's segments
    not converted yet (read first: a segment converted meanwhile is in the Parquet read after
    it, and its rows are kept once), only `columns`, stamped at or after `since`."""
    early = spooled(home=home, model=model)
    table = read(home=home, model=model, kind="predictions", columns=columns, since=since)
    if early is None or early.num_rows == 0:
        return table
    if since is not None:
        early = early.filter(pc.greater_equal(early[PREDICTED_AT], pa.scalar(since, TIME)))
    if table is not None:
        known = table[REQUEST_ID] if REQUEST_ID in table.column_names else None
        if known is not None:
            early = early.filter(pc.invert(pc.is_in(early[REQUEST_ID], value_set=known)))
    keep = [c for c in (columns or early.column_names) if c in early.column_names]
    early = early.select(keep)
    if table is None:
        return early
    return pa.concat_tables([table, early.cast(_like(early.schema, table.schema))],
                            promote_options="permissive")  # fmt: skip


def _like(schema: pa.Schema, target: pa.Schema) -> pa.Schema:
    """`schema` with the types `target` gives the same columns (the log's files govern)."""
    return pa.schema([target.field(f.name) if f.name in target.names else f for f in schema])
