"""Point this process at the local stack: Prefect's API and Ray, as `driftloop up` runs them.

connect.to_stack(settings)     # before Prefect is imported: it reads its settings once
connect.to_served(settings)    # and Ray, where the stack serves the model (swaps in place)
"""

import sys

from tasks.settings import Settings


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
