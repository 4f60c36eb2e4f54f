"""Retraining, started by the governor's `driftloop.retrain.requested` event (or by hand).

    python -m flows.retraining driftloop.yaml        # by hand; the deployment's trigger passes
                                                     # the event's id, model, reasons and report

The source is re-read and joined by the production rows that have feedback labels (the last
`retraining.feedback_days`) and pass the batch checks: some to train on, some to validate and
choose how fast old rows fade (`tasks.train.recency`), the rest kept for the gate. The training
pipeline then runs as ever: validate, train (every row weighted by its age), gate against the
champion on the recent labelled rows neither trained on (the holdout a no-regression check),
promote (and Serve swaps to the new champion). The new version's metadata names what started it
and which weighting it learned with; its drift reference is a sample of what it trained on.
Prefect delivers an event at least once and the governor re-sends a request it could not
confirm: the run claims its request first, so a second run of one request does nothing, unless
the first died holding it (then it trains). Its outcome (promoted, rejected, failed, with the
version and why) is recorded for the governor to read back.
"""

import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.naming import run_name
from flows.training import training_pipeline
from tasks import files
from tasks.errors import quiet_expected_failures
from tasks.monitor import claim_task, finish_task, labelled_traffic_task
from tasks.settings import load_settings


@flow(name="retraining", flow_run_name=run_name("retrain"))
def retraining(
    config: str = "driftloop.yaml",
    event_id: str | None = None,
    model: str | None = None,
    request_id: str | None = None,
    reasons: list[str] | None = None,
    report: str | None = None,
) -> dict[str, Any]:
    """Retrain on fresh source data plus labelled production rows, through the same gate.
    Parameters: the driftloop.yaml to use; what the triggering event carried (its id, the
    model, the governor's request id and reasons, the drift report)."""
    settings = load_settings(Path(config), check_source=False)
    name = settings.dataset.name
    if model is not None and model != name:
        get_run_logger().warning(
            "event for model %r; %s trains %r: nothing to do", model, config, name
        )
        return {"model": model, "decision": "skipped", "reason": f"{config} trains {name!r}"}

    # At most once per request: a redelivered event or a re-sent request finds its claim -------
    key = request_id or event_id  # an event of someone else's carries no request id
    trigger = {
        "event_id": event_id,
        "request_id": request_id,
        "reasons": reasons or [],
        "drift_report": report,
        "started_at": datetime.now(timezone.utc).isoformat(),
    }
    if key is not None:
        claimed = claim_task(settings=settings, key=key, record=trigger)
        if claimed != "claimed":
            why = "was handled already" if claimed == "done" else "is being retrained by a live run"
            return {"model": name, "decision": "skipped", "event_id": event_id,
                    "request_id": request_id, "reason": f"request {key} {why}"}  # fmt: skip
    run_id = key or f"manual-{uuid.uuid4().hex[:12]}"
    try:
        # Labelled production rows: checked, split to train on, to choose on and for the gate
        feedback = labelled_traffic_task(settings=settings, run_id=run_id)

        # The same pipeline: validate, weight toward the present, train, gate on recent rows
        result = training_pipeline(
            config=config,
            traffic=feedback["folder"],
            metadata={"trigger": {**trigger, "feedback": feedback}},
        )
    except Exception as exc:  # the governor reads it back: failed, and why
        if key is not None:
            finish_task(settings=settings, key=key, status="failed", version=None,
                        detail=f"{type(exc).__name__}: {files.first_line(exc)}")  # fmt: skip
        raise
    if key is not None:
        finish_task(settings=settings, key=key, status=result["decision"],
                    version=result["version"], detail=result["reason"])  # fmt: skip
    return {**result, "trigger": trigger, "feedback": feedback}


if __name__ == "__main__":
    quiet_expected_failures()
    print(retraining(config=sys.argv[1] if len(sys.argv) > 1 else "driftloop.yaml"))
