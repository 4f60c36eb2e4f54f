"""The drift monitor: one pass over the recent prediction log, and the governor's decision.

    python -m flows.monitoring driftloop.yaml        # or: driftloop monitor [--json]

Reads a window of traffic, compares it with the champion's training sample (Evidently), checks its
data quality (Great Expectations), measures quality on the feedback labels that arrived or
estimates it (CBPE), and lets the retrain governor decide. Leaves a drift table and the decision as
Prefect artifacts, HTML and JSON reports under <home>/reports/<model>/monitor/, and the events
`driftloop.drift.detected` / `driftloop.retrain.requested` (the retraining deployment's trigger).
The monitor deployment (flows/deployments.py) runs it on a schedule.
"""

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow

from flows.naming import run_name
from flows.serving import judge_running
from tasks.errors import quiet_expected_failures
from tasks.monitor import (
    MonitorResult,
    champion_task,
    data_quality_task,
    drift_task,
    govern_task,
    publish_task,
    quality_task,
    upkeep_task,
    window_task,
)
from tasks.settings import load_settings


@flow(name="drift-monitor", flow_run_name=run_name("monitor"))
def monitoring_pass(config: str = "driftloop.yaml", now: datetime | None = None) -> dict[str, Any]:
    """Compare recent traffic with the champion's training sample, judge its quality and data,
    and decide whether to retrain (and why). Parameters: the driftloop.yaml to use; `now`, the
    end of the window (default: now)."""
    settings = load_settings(Path(config), check_source=False)

    # What is judged: the champion, and a window of the traffic it served -----------------------
    champion = champion_task(settings)
    window = window_task(settings, champion=champion, now=now)

    # What the window shows: drift, data quality, model quality ---------------------------------
    drift = drift_task(window, champion=champion, settings=settings)
    data_quality = data_quality_task(window, champion=champion, settings=settings)
    quality = quality_task(window, champion=champion, settings=settings)

    # The governor decides; the pass leaves its reports, artifacts and events -------------------
    decision = govern_task(
        settings=settings,
        champion=champion,
        window=window,
        drift=drift,
        quality=quality,
        data_quality=data_quality,
        now=now,
    )
    result = MonitorResult(
        model=settings.dataset.name,
        champion=champion.version,
        window=window,
        drift=drift,
        quality=quality,
        data_quality=data_quality,
        decision=decision,
    )
    found = publish_task(result, settings=settings).to_dict()

    # Keep the log small: compact the days no writer touches, retire the old ones --------------
    found["upkeep"] = upkeep_task(settings, now=now)

    # A rollout whose flow stopped (a restart) goes on: one judgement a pass ---------------------
    found["rollout"] = judge_running(settings)
    return found


if __name__ == "__main__":
    quiet_expected_failures()
    found = monitoring_pass(config=sys.argv[1] if len(sys.argv) > 1 else "driftloop.yaml")
    print(json.dumps(found, indent=1))
