"""A replica's prediction log: durable before the answer leaves, Parquet soon after.

    log = PredictionLog(home=home, model="churn", serving=settings.serving)
    log.add(Answered(...))   # on the request path: one write(2) of one JSON line, ~4 us
    log.flush()              # on a model swap, in tests; `close()` on shutdown

`add` appends the request's rows to this replica's open spool segment (`tasks.traffic.spool`)
before the response is sent: once it returns, the OS holds them, and a replica killed the next
instant has lost no answered row. When it cannot (a full or broken disk), or when more than
`serving.log_max_pending_rows` rows wait to become Parquet (the home cannot keep up), it raises
`LogUnavailable` and the request gets a 503 instead of an answer nobody could learn from. A
background thread closes the segment every `log_flush_seconds` (or once it holds
`log_flush_rows` rows) and converts closed segments to the Parquet layout the monitor reads,
its own and any a dead replica left behind (the lock of a live writer keeps them apart).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from tasks import traffic
from tasks.settings import ServingConfig
from tasks.traffic import Answered, LogKind, SpoolError

log = logging.getLogger("driftloop.serve")
__all__ = ["Answered", "LogUnavailable", "PredictionLog"]


class LogUnavailable(SpoolError):
    """An answer that could not be logged, and so must not be given."""


@dataclass
class Counts:
    """What a replica's log did since it started (shown on /healthz)."""

    answered: int = 0  # rows whose answers left (each written to a segment first)
    converted: int = 0  # rows turned to Parquet (this replica's and adopted ones)
    refused: int = 0  # requests answered 503 because their rows could not be logged
    failed_conversions: int = 0

    def to_dict(self, *, pending: int) -> dict[str, Any]:
        return {
            "answered_rows": self.answered,
            "logged_rows": self.answered,  # the same by construction: logged before answered
            "converted_rows": self.converted,
            "pending_rows": pending,
            "refused_requests": self.refused,
            "failed_conversions": self.failed_conversions,
        }


class PredictionLog:
    """This replica's spool segment, and the thread that rotates and converts segments."""

    def __init__(
        self, *, home: str, model: str, serving: ServingConfig, kind: LogKind = "predictions"
    ) -> None:
        self.home, self.model, self.kind = home, model, kind
        self.rotate_rows, self.rotate_seconds = serving.log_flush_rows, serving.log_flush_seconds
        self.max_pending = serving.log_max_pending_rows
        self.folder = traffic.spool_folder(home, model, kind)
        self.spool = traffic.Spool(self.folder, fsync=serving.log_fsync)
        self.segment_ids = traffic.SegmentIds(self.folder)
        self.counts = Counts()
        self._unconverted = 0  # rows in this replica's closed segments not yet converted
        self._lock = threading.Lock()  # rotation and conversion, one at a time
        self._wake = threading.Event()
        self._closed = False
        self._opened_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="driftloop-log", daemon=True)
        self._thread.start()

    def add(self, answered: Answered) -> None:
        """Write a request's rows to the segment before its answer leaves; `LogUnavailable`
        when they cannot be written, or too many wait to be converted."""
        pending = self.pending_rows
        if pending >= self.max_pending:
            self.counts.refused += 1
            raise LogUnavailable(
                f"the prediction log cannot keep up: {pending:,} rows wait to be written to "
                f"{self.home} (serving.log_max_pending_rows {self.max_pending:,})"
            )
        try:
            self.spool.append(answered)
        except SpoolError as exc:
            self.counts.refused += 1
            raise LogUnavailable(f"the prediction log cannot be written: {exc}") from None
        self.counts.answered += answered.rows
        if self.spool.rows >= self.rotate_rows:
            self._wake.set()

    @property
    def pending_rows(self) -> int:
        """Rows this replica answered that are not Parquet yet."""
        return self.spool.rows + self._unconverted

    def pending_ids(self) -> set[str]:
        """Request ids answered but not in a Parquet file yet: every segment of the model's
        spool folder (this replica's and the others' on this machine)."""
        return self.spool.ids | self.segment_ids()

    def health(self) -> dict[str, Any]:
        return self.counts.to_dict(pending=self.pending_rows)

    def flush(self) -> int:
        """Close the open segment and convert every closed one now; returns the rows converted."""
        with self._lock:
            self._unconverted += self.spool.rotate()
            self._opened_at = time.monotonic()
            return self._convert()

    def close(self) -> None:
        """Convert what is left and stop the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=30)
        with self._lock:
            self._unconverted += self.spool.close()
            self._convert()

    def _convert(self) -> int:
        try:
            rows = traffic.convert_closed(
                home=self.home, model=self.model, folder=self.folder, kind=self.kind
            )
        except Exception:
            self.counts.failed_conversions += 1
            log.exception("prediction log: converting segments failed; they stay for the next try")
            return 0
        self._unconverted = 0  # every closed segment of ours went (or another converter has it)
        self.counts.converted += rows
        return rows

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(timeout=min(self.rotate_seconds, 1.0))
            self._wake.clear()
            due = time.monotonic() - self._opened_at >= self.rotate_seconds
            if self._closed or not (due or self.spool.rows >= self.rotate_rows):
                continue
            started = time.monotonic()
            self.flush()
            if self.counts.failed_conversions and time.monotonic() - started < 0.1:
                time.sleep(min(self.rotate_seconds, 1.0))  # a broken home: do not spin
