"""During a rollout, which model answers a request, and the shadow's copy of each request.

    plan = Plan.of({"version": 3, "candidate": 4, "mode": "canary", "share": 0.1})
    in_canary("customer-17", share=0.1)   # stable: the same key, the same model, everywhere
    shadow = Shadow(log)                  # scores copies on the candidate in its own thread
    shadow.submit(candidate, body, ids, predicted_at)

A canary answers `share` of the requests: those whose client key (the `X-Request-Key` header)
hashes below the share, on every replica and after every restart, or a random draw where a
request has no key. A request the candidate fails on is answered by the champion (no client
sees the candidate's failure) and the failure is written down (`Failures`) for the judgement.
A shadow answers nothing: after the champion's answer is logged, a copy of the request waits in
a bounded queue for a thread that scores it on the candidate and logs its outputs under the
same request ids in the shadow log. Never in a request's latency; when the candidate cannot
keep up, copies are dropped and counted, never queued without bound.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import orjson

from tasks import traffic
from tasks.serve.arrow import features, read
from tasks.serve.log import PredictionLog

log = logging.getLogger("driftloop.serve")
Mode = Literal["shadow", "canary"]
MODES: tuple[Mode, ...] = ("shadow", "canary")
KEY_HEADER = "X-Request-Key"  # the client's routing key: a canary sends a key to one model


@dataclass(frozen=True)
class Plan:
    """What a replica serves: the champion (`version`) and, during a rollout, a candidate."""

    version: int | None
    candidate: int | None = None
    mode: Mode | None = None
    share: float = 0.0  # of requests a canary answers

    @classmethod
    def of(cls, config: dict[str, Any]) -> Plan:
        """The plan of a deployment's `user_config`; a malformed one raises ValueError."""
        version, candidate = config.get("version"), config.get("candidate")
        mode, share = config.get("mode"), float(config.get("share") or 0.0)
        if candidate is None:
            return cls(version=version)
        if version is None or mode not in MODES:
            raise ValueError(f"a candidate needs a champion and a mode in {MODES}: {config}")
        if mode == "canary" and not 0 < share < 1:
            raise ValueError(f"a canary's share must be between 0 and 1, not {share}")
        return cls(version=version, candidate=int(candidate), mode=mode, share=share)

    @classmethod
    def of_rollout(cls, record: dict[str, Any]) -> Plan:
        """The plan of a running rollout's record (`tasks.serve.rollout.Rollout`)."""
        share = float(record["share"]) if record["mode"] == "canary" else 0.0
        return cls(version=int(record["champion"]), candidate=int(record["candidate"]),
                   mode=record["mode"], share=share)  # fmt: skip

    def to_config(self) -> dict[str, Any]:
        """The deployment's `user_config` (only `version` when there is no candidate, so the
        config of a plain swap stays what it always was)."""
        if self.candidate is None:
            return {"version": self.version}
        return {"version": self.version, "candidate": self.candidate, "mode": self.mode,
                "share": self.share}  # fmt: skip

    @property
    def versions(self) -> list[int]:
        return [v for v in (self.version, self.candidate) if v is not None]


def describe(record: dict[str, Any]) -> str:
    """A rollout record in one line: running since when, or how it ended and why."""
    share = f" ({record['share']:.0%} of requests)" if record.get("mode") == "canary" else ""
    head = f"{record['mode']} of v{record['candidate']}{share} beside v{record['champion']}"
    if record.get("status") == "running":
        return f"{head}, running since {str(record.get('started_at'))[:19]}Z"
    ended = str(record.get("status", "")).replace("_", " ")
    return f"{head}: {ended} at {str(record.get('ended_at'))[:19]}Z ({record.get('reason')})"


def in_canary(key: str | None, *, share: float) -> bool:
    """Whether the candidate answers: a stable hash of the client's key below `share` (the same
    key lands on the same model on every replica), a random draw where there is no key."""
    if key is None:
        return int.from_bytes(os.urandom(8), "big") / 2**64 < share
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


# What the candidate failed on -------------------------------------------------------------------


def failures_folder(home: str, model: str) -> Path:
    """Where replicas write down the candidate's failures (beside the spool: local, appendable)."""
    return traffic.spool_folder(home, model) / "failures"


class Failures:
    """This replica's record of the candidate's failures: one JSON line each, appended."""

    def __init__(self, home: str, model: str, *, replica: str) -> None:
        self.path = failures_folder(home, model) / f"{replica}.jsonl"
        self._lock = threading.Lock()

    def add(self, *, version: int, mode: Mode, rows: int, error: BaseException) -> None:
        line = orjson.dumps({
            "at": datetime.now(timezone.utc).isoformat(), "version": version, "mode": mode,
            "rows": rows, "error": f"{error.__class__.__name__}: {error}"[:300],
        }) + b"\n"  # fmt: skip
        with self._lock, contextlib.suppress(OSError):  # a lost failure line never fails a request
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as handle:
                handle.write(line)


