"""What a monitoring pass leaves behind: its result, the reports under `<home>/reports/`, the
Prefect artifacts (the per-feature drift table, the governor's decision) and the events.

    <home>/reports/<model>/monitor/<UTC stamp>/drift.html    Evidently's report
                                               drift.json    Evidently's snapshot
                                               monitor.json  the pass: window, drift, quality,
                                                             data quality, the decision
                                               validation.json / .html  the data-quality check
    <home>/reports/<model>/monitor/latest.json               the last pass's monitor.json

Events: `driftloop.drift.detected` when the window drifted (share, drifted features and their
scores, window, report), `driftloop.retrain.requested` when the governor asks for a retraining
(its reasons, the request id, the report): the retraining deployment's trigger listens for it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from tasks import artifacts, events, files, validation
from tasks.monitor import checks, requests
from tasks.monitor.drift import DriftResult
from tasks.monitor.governor import Decision
from tasks.monitor.quality import Quality
from tasks.monitor.window import Window

MONITOR_JSON, DRIFT_HTML, DRIFT_JSON, LATEST = (
    "monitor.json", "drift.html", "drift.json", "latest.json"
)  # fmt: skip


@dataclass
class MonitorResult:
    """One monitoring pass, whole: what it read, found and decided, and where it wrote it."""

    model: str
    champion: int
    window: Window
    drift: DriftResult
    quality: Quality
    data_quality: validation.ValidationReport | None
    decision: Decision
    directory: str | None = None  # the pass's report folder
    events: list[str] = field(default_factory=list)  # ids of the events emitted
    delivered: bool | None = None  # the retrain request's event confirmed on the server
    checked_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def data_problems(self) -> list[str]:
        return checks.data_problems(self.window, self.data_quality)

    @property
    def report_html(self) -> str | None:
        if self.directory is None or self.drift.snapshot is None:
            return None
        return files.join(self.directory, DRIFT_HTML)

    def to_dict(self) -> dict[str, Any]:
        """What `driftloop monitor --json` prints and monitor.json holds."""
        dq = self.data_quality
        out = {
            "model": self.model,
            "champion": self.champion,
            "checked_at": self.checked_at.isoformat(),
            "window": self.window.to_dict(),
            "drift": self.drift.drift,
            "drift_share": self.drift.share,
            "drift_share_needed": self.drift.drift_share,
            "features_compared": len(self.drift.features),
            "drifted_features": self.drift.drifted_features,
            "prediction_drift": self.drift.prediction_drift,
            "columns": self.drift.to_dict()["columns"],
            "quality": self.quality.to_dict(),
            "data_quality": {
                "passed": not self.data_problems,
                "problems": self.data_problems,
                "summary": dq.summary() if dq is not None else "not checked (no rows)",
                "failed": [
                    {"check": r.check, "column": r.column, "observed": r.observed}
                    for r in (dq.failures if dq is not None else [])
                ],
                "findings": [o.to_dict()] if (o := self.window.outliers) and o.rows else [],
            },
            "decision": self.decision.action,
            "reason": self.decision.reason,
            "needs_attention": self.decision.needs_attention,
            "request": None
            if self.decision.request_id is None
            else {
                "id": self.decision.request_id,
                "delivered": self.delivered,
                "resent": self.decision.resend,
            },
            "governor": self.decision.to_dict(),
            "report": self.report_html,
            "directory": self.directory,
            "events": self.events,
        }
        return dict(events.jsonable(out))

    def verdict(self) -> list[str]:
        """For people, at a glance: drift, quality, data quality, the decision and why."""
        return verdict(self.to_dict())


def verdict(found: Mapping[str, Any]) -> list[str]:
    """`driftloop monitor`'s lines, from a pass's summary (`MonitorResult.to_dict()`, what the
    monitoring flow returns)."""
    drifted, compared = found["drifted_features"], found["features_compared"]
    names = f": {', '.join(drifted)}" if drifted else ""
    drift = (
        f"drift: YES, {len(drifted)} of {compared} features ({found['drift_share']:.0%}, "
        f"drift from {found['drift_share_needed']:.0%}){names}"
        if found["drift"]
        else f"drift: no ({len(drifted)} of {compared} features drifted{names})"
    )
    problems = found["data_quality"]["problems"]
    findings = [f["summary"] for f in found["data_quality"].get("findings", [])]
    window = found["window"]
    span = f", {window['start'][:16]} to {window['end'][:16]} UTC" if window["start"] else ""
    lines = [
        f"{found['model']} v{found['champion']}, window: {window['rows']:,} rows "
        f"({window['labelled']:,} labelled){span}",
        drift + ("; the prediction drifted too" if found["prediction_drift"] else ""),
        f"quality: {found['quality']['summary']}",
        "data quality: "
        + (f"PROBLEM: {', '.join(problems)}" if problems else "ok")
        + "".join(f"; {f}" for f in findings),
        f"decision: {found['decision'].upper()}: {found['reason']}",
    ]
    request = found.get("request")
    if request and request["delivered"] is False:
        lines.append(
            f"request {request['id'][:8]}: its event was not confirmed by the Prefect server; "
            "the next pass sends it again"
        )
    if found.get("needs_attention") and found["needs_attention"] not in found["reason"]:
        lines.append(found["needs_attention"])
    if found.get("report"):
        lines.append(f"report: {found['report']}")
    return lines


def report_folder(home: str, model: str, at: datetime) -> str:
    return files.join(home, "reports", model, "monitor", at.strftime("%Y%m%dT%H%M%S%fZ"))


def write_reports(result: MonitorResult, *, home: str) -> str:
    """Write the pass's reports (atomically, to a path or a URI); returns its folder."""
    directory = result.directory or report_folder(home, result.model, result.checked_at)
    result.directory = directory
    snapshot = result.drift.snapshot
    if snapshot is not None:
        html = snapshot.get_html_str(as_iframe=False)
        files.write_atomic(files.join(directory, DRIFT_HTML), html)
        files.write_atomic(files.join(directory, DRIFT_JSON), snapshot.json())
    if result.data_quality is not None:
        validation.write_reports(result.data_quality, directory=directory)
    body = json.dumps(result.to_dict(), indent=1)
    files.write_atomic(files.join(directory, MONITOR_JSON), body)
    files.write_atomic(files.join(home, "reports", result.model, "monitor", LATEST), body)
    return directory


