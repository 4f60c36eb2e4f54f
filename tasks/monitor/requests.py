"""What became of each retrain request: the retraining's own record, claimed once, ended once.

    claimed, record = claim(home=home, model="churn", key=request_id, run_id=flow_run_id,
                            record={...}, is_alive=run_is_alive)   # is_alive(a claim record)
    ...                                  # "claimed": train; "done" / "busy": nothing to do
    finish(home=home, model="churn", key=request_id, status="promoted", version=5, detail="...")

`<home>/monitor/<model>/requests/<key>.json` is written by the retraining flow only: `running`
with its flow run id when it claims a request, then `promoted`, `rejected` or `failed` when it
ends. Prefect delivers an event at least once and the governor re-sends a request it could not
confirm, so a request may start several runs: the first claims it, a second finds it ended
(`done`) or running in a live run (`busy`), and does nothing. A run that died without ending
(`running` in a run that is no longer alive: crashed, cancelled) leaves its claim to the next
run of the same request. The governor reads these records back (`tasks.monitor.governor`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Literal

from tasks import files

Claim = Literal["claimed", "done", "busy"]
Ended = Literal["promoted", "rejected", "failed"]
ENDED: tuple[str, ...] = ("promoted", "rejected", "failed")
RECORDS, LOCK_FILE = "requests", ".lock"


def folder(home: str, model: str) -> str:
    """`<home>/monitor/<model>`: the governor's state, its lock and the requests' records."""
    return files.join(home, "monitor", model)


def location(home: str, model: str, key: str) -> str:
    safe = "".join(ch for ch in key if ch.isalnum() or ch in "-_")[:100] or "request"
    return files.join(folder(home, model), RECORDS, f"{safe}.json")


def read_record(*, home: str, model: str, key: str) -> dict[str, Any] | None:
    """The retraining's record of a request (None: no run has claimed it yet)."""
    try:
        return dict(json.loads(files.read_text(location(home, model, key))))
    except FileNotFoundError:
        return None


def claim(
    *,
    home: str,
    model: str,
    key: str,
    run_id: str,
    record: dict[str, Any],
    is_alive: Callable[[dict[str, Any]], bool],
) -> tuple[Claim, dict[str, Any]]:
    """Claim a request for the run `run_id`: `claimed` (this run trains), `done` (a run ended
    it) or `busy` (a live run holds it); with the record as it stands. A run that died holding
    the claim leaves it to this one (`attempts` counts the runs that claimed it)."""
    with locked(home, model):
        found = read_record(home=home, model=model, key=key)
        if found is not None and found.get("status") in ENDED:
            return "done", found
        holder = None if found is None else found.get("flow_run_id")
        if found is not None and holder is not None and holder != run_id and is_alive(found):
            return "busy", found
        now = _now()
        claimed = {
            **record,
            "request": key,
            "status": "running",
            "flow_run_id": run_id,
            "pid": os.getpid(),  # with the host: a run whose process is gone is dead
            "host": socket.gethostname(),
            "started_at": now,
            "attempts": [*(found or {}).get("attempts", []), {"flow_run_id": run_id, "at": now}],
        }
        files.write_atomic(location(home, model, key), json.dumps(claimed, indent=1, default=str))
        return "claimed", claimed


def finish(
    *, home: str, model: str, key: str, status: Ended, version: int | None = None, detail: str = ""
) -> dict[str, Any]:
    """End a claimed request: what the retraining did (the version it registered, why)."""
    with locked(home, model):
        found = read_record(home=home, model=model, key=key) or {"request": key}
        ended = {**found, "status": status, "version": version, "detail": detail[:500],
                 "ended_at": _now()}  # fmt: skip
        files.write_atomic(location(home, model, key), json.dumps(ended, indent=1, default=str))
        return ended


@contextlib.contextmanager
def locked(home: str, model: str) -> Iterator[None]:
    """One writer at a time of the model's governor state and request records: an flock on a
    local home; on a bucket the deployments' concurrency limits of 1 keep writers apart."""
    fs, path = files.resolve(folder(home, model))
    if not files.is_local(fs):
        yield
        return
    import fcntl

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, LOCK_FILE), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


# The governor's memory: the windows it judged, the requests it made, what became of them -------

STATE_FILE = "governor.json"
KEEP = 100  # windows and requests kept in the state file
OPEN = ("pending", "sent", "running", "crashed")  # a request no retraining has ended yet
UNSUCCESSFUL = ("rejected", "failed")


@dataclass(frozen=True)
class State:
    """The governor's memory of one model: the windows it judged and the retrains it asked for."""

    windows: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_json(cls, text: str) -> State:
        raw = json.loads(text)
        return cls(windows=list(raw.get("windows", [])), requests=list(raw.get("requests", [])))

    def to_json(self) -> str:
        return json.dumps(
            {"windows": self.windows[-KEEP:], "requests": self.requests[-KEEP:]}, indent=1
        )

    @property
    def last(self) -> dict[str, Any] | None:
        """The newest request (a request from before requests had a status counts as sent)."""
        return self.requests[-1] if self.requests else None

    def last_request_at(self) -> datetime | None:
        last = self.last
        return time_of(last.get("sent_at") or last["at"]) if last else None

    def with_request(self, entry: dict[str, Any]) -> State:
        """The state with `entry` replacing the request of its id, or added."""
        kept = [r for r in self.requests if r.get("request_id") != entry["request_id"]]
        return replace(self, requests=[*kept, entry])


def reconcile(
    state: State,
    *,
    home: str,
    model: str,
    is_alive: Callable[[dict[str, Any]], bool] | None = None,
) -> tuple[State, dict[str, Any] | None]:
    """The state with the last request's status from its retraining's record; and that
    record when this call is how the governor learns the request ended (else None). A record
    `running` in a run that is no longer alive is a crash."""
    last = state.last
    if last is None or last.get("status", "legacy") not in OPEN:
        return state, None
    record = read_record(home=home, model=model, key=last["request_id"])
    if record is None:
        return state, None
    status = record.get("status")
    if status == "running":
        holder = str(record.get("flow_run_id"))
        dead = is_alive is not None and not is_alive(record)
        entry = {**last, "status": "crashed" if dead else "running", "flow_run_id": holder}
        return state.with_request(entry), None
    entry = {**last, "status": status, "version": record.get("version"),
             "detail": record.get("detail"), "ended_at": record.get("ended_at"),
             "flow_run_id": record.get("flow_run_id")}  # fmt: skip
    return state.with_request(entry), dict(record)


def load_state(*, home: str, model: str) -> State:
    try:
        return State.from_json(files.read_text(files.join(folder(home, model), STATE_FILE)))
    except FileNotFoundError:
        return State()


def save_state(state: State, *, home: str, model: str) -> None:
    files.write_atomic(files.join(folder(home, model), STATE_FILE), state.to_json())


def mark_sent(
    *, home: str, model: str, request_id: str, event_id: str, now: datetime | None = None
) -> None:
    """The request's event reached the Prefect server: from `now` on it is `sent`, and the
    cooldown counts from there."""
    with locked(home, model):
        state = load_state(home=home, model=model)
        found = next((r for r in state.requests if r.get("request_id") == request_id), None)
        if found is None or found.get("status") != "pending":
            return
        at = now or datetime.now(timezone.utc)
        sent = {**found, "status": "sent", "event_id": event_id, "sent_at": at.isoformat()}
        save_state(state.with_request(sent), home=home, model=model)


def time_of(text: str) -> datetime:
    """A time the state or a record keeps (ISO 8601)."""
    return datetime.fromisoformat(text)
