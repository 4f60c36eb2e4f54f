"""Point this process at the local stack: Prefect's API and Ray, as `driftloop up` runs them.

connect.to_stack(settings)     # before Prefect is imported: it reads its settings once
connect.to_served(settings)    # and Ray, where the stack serves the model (swaps in place)
"""

import os
import sys
from pathlib import Path

import typer

from tasks.settings import Settings, load_settings


def to_stack(settings: Settings) -> None:
    """Point Prefect and Ray at the local stack when `driftloop up` runs it (see `stack.use`).

    Prefect reads its settings once, when it is first imported: a command that imported it
    before this call would run its flows on a temporary server of its own, and its events would
    reach no automation. That mistake fails here, loudly, instead of silently."""
    from tasks import stack

    if not settings.home_is_local:  # an object-store home has no local stack
        return
    done = stack.use(home=stack.local_home(settings.home))
    if "PREFECT_API_URL" in done and "prefect.settings" in sys.modules:
        from prefect.settings import get_current_settings

        if get_current_settings().api.url != done["PREFECT_API_URL"]:
            raise RuntimeError("Prefect was imported before connect.to_stack: connect first")


def to_served(settings: Settings) -> None:
    """Where the stack serves the model, connect to it (Prefect and Ray): a change of what
    serves then swaps the running app in place."""
    from tasks.serve.probe import probe

    if not probe(settings.serving, model=settings.dataset.name).running:
        return  # nothing serves: the next `driftloop up` serves what the registry says
    from tasks import cluster

    to_stack(settings)
    cluster.connect_ray()


def stop_serving(config: Path, home: Path) -> bool:
    """`down`: stop the Serve app gracefully before the Ray under it (replicas flush their
    prediction logs); only the app on this stack's Ray, never one another RAY_ADDRESS names."""
    from tasks import stack
    from tasks.serve.probe import probe
    from tasks.settings import ServingConfig

    settings = load_settings(config, check_source=False) if config.exists() else None
    serving, model = (
        (settings.serving, settings.dataset.name) if settings else (ServingConfig(), None)
    )
    try:  # first: whether this stack runs a Ray at all (another one may serve on the port)
        ours = stack.connection_env(home=home).get("RAY_ADDRESS")
    except stack.StackError:  # a corrupt state file: `down` says so, `down --force` stops all
        return False
    if ours is None or not probe(serving, model=model).running:
        return False
    stack.use(home=home)
    if os.environ.get("RAY_ADDRESS") != ours:
        return False
    from tasks import cluster, serve

    try:
        cluster.connect_ray()
        return serve.stop(everything=True, home=str(home))
    except Exception as exc:  # a Ray that is going anyway: say so, then stop the stack
        typer.echo(f"serve: not stopped gracefully ({exc.__class__.__name__}: {exc})", err=True)
        return False
