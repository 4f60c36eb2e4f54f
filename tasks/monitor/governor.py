"""The retrain governor: between a monitoring signal and a retraining run, it decides, says why,
and remembers what became of each request.

    decision = govern(home=home, model="churn", signals=signals, config=settings.monitoring)
    decision.action, decision.reason          # "retrain" | "hold", one line for people
    decision.needs_attention                  # "needs attention: v5 rejected: ..." or None

What it weighs, in order (the first that holds decides):
1. a request still open: one whose event was never confirmed delivered, or whose retraining
   crashed, is sent again under its own id (the retraining's claim keeps it to one run); one in
   flight holds every other decision until it ends.
2. data quality: a window whose data breaks its contract (missing values, unseen categories, a
   schema break, outliers past their share) holds: retraining would learn the breakage.
3. enough rows: fewer than `min_rows` in the window give no verdict.
4. the signal `retrain_on` asks for (see `MonitoringConfig`): drift, decay, or decay backed by
   drift or by labels.
5. M of N: the signal in `windows_needed` of the last `windows_considered` windows judged for the
   current champion, where a window counts only with `min_rows` rows no counted window before it
   judged (passes an hour apart over 24 hours of traffic are one window's evidence, not many).
6. after a retraining that was rejected or failed (for this champion): it needs attention, and
   asks again only once `min_labelled_rows` new labels arrived and a back-off has passed (the
   cooldown, doubled for each unsuccessful request in a row).
7. cooldown: none within `cooldown_hours` of the model's last request.
Then it requests a retraining. A request is `pending` until the monitor confirms its event reached
the Prefect server (`mark_sent`), then `sent`; the retraining's record (`tasks.monitor.requests`)
makes it `running`, then `promoted`, `rejected` or `failed`; a run that died holding it is
`crashed` (sent again). The state is one JSON file per model under `<home>/monitor/<model>/`,
written atomically under a lock, so all of it survives a restart of anything.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from tasks.monitor import requests
from tasks.monitor.quality import Quality
from tasks.monitor.requests import OPEN, UNSUCCESSFUL, State, time_of
from tasks.settings import MonitoringConfig

Action = Literal["retrain", "hold"]
_EVENT_IDS = uuid.UUID("5c1d3f0e-6f39-4a43-9a0e-8d2b4c7e9f10")  # namespace of the events' ids


def _all_rows(rows: int) -> Callable[[datetime | None], int]:
    return lambda moment: rows


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
    # rows of the window predicted after a time, labels received after a time (`Window`'s)
    rows_after: Callable[[datetime | None], int] | None = None
    labels_after: Callable[[datetime | None], int] | None = None

    def fresh_rows(self, moment: datetime | None) -> int:
        return (self.rows_after or _all_rows(self.rows))(moment)

    def new_labels(self, moment: datetime | None) -> int:
        return (self.labels_after or _all_rows(self.quality.rows))(moment)


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
    attempt: int = 1  # the request's delivery attempt (a crashed or lost one is sent again)
    resend: bool = False  # a request decided earlier, sent again
    cooldown_until: datetime | None = None
    needs_attention: str | None = None  # a retraining that did not help, until one does
    outcome: dict[str, Any] | None = None  # what this pass learned became of the last request
    undeliverable: bool = False  # a retrain was due but no Prefect server could take it
    counted: bool = True  # whether this window counts toward M of N (new rows enough)
    fresh_rows: int = 0  # rows of this window no counted window judged before
    decided_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def event_id(self) -> uuid.UUID | None:
        """The id of this request's event at this attempt: the same id when re-sent after a
        lost delivery (the server keeps an event once), a new one after a crash."""
        if self.request_id is None:
            return None
        return uuid.uuid5(_EVENT_IDS, f"{self.request_id}:{self.attempt}")

    @property
    def attention_is_new(self) -> bool:
        """This pass learned that the last request's retraining did not help."""
        return self.outcome is not None and self.outcome.get("status") in UNSUCCESSFUL

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("cooldown_until", "decided_at"):
            out[key] = out[key].isoformat() if out[key] else None
        out["event_id"] = str(self.event_id) if self.event_id else None
        return out


# Deciding (pure: the state in, the decision and the new state out) ------------------------------


