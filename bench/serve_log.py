"""The prediction log's share of bench/bench_serve.py: what the durable log costs a request, and
whether a /feedback look-up stays flat as the log grows. Both on the plain-uvicorn arm (the same
FastAPI app and Service as a replica, without Serve's own noise), arm after arm in one run.

- The durable log (`tasks.serve.log`: one JSON line written to the replica's spool segment before
  the answer leaves) against the log before issue #19 (`BufferedLog` below: a list append on the
  request path, the same Parquet written every `log_flush_seconds` from memory, lost on a kill).
  Goals: <= 10% fewer req/s at 32 clients; <= +0.5 ms median at 1 client.
- /feedback of one label for a logged id, sampled across the whole log, with 10,000 and with
  1,000,000 rows logged (files of 10,000 rows over 10 days, as a replica's flushes leave them):
  the median at 1M <= 1.5x the one at 10k. Reported beside it: 100 labels of ids spread over the
  10 days (the worst case: each id's files are opened), and the 1M log after compaction.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from datetime import date, datetime, timedelta, timezone
from typing import Any

import httpx
import numpy as np
import orjson
import pyarrow as pa

from tasks import traffic
from tasks.settings import ServingConfig
from tasks.traffic import spool as spooling
from tasks.traffic import upkeep

FILE_ROWS = 10_000  # rows per log file, as a replica's flushes leave them
DAYS = 10  # the log's span
SIZES = {"10k": 10_000, "1M": 1_000_000}


class BufferedLog:
    """The log before issue #19, as the baseline: `add` appends to a list under a lock; a thread
    writes what waits as Parquet every `log_flush_seconds` (the same files the spool's conversion
    writes). A replica killed between two writes loses what waited."""

    def __init__(self, *, home: str, model: str, serving: ServingConfig) -> None:
        self.home, self.model, self.seconds = home, model, serving.log_flush_seconds
        self._pending: list[spooling.Answered] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.answered = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def add(self, answered: spooling.Answered) -> None:
        with self._lock:
            self._pending.append(answered)
            self.answered += answered.rows

    def pending_ids(self) -> set[str]:
        with self._lock:
            return {rid for a in self._pending for rid in a.request_ids}

    def health(self) -> dict[str, Any]:
        return {"answered_rows": self.answered}

    def flush(self) -> int:
        with self._lock:
            taken, self._pending = self._pending, []
        if not taken:
            return 0
        records = [orjson.loads(a.encode()) for a in taken]
        table = spooling.to_table(records)
        traffic.append(home=self.home, model=self.model, kind="predictions", rows=table)
        return table.num_rows

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=30)
        self.flush()

    def _run(self) -> None:
        while not self._closed.wait(self.seconds):
            self.flush()


# A logged history of a given size -----------------------------------------------------------------


def fill_log(home: str, *, model: str, rows: int, features: pa.Table, seed: int) -> list[str]:
    """`rows` logged predictions over the `DAYS` days before today, in files of `FILE_ROWS` rows
    (each covering its stretch of time, named as the spool's conversion names them); returns
    their request ids."""
    rng = np.random.default_rng(seed)
    end = datetime.combine(date.today(), datetime.min.time(), tzinfo=timezone.utc)
    start_ms = int((end - timedelta(days=DAYS)).timestamp() * 1000)
    span_ms = DAYS * 86_400_000
    moments = np.sort(start_ms + rng.integers(0, span_ms, rows))  # one per row, in time order
    ids: list[str] = []
    base = traffic.location(home=home, model=model, kind="predictions")
    for first in range(0, rows, FILE_ROWS):
        ms = moments[first : first + FILE_ROWS]
        raw = rng.bytes(10 * len(ms)).hex()  # as traffic.new_request_ids: 80 random bits each
        chunk = [f"{m:012x}{raw[20 * i : 20 * i + 20]}" for i, m in enumerate(ms)]
        ids += chunk
        sample = features.slice(0, len(ms))  # `features` holds FILE_ROWS rows
        table = pa.table({
            traffic.REQUEST_ID: pa.array(chunk, pa.string()),
            traffic.PREDICTED_AT: pa.array(ms * 1000, pa.timestamp("us", tz="UTC")),
            traffic.MODEL_VERSION: pa.array(np.ones(len(ms), np.int64)),
            **{name: sample[name] for name in sample.column_names},
            traffic.PREDICTION: pa.array(rng.integers(0, 2, len(ms))),
            traffic.LATENCY_MS: pa.array(np.full(len(ms), 1.0)),
        })  # fmt: skip
        day = datetime.fromtimestamp(int(ms[0]) / 1000, timezone.utc).date().isoformat()
        last_day = datetime.fromtimestamp(int(ms[-1]) / 1000, timezone.utc).date().isoformat()
        if day != last_day:  # a file holds one day's rows, as the conversion writes them
            split = int(np.searchsorted(ms, _day_start_ms(last_day)))
            traffic.write_day_file(base, day=day, rows=table.slice(0, split), name=f"f{first}a")
            table, day = table.slice(split), last_day
        traffic.write_day_file(base, day=day, rows=table, name=f"f{first}")
    return ids


def _day_start_ms(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=timezone.utc).timestamp() * 1000)


def compact_all(home: str, *, model: str) -> int:
    """Every day of the log compacted into one file, as the scheduled monitor leaves it."""
    return upkeep.compact(home=home, model=model, kind="predictions", before=date.today())


def feedback_latency(
    url: str, ids: list[str], *, labels: int, requests: int, seed: int
) -> dict[str, float]:
    """`requests` sequential /feedback calls of `labels` labels each, for ids sampled across the
    whole log: median and p99 milliseconds, and the calls not answered 200."""
    rng = random.Random(seed)
    times, errors = [], 0
    with httpx.Client(timeout=60) as client:
        for i in range(requests + 3):  # the first 3 warm up the connection and the caches
            chosen = rng.sample(ids, labels)
            body = {"labels": [{"request_id": rid, "label": rng.randint(0, 1)} for rid in chosen]}
            started = time.perf_counter()
            answer = client.post(f"{url}/feedback", json=body)
            elapsed = time.perf_counter() - started
            if answer.status_code != 200 or answer.json()["accepted"] != labels:
                errors += 1
            elif i >= 3:
                times.append(elapsed * 1e3)
    times.sort()
    return {
        "p50_ms": statistics.median(times) if times else float("nan"),
        "p99_ms": times[int(len(times) * 0.99)] if times else float("nan"),
        "requests": len(times),
        "errors": errors,
    }
