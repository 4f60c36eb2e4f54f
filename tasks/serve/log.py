"""The prediction log writer of a replica: buffered, flushed off the request path.

    log = PredictionLog(home=home, model="churn", flush_rows=10_000, flush_seconds=1.0)
    log.add(batch)       # on the request path: a list append under a lock
    log.flush()          # on a model swap; `close()` on shutdown flushes and stops the thread

A background thread writes what is buffered as one Parquet file (`traffic.append`: written beside
its final name, then moved into place) every `flush_seconds`, or sooner once `flush_rows` rows
wait. A failed write keeps its rows for the next try. A replica killed outright (no shutdown)
loses what it buffered since the last flush: at most `flush_seconds` of its answers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from tasks import traffic

log = logging.getLogger("driftloop.serve")
# The columns beside the features: a probability column per class (`probability_<class>`)
MODEL_VERSION, PREDICTION, PROBABILITY, LATENCY_MS = (
    "model_version", "prediction", "probability_", "latency_ms"
)  # fmt: skip


def batch_table(
    *,
    features: pa.Table,
    request_ids: list[str],
    version: int,
    predictions: Sequence[object],
    probabilities: dict[str, np.ndarray] | None,
    latency_ms: float,
    prediction_type: pa.DataType,
) -> pa.Table:
    """One request's rows as the log stores them: ids, time, version, features, outputs."""
    n = features.num_rows
    now = datetime.now(timezone.utc)
    columns: dict[str, pa.Array] = {
        traffic.REQUEST_ID: pa.array(request_ids, pa.string()),
        traffic.PREDICTED_AT: pa.array([now] * n, pa.timestamp("us", tz="UTC")),
        MODEL_VERSION: pa.array([version] * n, pa.int64()),
    }
    for name in features.column_names:
        columns[name] = features[name]
    columns[PREDICTION] = pa.array(predictions, prediction_type)
    for name, values in (probabilities or {}).items():
        columns[f"{PROBABILITY}{name}"] = pa.array(values, pa.float64())
    columns[LATENCY_MS] = pa.array([latency_ms] * n, pa.float64())
    return pa.table(columns)


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
        self._pending: list[pa.Table] = []
        self._rows = 0
        self._lock = threading.Lock()  # guards _pending and _rows
        self._write_lock = threading.Lock()  # one writer at a time: files stay in order
        self._wake = threading.Event()
        self._closed = False
        self.written_rows = 0
        self.failed_writes = 0
        self._thread = threading.Thread(target=self._run, name="driftloop-log", daemon=True)
        self._thread.start()

    def add(self, rows: pa.Table) -> None:
        """Queue rows for the next file (cheap: no I/O)."""
        with self._lock:
            self._pending.append(rows)
            self._rows += rows.num_rows
            full = self._rows >= self.flush_rows
        if full:
            self._wake.set()

    @property
    def pending_rows(self) -> int:
        with self._lock:
            return self._rows

    def pending_ids(self) -> set[str]:
        """Request ids answered but not yet written."""
        with self._lock:
            parts = list(self._pending)
        return {i for t in parts for i in t[traffic.REQUEST_ID].to_pylist()}

    def flush(self) -> int:
        """Write what is buffered now, as one file; returns the rows written."""
        with self._write_lock:
            with self._lock:
                parts, self._pending, self._rows = self._pending, [], 0
            if not parts:
                return 0
            try:
                table = pa.concat_tables(parts, promote_options="permissive")
                traffic.append(home=self.home, model=self.model, kind=self.kind, rows=table)
            except Exception:
                self.failed_writes += 1
                log.exception("prediction log: write failed; %d rows kept for the next try",
                              sum(p.num_rows for p in parts))  # fmt: skip
                with self._lock:
                    self._pending[:0] = parts
                    self._rows += sum(p.num_rows for p in parts)
                return 0
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