def decide(
    signals: Signals,
    *,
    state: State,
    config: MonitoringConfig,
    now: datetime,
    can_deliver: bool = True,
) -> tuple[Decision, State]:
    """The governor's decision on one window, and the state that remembers it. `can_deliver`:
    a Prefect server can take a request now (without one, a due request is not recorded)."""
    signal, why = _signal(signals, config)
    blocked = _blocked(signals, config)
    windows = _with_window(
        state.windows, signals, signal=signal and blocked is None, config=config, now=now
    )
    this = windows[-1]
    recent = [w for w in windows if w["champion"] == signals.champion and w.get("counted", True)]
    recent = recent[-config.windows_considered :]
    count = sum(bool(w["signal"]) for w in recent)
    facts: dict[str, Any] = {
        "windows_with_signal": count,
        "windows_judged": len(recent),
        "signal": signal,
        "counted": this["counted"],
        "fresh_rows": this["fresh"],
        "needs_attention": _attention(state.last, champion=signals.champion),
    }
    follow_up = _follow_up(state.last, signals=signals, config=config, now=now, facts=facts)
    if follow_up is not None:
        decision = follow_up
    elif blocked is not None:
        decision = Decision(action="hold", reason=blocked, reasons=[blocked, *why], **facts)
    elif not signal:
        decision = Decision(action="hold", reason=why[0], reasons=why, **facts)
    elif count < config.windows_needed:
        needed = f"{config.windows_needed} of {config.windows_considered} needed"
        reason = f"{why[0]}; {_seen(facts, config)}, {needed}"
        decision = Decision(action="hold", reason=reason, reasons=why, **facts)
    elif (wait := _waiting(state, signals=signals, config=config, now=now)) is not None:
        reason = f"{facts['needs_attention']}; {wait}"
        decision = Decision(action="hold", reason=reason, reasons=[reason, *why], **facts)
    else:
        decision = _cooldown_or_request(why, state=state, config=config, now=now, facts=facts)
    if decision.action == "retrain" and not can_deliver:
        reason = (
            f"a retraining is due ({decision.reason}), but no Prefect server is reachable to "
            "deliver the request: nothing recorded; start the stack (driftloop up) or set "
            "PREFECT_API_URL"
        )
        decision = replace(
            decision, action="hold", reason=reason, request_id=None, undeliverable=True
        )
    windows[-1] = {**this, "decision": decision.action, "reason": decision.reason}
    new_state = replace(state, windows=windows)
    if decision.action == "retrain":
        new_state = new_state.with_request(_request_entry(decision, state, signals, now))
    return replace(decision, decided_at=now), new_state


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
    windows: list[dict[str, Any]],
    signals: Signals,
    *,
    signal: bool,
    config: MonitoringConfig,
    now: datetime,
) -> list[dict[str, Any]]:
    """The windows with this one added (or replacing an earlier judgment of the same window).
    It counts toward M of N only with `min_rows` rows newer than the last counted window's."""
    end = signals.window_end.isoformat() if signals.window_end else None
    entry: dict[str, Any] = {
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
        and out[-1]["champion"] == entry["champion"]
    ):
        previous = out[-1]  # the same window judged again: it counts as it did
        out[-1] = {**entry, "fresh": previous.get("fresh", signals.rows),
                   "counted": previous.get("counted", True)}  # fmt: skip
        return out
    counted = [w for w in out if w["champion"] == signals.champion and w.get("counted", True)]
    since = time_of(counted[-1]["end"]) if counted and counted[-1]["end"] else None
    fresh = signals.fresh_rows(since) if counted else signals.rows
    out.append({**entry, "fresh": fresh, "counted": fresh >= config.min_rows})
    return out


def _seen(facts: dict[str, Any], config: MonitoringConfig) -> str:
    seen = f"seen in {facts['windows_with_signal']} of the last {facts['windows_judged']} window(s)"
    if not facts["counted"]:
        seen += (
            f" (this pass adds only {facts['fresh_rows']:,} rows no counted window judged, "
            f"< monitoring.min_rows {config.min_rows:,}: the same evidence counts once)"
        )
    return seen


