"""The Ray connection that Ray Train and Ray Serve share: join, or start, and say where it runs.

    connect_ray()              # reuse this process's Ray, join RAY_ADDRESS, or start one locally
    nodes = cluster_nodes()    # each node's total resources, to place workers before asking Ray
    print(dashboard_url())     # "http://127.0.0.1:8265", or None without a dashboard

Ray is reused when the process already runs it; otherwise `RAY_ADDRESS` names a cluster to join
(the `tasks` package reaches its workers through the runtime environment), or a local instance
starts, its dashboard bound to 127.0.0.1.

No Prefect here, not even lazily: Serve replicas and Train controllers may import this module.
Ray itself is imported inside the functions, so importing this module starts nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "cluster_nodes",
    "connect_ray",
    "dashboard_url",
    "runtime_env",
    "worker_setup_hook",
]

# The `tasks` package: what a cluster's workers get through `py_modules`, since they cannot
# import this checkout
_PACKAGE = Path(__file__).resolve().parent


def join_configured_ray() -> bool:
    """Join the Ray `RAY_ADDRESS` names (as `driftloop up` sets it for the stack's processes),
    never starting one; whether this process is connected to a Ray now."""
    import ray

    if not ray.is_initialized() and os.environ.get("RAY_ADDRESS"):
        connect_ray()
    return bool(ray.is_initialized())


def connect_ray() -> None:
    """Reuse a running Ray; else join `RAY_ADDRESS`, or start a local instance on 127.0.0.1."""
    import ray

    if ray.is_initialized():
        return
    # Workers' and actors' output stays in Ray's own log files (the session folder, under the
    # home for `driftloop up`'s Ray), not in the terminal of whoever connects
    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    # On Linux Ray replaces 127.0.0.1 by the host's address and listens on every interface
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    address = os.environ.get("RAY_ADDRESS")
    if address:  # a cluster: its workers cannot import this checkout, so ship the package
        # Ray Client pickles the job config without cloudpickle: no setup hook by value there
        client = address.startswith("ray://")
        ray.init(address=address, runtime_env=runtime_env(ship_code=True, hook=not client), **quiet)
        return
    # The dashboard serves the State API that Train's placement-group cleaner polls; without it
    # the cleaner logs a warning every second. Loopback only: the dashboard can run code.
    ray.init(
        address="local",
        runtime_env=runtime_env(ship_code=False),
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        **quiet,
    )


def runtime_env(*, ship_code: bool, hook: bool = True) -> dict[str, Any]:
    """The job's runtime environment: the setup hook (`hook`), and the `tasks` package for a
    cluster's workers (`ship_code`)."""
    env: dict[str, Any] = {"worker_process_setup_hook": worker_setup_hook()} if hook else {}
    if ship_code:
        env["py_modules"] = [str(_PACKAGE)]
    return env


def worker_setup_hook() -> Callable[[], None]:
    """A `worker_process_setup_hook` for `ray.init(runtime_env=...)`: quiets known Ray noise.

    Ray Train's placement-group cleaner polls the State API every second. Without a dashboard it
    logs a warning each time; with several Ray instances on one machine (a test session beside
    `driftloop up`) its address auto-detection fails and its thread dies. The hook points the
    State API at this job's own cluster and filters that warning. It is built here so that
    cloudpickle ships it by value: workers need not import this module to run it.
    """

    def setup() -> None:
        import logging
        import os

        import ray

        os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
        logging.getLogger(
            "ray.train.v2._internal.execution.controller.placement_group_cleaner"
        ).addFilter(lambda r: "Failed to query Ray Train Controller" not in r.getMessage())

    return setup


def dashboard_url() -> str | None:
    """The Ray dashboard's URL, when this process is connected to a Ray that serves one."""
    try:
        from ray._private.worker import get_dashboard_url

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            url = get_dashboard_url()
    except Exception:
        return None
    return f"http://{url}" if url and "://" not in url else url or None


def cluster_nodes() -> list[dict[str, float]]:
    """Each alive node's total resources; for an autoscaling cluster, the most it can grow to."""
    import ray
    from ray._private.state import state  # what Ray Train's own up-front check reads

    with contextlib.suppress(Exception):  # a private API: fall back to the nodes alive now
        most = state.get_max_resources_from_cluster_config()
        if most:
            return [{k: float(v) for k, v in most.items()}]
    return [dict(n["Resources"]) for n in ray.nodes() if n["Alive"]]
