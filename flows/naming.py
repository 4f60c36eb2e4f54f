"""What a flow run is called in the Prefect UI: what it does, for which model.

    @flow(name="drift-monitor", flow_run_name=run_name("monitor"))   # "monitor: churn"

Prefect calls the function when the run starts, with the run's parameters at hand.
"""

from collections.abc import Callable
from pathlib import Path

from prefect.runtime import flow_run

from tasks.errors import DriftloopError
from tasks.settings import load_settings


def run_name(what: str) -> Callable[[], str]:
    """`<what>: <model>`, the model read from the run's `config` (or its `model` parameter),
    and the governor's request for a run an event started."""

    def name() -> str:
        params = flow_run.get_parameters()
        model = params.get("model") or _model(str(params.get("config", "driftloop.yaml")))
        request = params.get("request_id")
        return f"{what}: {model}" + (f" (request {str(request)[:8]})" if request else "")

    return name


def _model(config: str) -> str:
    try:
        return load_settings(Path(config), check_source=False).dataset.name
    except DriftloopError:  # the flow itself says what is wrong with the config, in one line
        return "?"
