"""The retrain governor: between a monitoring signal and a retraining run, it decides and says why.

    decision = govern(home=home, model="churn", signals=signals, config=settings.monitoring)
    decision.action, decision.reason          # "retrain" | "hold", one line for people

What it weighs, in order (the first that holds decides):
1. data quality: a window whose data breaks its contract (missing values, unseen categories, a
   schema break) holds: retraining would learn the breakage; fix the feed.
2. enough rows: fewer than `min_rows` in the window give no verdict.
3. the signal `retrain_on` asks for (see `MonitoringConfig`): drift, decay, or decay backed by
   drift or by labels.
4. M of N: the signal in `windows_needed` of the last `windows_considered` windows judged for the
   current champion (the same window judged twice counts once; a new champion starts afresh).
5. cooldown: none within `cooldown_hours` of the model's last request.
Then it requests a retraining. Its state (the windows judged, the requests made) is one JSON file
per model under `<home>/monitor/<model>/`, written atomically, so cooldown and M-of-N survive a
restart of anything. `claim_event` makes the retraining flow idempotent: Prefect delivers an event
at least once, and a second delivery of one event id does nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from tasks import files
from tasks.monitor.quality import Quality
from tasks.settings import MonitoringConfig

Action = Literal["retrain", "hold"]
STATE_FILE, LOCK_FILE, EVENTS_DIR = "governor.json", ".lock", "events"
KEEP = 100  # windows and requests kept in the state file


@dataclass(frozen=True)
class Signals:
    """What one monitoring pass found, as the governor weighs it."""

    window_end: datetime | None  # the newest row's time: identifies the window
    rows: int
    champion: int
    drift: bool
    drifted_features: list[str]
    drift_share: float
    prediction_drift: bool
    quality: Quality
    data_problems: list[str] = field(default_factory=list)  # validation's problem kinds


@dataclass(frozen=True)
class Decision:
    """Retrain or hold, the one-line reason, and the facts behind it."""

    action: Action
    reason: str
    reasons: list[str]  # every finding that supports the decision
    signal: bool  # whether this window showed what `retrain_on` asks for
    windows_with_signal: int
    windows_judged: int
    request_id: str | None = None  # set on a retrain: the request's own id
    cooldown_until: datetime | None = None
    decided_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("cooldown_until", "decided_at"):
            out[key] = out[key].isoformat() if out[key] else None
        return out


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

    def last_request_at(self) -> datetime | None:
        return datetime.fromisoformat(self.requests[-1]["at"]) if self.requests else None


# Deciding (pure: the state in, the decision and the new state out) ------------------------------


def decide(
    signals: Signals, *, state: State, config: MonitoringConfig, now: datetime
) -> tuple[Decision, State]:
    """The governor's decision on one window, and the state that remembers it."""
    signal, why = _signal(signals, config)
    blocked = _blocked(signals, config)
    windows = _with_window(state.windows, signals, signal=signal and blocked is None, now=now)
    recent = [w for w in windows if w["champion"] == signals.champion][-config.windows_considered :]
    count = sum(bool(w["signal"]) for w in recent)
    facts: dict[str, Any] = {
        "windows_with_signal": count,
        "windows_judged": len(recent),
        "signal": signal,
    }
    if blocked is not None:
        decision = Decision(action="hold", reason=blocked, reasons=[blocked, *why], **facts)
    elif not signal:
        decision = Decision(action="hold", reason=why[0], reasons=why, **facts)
    elif count < config.windows_needed:
        reason = (
            f"{why[0]}; seen in {count} of the last {len(recent)} window(s), "
            f"{config.windows_needed} of {config.windows_considered} needed"
        )
        decision = Decision(action="hold", reason=reason, reasons=why, **facts)
    else:
        decision = _cooldown_or_request(why, state=state, config=config, now=now, facts=facts)
    windows[-1] = {**windows[-1], "decision": decision.action, "reason": decision.reason}
    requests = list(state.requests)
    if decision.action == "retrain":
        requests.append(
            {
                "at": now.isoformat(),
                "request_id": decision.request_id,
                "champion": signals.champion,
                "reasons": decision.reasons,
            }
        )
    return replace(decision, decided_at=now), State(windows=windows, requests=requests)


