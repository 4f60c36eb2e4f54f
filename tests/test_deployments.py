"""The deployments: infra/prefect.yaml and flows/deployments.py declare the same three, and the
retraining trigger's parameters render, from a real event, to what the flow accepts."""

import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from helpers import write_project
from prefect.cli.deploy._triggers import DeploymentTriggerAdapter  # what `prefect deploy` uses
from prefect.events import DeploymentEventTrigger
from prefect.events.schemas.events import ReceivedEvent
from prefect.server.events.actions import RunDeployment
from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

from flows import deployments
from flows.retraining import retraining
from tasks import events
from tasks.settings import MonitoringConfig

PREFECT_YAML = Path(__file__).parents[1] / "infra" / "prefect.yaml"


def declared() -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]}


def rendered(parameters: dict[str, Any], event: ReceivedEvent) -> dict[str, Any]:
    """The parameters as the server's run-deployment action renders them for `event`."""
    templates = dict(parameters)
    RunDeployment._upgrade_v1_templates(templates)
    context = HydrationContext(
        raise_on_error=True,
        render_jinja=True,
        jinja_context={"event": event},
        render_workspace_variables=True,
        workspace_variables={},
    )
    return dict(hydrate(templates, context))


def retrain_event() -> ReceivedEvent:
    now = datetime.now(timezone.utc)
    return ReceivedEvent(
        event=events.RETRAIN_REQUESTED,
        resource=events.resource("churn"),
        id=uuid.uuid4(),
        occurred=now,
        received=now,
        payload={"request_id": "ab12", "reasons": ["concept drift: ..."], "report": "/r.html"},
    )


def test_prefect_yaml_and_the_python_deployments_agree(tmp_path: Path) -> None:
    built = {d.name: d for d in deployments.build(str(write_project(tmp_path)))}
    found = declared()
    assert set(built) == set(found) == {"training", "monitor", "retraining"}
    for name, deployment in built.items():
        assert deployment.concurrency_limit == 1
        assert found[name]["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
        module, _, function = str(deployment.entrypoint).rpartition(".")
        assert found[name]["entrypoint"] == f"{module.replace('.', '/')}.py:{function}"
        assert deployment.parameters["config"] == str((tmp_path / "driftloop.yaml").resolve())
    (schedule,) = built["monitor"].schedules or []
    minutes = MonitoringConfig().schedule_minutes
    assert schedule.schedule.interval.total_seconds() == minutes * 60  # type: ignore[union-attr]
    assert found["monitor"]["schedules"] == [{"interval": minutes * 60}]
    assert not built["training"].schedules
    assert not built["training"].triggers


def test_the_retraining_trigger_is_the_same_in_both_and_listens_for_every_model(
    tmp_path: Path,
) -> None:
    built = {d.name: d for d in deployments.build(str(write_project(tmp_path)))}
    (python,) = built["retraining"].triggers
    (spec,) = declared()["retraining"]["triggers"]
    from_yaml = DeploymentTriggerAdapter.validate_python(spec)
    for trigger in (python, from_yaml):
        assert isinstance(trigger, DeploymentEventTrigger)
        assert trigger.expect == {events.RETRAIN_REQUESTED}
        assert getattr(trigger.match, "root", trigger.match) == deployments.MODEL_RESOURCES
        assert trigger.parameters == deployments.RETRAIN_PARAMETERS


def test_the_trigger_parameters_render_to_what_the_retraining_flow_accepts() -> None:
    event = retrain_event()
    parameters = rendered(deployments.RETRAIN_PARAMETERS, event)
    assert parameters == {
        "event_id": str(event.id),
        "model": "churn",
        "request_id": "ab12",
        "reasons": ["concept drift: ..."],
        "report": "/r.html",
    }
    checked = retraining.validate_parameters({"config": "driftloop.yaml", **parameters})
    assert checked["event_id"] == str(event.id)
    assert checked["reasons"] == ["concept drift: ..."]


def test_an_untyped_event_id_would_not_render_which_is_why_it_is_cast() -> None:
    import pytest

    with pytest.raises(Exception, match="UUID is not JSON serializable"):
        rendered({"event_id": "{{ event.id }}"}, retrain_event())