def read_failures(*, home: str, model: str, version: int, since: datetime) -> list[dict[str, Any]]:
    """The candidate `version`'s failures written down since `since`, by every replica here."""
    found: list[dict[str, Any]] = []
    folder = failures_folder(home, model)
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        with contextlib.suppress(FileNotFoundError):
            for raw in path.read_bytes().split(b"\n"):
                with contextlib.suppress(orjson.JSONDecodeError):
                    item = orjson.loads(raw) if raw else None
                    moment = datetime.fromisoformat(item["at"]) if item else None
                    if item and item["version"] == version and moment and moment >= since:
                        found.append(item)
    return found


# The shadow ------------------------------------------------------------------------------------


@dataclass
class ShadowCounts:
    scored: int = 0  # requests scored on the candidate and logged
    dropped: int = 0  # copies dropped: the candidate could not keep up
    failed: int = 0  # copies the candidate failed on (written down in `Failures`)

    def to_dict(self) -> dict[str, int]:
        return {"scored": self.scored, "dropped": self.dropped, "failed": self.failed}


@dataclass(frozen=True)
class Copy:
    """One answered request for the shadow to score: its validated columns where the candidate
    takes the champion's features (else its body, validated again by the candidate), and the
    ids it was answered under."""

    candidate: Any  # the candidate's `service.Loaded`
    request_ids: list[str]
    columns: dict[str, list[Any]] | None
    body: bytes = b""
    arrow: bool = False  # the body is an Arrow stream (else JSON)


# Scores copies: merged columns of one candidate -> the shadow log's rows for all their ids
ScoreCopies = Callable[[Any, dict[str, list[Any]], list[str], float], traffic.Answered]


class Shadow:
    """A thread that scores copies of answered requests on the candidate and logs its outputs
    in the shadow log; `submit` never waits (a full queue drops the copy, counted). Copies that
    wait together are scored together: one forward pass and one log line for all of them."""

    def __init__(
        self, log_: PredictionLog, failures: Failures, *, score: ScoreCopies, maxsize: int = 1024,
        batch: int = 256, pause_s: float = 0.02,
    ) -> None:  # fmt: skip
        self.log, self.failures, self.score, self.batch = log_, failures, score, batch
        self.pause_s = pause_s
        self.counts = ShadowCounts()
        self._queue: queue.Queue[Copy | None] = queue.Queue(maxsize=maxsize)
        self._thread = threading.Thread(target=self._run, name="driftloop-shadow", daemon=True)
        self._thread.start()

    def submit(self, copy: Copy) -> None:
        try:
            self._queue.put_nowait(copy)
        except queue.Full:
            self.counts.dropped += 1

    def drain(self, timeout_s: float = 30) -> bool:
        """Wait until every queued copy is scored (tests, a swap); whether it emptied in time."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def close(self) -> None:
        self.drain()
        self._queue.put(None)
        self._thread.join(timeout=30)
        self.log.close()

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            copies, stop = [first], False
            while len(copies) < self.batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                copies.append(more)
            try:
                self._score(copies)
            finally:
                for _ in copies:
                    self._queue.task_done()
            if stop:
                break
            time.sleep(self.pause_s)  # let copies gather: fewer, larger batches, less GIL churn
        self._queue.task_done()

    def _score(self, copies: list[Copy]) -> None:
        candidate = copies[0].candidate
        started = time.perf_counter()
        merged: dict[str, list[Any]] = {}
        ids: list[str] = []
        for copy in copies:
            try:
                columns = copy.columns or (
                    features(read(copy.body), candidate.schemas)
                    if copy.arrow
                    else candidate.schemas.records(copy.body)
                )
            except Exception as exc:  # the candidate refuses what the champion took
                self._failed(copy, exc)
                continue
            for name, values in columns.items():
                merged.setdefault(name, []).extend(values)
            ids += copy.request_ids
        if not ids:
            return
        try:
            self.log.add(self.score(candidate, merged, ids, started))
            self.counts.scored += len(copies)
        except Exception as exc:
            for copy in copies:
                self._failed(copy, exc)

    def _failed(self, copy: Copy, exc: BaseException) -> None:
        self.counts.failed += 1
        self.failures.add(version=copy.candidate.version, mode="shadow",
                          rows=len(copy.request_ids), error=exc)  # fmt: skip
        log.warning("shadow v%d failed on a request: %s", copy.candidate.version, exc)