def publish(result: MonitorResult, *, home: str, emit: bool = True) -> MonitorResult:
    """Everything a pass leaves: the events (naming the report's place), the retrain request
    confirmed delivered (then `sent` in the governor's state), the reports, the artifacts."""
    result.directory = report_folder(home, result.model, result.checked_at)
    if emit:
        emit_events(result)
        result.delivered = deliver(result, home=home)
    write_reports(result, home=home)
    publish_artifacts(result)
    return result


def latest(*, home: str, model: str) -> dict[str, Any] | None:
    """The last pass's monitor.json (None before the first)."""
    try:
        raw = files.read_text(files.join(home, "reports", model, "monitor", LATEST))
    except FileNotFoundError:
        return None
    return dict(json.loads(raw))


# Prefect artifacts and events --------------------------------------------------------------------


def publish_artifacts(result: MonitorResult) -> None:
    """The per-feature drift table (with the report's link) and the governor's decision."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    link = f" Report: [{DRIFT_HTML}]({_url(result.report_html)})" if result.report_html else ""
    rows = [
        {
            "column": c.column,
            "role": c.role,
            "test": c.test,
            "score": None if c.score is None else round(c.score, 4),
            "threshold": c.threshold,
            "drifted": c.drifted,
            "note": c.note,
        }
        for c in result.drift.columns
    ]
    d = result.drift
    create_table_artifact(
        table=rows,
        key=artifacts.key("drift", result.model),
        description=f"{result.model} v{result.champion}: {len(d.drifted_features)} of "
        f"{len(d.features)} features drifted ({d.share:.0%}; drift at {d.drift_share:.0%})." + link,
    )
    lines = [f"- {artifacts.md(line)}" for line in result.verdict()]
    reasons = [f"  - {artifacts.md(r)}" for r in result.decision.reasons]
    create_markdown_artifact(
        markdown=f"# Retrain governor: {result.decision.action}\n\n"
        + "\n".join(lines)
        + "\n- reasons:\n"
        + "\n".join(reasons)
        + "\n",
        key=artifacts.key("monitor", result.model),
        description=f"{result.model}: {result.decision.action}: {result.decision.reason}",
    )


def emit_events(result: MonitorResult) -> list[str]:
    """`driftloop.drift.detected` on drift, `driftloop.retrain.requested` on a retrain decision;
    returns the ids of the events sent (recorded on the result)."""
    sent = []
    d, window = result.drift, result.window.to_dict()
    if d.drift:
        event = events.emit(
            events.DRIFT_DETECTED,
            model=result.model,
            payload={
                "champion": result.champion,
                "drift_share": d.share,
                "drifted_features": d.drifted_features,
                "scores": d.scores(),
                "prediction_drift": d.prediction_drift,
                "window": window,
                "report": result.report_html,
            },
        )
        sent += [str(event.id)] if event is not None else []
    decision = result.decision
    if decision.attention_is_new:
        event = events.emit(
            events.RETRAIN_NEEDS_ATTENTION,
            model=result.model,
            payload={
                "champion": result.champion,
                "needs_attention": decision.needs_attention,
                "outcome": decision.outcome,
            },
        )
        sent += [str(event.id)] if event is not None else []
    if decision.action == "retrain":
        event = events.emit(
            events.RETRAIN_REQUESTED,
            model=result.model,
            id=decision.event_id,
            payload={
                "champion": result.champion,
                "request_id": decision.request_id,
                "attempt": decision.attempt,
                "reason": decision.reason,
                "reasons": decision.reasons,
                "drift": d.drift,
                "drifted_features": d.drifted_features,
                "quality": result.quality.to_dict(),
                "window": window,
                "report": result.report_html or "",
            },
        )
        sent += [str(event.id)] if event is not None else []
    result.events = sent
    return sent


def deliver(result: MonitorResult, *, home: str) -> bool | None:
    """For a retrain decision: whether its event reached the Prefect server (then the request
    is `sent`; else it stays pending and the next pass sends it again). None: no request."""
    decision = result.decision
    if decision.action != "retrain" or decision.request_id is None or decision.event_id is None:
        return None
    if not events.confirm(decision.event_id):
        return False
    requests.mark_sent(home=home, model=result.model, request_id=decision.request_id,
                       event_id=str(decision.event_id), now=decision.decided_at)  # fmt: skip
    return True


def _url(location: str | None) -> str:
    if location is None or "://" in location:
        return location or ""
    return f"file://{location}"