def _follow_up(
    last: dict[str, Any] | None,
    *,
    signals: Signals,
    config: MonitoringConfig,
    now: datetime,
    facts: dict[str, Any],
) -> Decision | None:
    """What an open request asks of this pass: send it again, or wait for it (None: nothing
    is open, or it was for another champion and never delivered)."""
    status = None if last is None else last.get("status", "legacy")
    if last is None or status not in OPEN:
        return None
    rid, at = last["request_id"], time_of(last["at"])
    ask = f"request {rid[:8]} of {at:%Y-%m-%d %H:%M} UTC"
    if status in ("pending", "crashed") and last["champion"] != signals.champion:
        return None  # a new champion serves: that request is moot (see `_request_entry`)
    again: dict[str, Any] = {"action": "retrain", "request_id": rid, "resend": True, **facts}
    attempt = int(last.get("attempt", 1))
    if status == "pending":
        reason = f"re-sending {ask}: its event was not confirmed delivered"
        return Decision(reason=reason, reasons=[reason, *last["reasons"]], attempt=attempt, **again)
    if status == "crashed":
        reason = f"the retraining of {ask} ended without an outcome (flow run " \
                 f"{last.get('flow_run_id')}): sending it again"  # fmt: skip
        return Decision(reason=reason, reasons=[reason, *last["reasons"]], attempt=attempt + 1,
                        **again)  # fmt: skip
    sent = time_of(last.get("sent_at") or last["at"])
    patience = timedelta(hours=max(config.cooldown_hours, 1.0))
    if status == "sent" and now - sent > patience:
        reason = (
            f"{ask} was delivered at {sent:%H:%M} UTC but no retraining claimed it within "
            f"{patience.total_seconds() / 3600:g} h: sending it again"
        )
        return Decision(reason=reason, reasons=[reason, *last["reasons"]], attempt=attempt + 1,
                        **again)  # fmt: skip
    reason = f"a retraining is in flight for {ask} ({status})"
    return Decision(action="hold", reason=reason, reasons=[reason], **facts)


def _attention(last: dict[str, Any] | None, *, champion: int) -> str | None:
    """Why the last retraining (asked of this champion) did not help, or None."""
    if last is None or last.get("status") not in UNSUCCESSFUL or last["champion"] != champion:
        return None
    detail = str(last.get("detail") or "no detail recorded")
    if last["status"] == "rejected":
        return f"needs attention: v{last.get('version')} rejected: {detail}"
    return f"needs attention: the retraining failed: {detail}"


def _waiting(
    state: State, *, signals: Signals, config: MonitoringConfig, now: datetime
) -> str | None:
    """After an unsuccessful retraining: what it waits for before asking again (None: asks)."""
    last = state.last
    if last is None or _attention(last, champion=signals.champion) is None:
        return None
    ended = time_of(last.get("ended_at") or last["at"])
    new = signals.new_labels(ended)
    if new < config.min_labelled_rows:
        return (
            f"asks again once {config.min_labelled_rows:,} new labels arrived "
            f"({new:,} since {ended:%Y-%m-%d %H:%M} UTC)"
        )
    streak = 0
    for request in reversed(state.requests):
        if request.get("status") not in UNSUCCESSFUL or request["champion"] != signals.champion:
            break
        streak += 1
    until = ended + timedelta(hours=config.cooldown_hours * 2 ** (streak - 1))
    if now < until:
        return (
            f"backing off after {streak} unsuccessful retraining(s) until "
            f"{until:%Y-%m-%d %H:%M} UTC"
        )
    return None


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
    seen = _seen(facts, config)
    return Decision(
        action="retrain",
        reason=f"{why[0]}; {seen}",
        reasons=[*why, seen],
        request_id=uuid.uuid4().hex,
        **facts,
    )


def _request_entry(
    decision: Decision, state: State, signals: Signals, now: datetime
) -> dict[str, Any]:
    """The request as the state keeps it: new, or the open one sent again."""
    found = next((r for r in state.requests if r.get("request_id") == decision.request_id), None)
    base = found or {
        "request_id": decision.request_id,
        "at": now.isoformat(),
        "champion": signals.champion,
        "reasons": decision.reasons,
    }
    return {**base, "status": "pending", "attempt": decision.attempt,
            "event_id": str(decision.event_id), "decided_at": now.isoformat()}  # fmt: skip


def govern(
    *,
    home: str,
    model: str,
    signals: Signals,
    config: MonitoringConfig,
    now: datetime | None = None,
    is_alive: Callable[[dict[str, Any]], bool] | None = None,
    can_deliver: bool = True,
) -> Decision:
    """Learn what became of the last request, decide on one window, and remember both, under
    the model's lock (local homes; on a bucket the monitor deployment's concurrency limit of 1
    keeps passes apart)."""
    now = now or datetime.now(timezone.utc)
    with requests.locked(home, model):
        state, outcome = requests.reconcile(
            requests.load_state(home=home, model=model), home=home, model=model,
            is_alive=is_alive,
        )  # fmt: skip
        decision, state = decide(
            signals, state=state, config=config, now=now, can_deliver=can_deliver
        )
        requests.save_state(state, home=home, model=model)
    return replace(decision, outcome=outcome)
