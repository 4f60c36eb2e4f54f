"""driftloop's Prefect deployments, registered against the Prefect API in use and executed here.

    python -m flows.deployments driftloop.yaml      # `driftloop up` starts this; `down` stops it

Three deployments, the same ones infra/prefect.yaml declares for `prefect deploy`:
- `training-pipeline/training`: on demand (`driftloop train`, the UI, `run_deployment`);
- `drift-monitor/monitor`: every `monitoring.schedule_minutes`;
- `retraining/retraining`: started by the trigger on `driftloop.retrain.requested` for any
  model (`driftloop.model.*`), with the event's id, model, request id, reasons and report as
  parameters typed to what the event carries (a mismatch would fail silently on the server).
Each allows one run at a time (a deployment concurrency limit of 1; others wait): at most one
retraining in flight. `prefect.serve` executes their runs for as long as this process lives.

    from prefect.deployments import run_deployment
    run_deployment("drift-monitor/monitor", parameters={"config": "/abs/driftloop.yaml"})
"""

import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.client.schemas.schedules import IntervalSchedule
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.types.entrypoint import EntrypointType

from flows.monitoring import monitoring_pass
from flows.retraining import retraining
from flows.training import training_pipeline
from tasks import events
from tasks.errors import quiet_expected_failures
from tasks.settings import load_settings

TRAINING, MONITOR, RETRAINING = "training", "monitor", "retraining"
# What the trigger hands the retraining flow: single `{{ }}` templates keep their native types
# (event.id is a UUID, which JSON cannot carry: `| string` makes it the str the flow takes)
RETRAIN_PARAMETERS: dict[str, str] = {
    "event_id": "{{ event.id | string }}",
    "model": "{{ event.resource.name }}",
    "request_id": "{{ event.payload.request_id }}",
    "reasons": "{{ event.payload.reasons }}",
    "report": "{{ event.payload.report }}",
}
MODEL_RESOURCES = {"prefect.resource.id": "driftloop.model.*"}
FLOWS = {
    TRAINING: training_pipeline.name,
    MONITOR: monitoring_pass.name,
    RETRAINING: retraining.name,
}


def full_name(deployment: str) -> str:
    """What `run_deployment` takes: `flow/deployment`, e.g. `drift-monitor/monitor`."""
    return f"{FLOWS[deployment]}/{deployment}"


def one_at_a_time() -> ConcurrencyLimitConfig:
    """A concurrency limit of 1 whose extra runs wait their turn (none is dropped)."""
    return ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def retrain_trigger() -> DeploymentEventTrigger:
    return DeploymentEventTrigger(
        name="retrain-when-the-governor-asks",
        expect={events.RETRAIN_REQUESTED},
        match=MODEL_RESOURCES,
        parameters=dict(RETRAIN_PARAMETERS),
    )


def build(config: str) -> list[RunnerDeployment]:
    """The three deployments for the driftloop.yaml at `config` (its path made absolute: runs
    execute wherever the runner lives)."""
    path = str(Path(config).resolve())
    settings = load_settings(Path(path), check_source=False)
    common: dict[str, Any] = {
        "parameters": {"config": path},
        "concurrency_limit": one_at_a_time(),
        "entrypoint_type": EntrypointType.MODULE_PATH,  # the installed package, not a file path
        "tags": ["driftloop", settings.dataset.name],
    }
    minutes = settings.monitoring.schedule_minutes
    built = [
        training_pipeline.to_deployment(name=TRAINING, **common),
        monitoring_pass.to_deployment(name=MONITOR, interval=timedelta(minutes=minutes), **common),
        retraining.to_deployment(name=RETRAINING, triggers=[retrain_trigger()], **common),
    ]
    # to_deployment answers a coroutine only when called from async code; this is sync
    return [d for d in built if isinstance(d, RunnerDeployment)]


def describe(config: str) -> list[str]:
    """Each deployment's full name (what `run_deployment` takes) and what starts it."""
    lines = []
    for d in build(config):
        when = [
            f"every {s.schedule.interval.total_seconds() / 60:g} min"
            for s in d.schedules or []
            if isinstance(s.schedule, IntervalSchedule)
        ]
        when += [
            f"on {', '.join(sorted(t.expect))}"
            for t in d.triggers or []
            if isinstance(t, DeploymentEventTrigger)
        ]
        lines.append(f"{d.flow_name}/{d.name} ({', '.join(when) or 'on demand'})")
    return lines


def run(config: str = "driftloop.yaml") -> None:
    """Register the deployments and execute their runs until stopped (SIGTERM / Ctrl-C)."""
    serve(*build(config), print_starting_message=True)


if __name__ == "__main__":
    quiet_expected_failures()
    run(sys.argv[1] if len(sys.argv) > 1 else "driftloop.yaml")