def _signal(signals: Signals, config: MonitoringConfig) -> tuple[bool, list[str]]:
    """Whether the window shows what `retrain_on` asks for, and the findings in words (the
    first one is the headline)."""
    q = signals.quality
    drift = _drift_words(signals)
    quality = q.describe()
    mode = config.retrain_on
    if mode == "drift":
        return signals.drift, [drift, quality] if signals.drift else [
            f"{drift}: retrain_on=drift waits for drift",
            quality,
        ]
    if mode == "decay":
        return q.decayed, [quality, drift]
    if q.decayed and q.source == "measured" and not signals.drift:
        return True, [f"concept drift: quality decayed with stable inputs: {quality}", drift]
    if q.decayed and signals.drift:
        return True, [f"{drift}, and {quality}"]
    if q.decayed:  # an estimate no drift backs up
        return False, [
            f"an estimated decay without input drift is not evidence enough: {quality}",
            drift,
        ]
    if signals.drift:
        return False, [f"{drift}, but {quality}"]
    return False, [f"{drift}; {quality}"]


def _drift_words(signals: Signals) -> str:
    names = ", ".join(signals.drifted_features)
    if signals.drift:
        count = len(signals.drifted_features)
        return f"inputs drifted: {count} feature(s) ({signals.drift_share:.0%}: {names})"
    return "no input drift" + (f" ({names} drifted, below the share)" if names else "")


def _blocked(signals: Signals, config: MonitoringConfig) -> str | None:
    """A reason no verdict on drift or quality can lead to retraining now."""
    if signals.data_problems:
        return (
            f"data-quality problem ({', '.join(signals.data_problems)}): fix the data feed; "
            "a model retrained on it would learn the breakage"
        )
    if signals.rows < config.min_rows:
        return (
            f"only {signals.rows:,} rows in the window (< monitoring.min_rows {config.min_rows:,})"
        )
    return None


def _with_window(
    windows: list[dict[str, Any]], signals: Signals, *, signal: bool, now: datetime
) -> list[dict[str, Any]]:
    """The windows with this one added, or replacing an earlier judgment of the same window."""
    end = signals.window_end.isoformat() if signals.window_end else None
    entry = {
        "end": end,
        "rows": signals.rows,
        "champion": signals.champion,
        "signal": signal,
        "judged_at": now.isoformat(),
    }
    out = list(windows)
    if (
        out
        and end is not None
        and out[-1]["end"] == end
        and out[-1]["champion"] == signals.champion
    ):
        out[-1] = entry
    else:
        out.append(entry)
    return out


def _cooldown_or_request(
    why: list[str], *, state: State, config: MonitoringConfig, now: datetime, facts: dict[str, Any]
) -> Decision:
    last = state.last_request_at()
    until = last + timedelta(hours=config.cooldown_hours) if last is not None else None
    if until is not None and now < until:
        reason = (
            f"{why[0]}; but in cooldown: retraining was requested at {last:%Y-%m-%d %H:%M} "
            f"UTC, next possible after {until:%Y-%m-%d %H:%M} UTC"
        )
        return Decision(action="hold", reason=reason, reasons=why, cooldown_until=until, **facts)
    seen = f"seen in {facts['windows_with_signal']} of the last {facts['windows_judged']} window(s)"
    return Decision(
        action="retrain",
        reason=f"{why[0]}; {seen}",
        reasons=[*why, seen],
        request_id=uuid.uuid4().hex,
        **facts,
    )


# The state on disk (or a bucket) ----------------------------------------------------------------


def folder(home: str, model: str) -> str:
    """`<home>/monitor/<model>`: the governor's state, its lock and its claimed events."""
    return files.join(home, "monitor", model)


def load_state(*, home: str, model: str) -> State:
    try:
        return State.from_json(files.read_text(files.join(folder(home, model), STATE_FILE)))
    except FileNotFoundError:
        return State()


def govern(
    *,
    home: str,
    model: str,
    signals: Signals,
    config: MonitoringConfig,
    now: datetime | None = None,
) -> Decision:
    """Decide on one window and remember it, under the model's lock (local homes; on a bucket
    the monitor deployment's concurrency limit of 1 keeps passes apart)."""
    now = now or datetime.now(timezone.utc)
    with _locked(home, model):
        decision, state = decide(
            signals, state=load_state(home=home, model=model), config=config, now=now
        )
        files.write_atomic(files.join(folder(home, model), STATE_FILE), state.to_json())
    return decision


def claim_event(*, home: str, model: str, event_id: str, record: dict[str, Any]) -> bool:
    """Claim an event for this run: True the first time an id is claimed, False after (a
    second delivery of the same event). Locally an exclusive create; on a bucket a check then a
    write, safe because the retraining deployment runs one at a time."""
    safe = "".join(ch for ch in event_id if ch.isalnum() or ch in "-_") or "event"
    location = files.join(folder(home, model), EVENTS_DIR, f"{safe}.json")
    body = json.dumps({"event_id": event_id, **record}, default=str)
    fs, path = files.resolve(location)
    if not files.is_local(fs):
        if files.exists(location):
            return False
        files.write_atomic(location, body)
        return True
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write(body)
    return True


@contextlib.contextmanager
def _locked(home: str, model: str) -> Iterator[None]:
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
