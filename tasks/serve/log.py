"""The prediction log writer of a replica: buffered, flushed off the request path.

    log = PredictionLog(home=home, model="churn", flush_rows=10_000, flush_seconds=1.0)
    log.add(Batch(...))  # on the request path: a list append under a lock
    log.flush()          # on a model swap; `close()` on shutdown flushes and stops the thread

A background thread writes what is buffered as one Parquet file (`traffic.append`: written beside
its final name, then moved into place) every `flush_seconds`, or sooner once `flush_rows` rows
wait. A failed write keeps its rows for the next try. A replica killed outright (no shutdown)
loses what it buffered since the last flush: at most `flush_seconds` of its answers.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from tasks import traffic
from tasks.traffic import LATENCY_MS, MODEL_VERSION, PREDICTION, PROBABILITY

log = logging.getLogger("driftloop.serve")


@dataclass(frozen=True)
class Batch:
    """One request's answers as the request path leaves them: Python values, no Arrow yet."""

    request_ids: list[str]
    version: int
    features: dict[str, list[Any]]  # validated values, column by column
    types: dict[str, pa.DataType]  # each feature's column type in the log
    predictions: Sequence[object]
    prediction_type: pa.DataType
    probabilities: dict[str, np.ndarray] | None  # class -> one probability per record
    latency_ms: float
    predicted_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def rows(self) -> int:
        return len(self.request_ids)

    def shape(self) -> tuple[object, ...]:
        """Batches of one shape (a version's columns) become one Arrow table together."""
        probabilities = tuple(self.probabilities or ())
        return (tuple(self.types.items()), self.prediction_type, probabilities)


def to_table(batches: Sequence[Batch]) -> pa.Table:
    """The log rows of batches of one shape: ids, time, version, features, outputs. One Arrow
    array per column for the whole flush (per request it would cost more than the model)."""
    first = batches[0]

    def joined(values: Callable[[Batch], Iterable[Any]], kind: pa.DataType) -> pa.Array:
        return pa.array(list(itertools.chain.from_iterable(values(b) for b in batches)), kind)

    columns: dict[str, pa.Array] = {
        traffic.REQUEST_ID: joined(lambda b: b.request_ids, pa.string()),
        traffic.PREDICTED_AT: joined(lambda b: [b.predicted_at] * b.rows, _TIME),
        MODEL_VERSION: joined(lambda b: [b.version] * b.rows, pa.int64()),
    }
    for name, kind in first.types.items():
        columns[name] = joined(lambda b, name=name: b.features[name], kind)  # type: ignore[misc]
    columns[PREDICTION] = joined(lambda b: b.predictions, first.prediction_type)
    for label in first.probabilities or {}:
        columns[f"{PROBABILITY}{label}"] = pa.array(
            np.concatenate([b.probabilities[label] for b in batches if b.probabilities]),
            pa.float64(),
        )
    columns[LATENCY_MS] = joined(lambda b: [b.latency_ms] * b.rows, pa.float64())
    return pa.table(columns)


_TIME = pa.timestamp("us", tz="UTC")


class PredictionLog:
    """Rows waiting to be written, and the thread that writes them."""

    def __init__(
        self,
        *,
        home: str,
        model: str,
        flush_rows: int,
        flush_seconds: float,
        kind: traffic.Kind = "predictions",
    ) -> None:
        self.home, self.model, self.kind = home, model, kind
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._pending: list[Batch] = []
        self._writing: list[Batch] = []  # taken for the file being written, not yet readable
        self._rows = 0
        self._lock = threading.Lock()  # guards _pending, _writing and _rows
        self._write_lock = threading.Lock()  # one writer at a time: files stay in order
        self._wake = threading.Event()
        self._closed = False
        self.written_rows = 0
        self.failed_writes = 0
        self._thread = threading.Thread(target=self._run, name="driftloop-log", daemon=True)
        self._thread.start()

    def add(self, batch: Batch) -> None:
        """Queue a request's rows for the next file (a list append: no Arrow, no I/O)."""
        with self._lock:
            self._pending.append(batch)
            self._rows += batch.rows
            full = self._rows >= self.flush_rows
        if full:
            self._wake.set()

    @property
    def pending_rows(self) -> int:
        with self._lock:
            return self._rows

    def pending_ids(self) -> set[str]:
        """Request ids answered but not yet readable in a log file (queued, or being written)."""
        with self._lock:
            parts = self._writing + self._pending
        return {i for batch in parts for i in batch.request_ids}

    def flush(self) -> int:
        """Write what is buffered now, as one file; returns the rows written."""
        with self._write_lock:
            with self._lock:
                parts, self._pending, self._rows = self._pending, [], 0
                self._writing = parts
            if not parts:
                return 0
            try:
                groups = [list(g) for _, g in itertools.groupby(parts, key=Batch.shape)]
                tables = [to_table(group) for group in groups]
                table = pa.concat_tables(tables, promote_options="permissive")
                traffic.append(home=self.home, model=self.model, kind=self.kind, rows=table)
            except Exception:
                self.failed_writes += 1
                log.exception("prediction log: write failed; %d rows kept for the next try",
                              sum(p.rows for p in parts))  # fmt: skip
                with self._lock:
                    self._pending[:0] = parts
                    self._rows += sum(p.rows for p in parts)
                    self._writing = []
                return 0
            with self._lock:
                self._writing = []  # the file is in place: the ids are readable there now
            self.written_rows += table.num_rows
            return table.num_rows

    def close(self) -> None:
        """Flush what is left and stop the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=30)
        self.flush()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(timeout=self.flush_seconds)
            self._wake.clear()
            started = time.monotonic()
            self.flush()
            if self.failed_writes and time.monotonic() - started < 0.1:
                time.sleep(min(self.flush_seconds, 1.0))  # a broken home: do not spin
