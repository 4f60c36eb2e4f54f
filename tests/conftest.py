"""Shared fixtures: real services start once per session, never per test."""

import os
from collections.abc import Iterator

import pytest

# Keep outside endpoints out of tests: no analytics from GX or Prefect on a machine without internet.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A real local Ray instance shared by the session's tests (dashboard on loopback only).

    `address="local"` always starts a fresh instance, never joins a cluster `driftloop up` or
    another test started.
    """
    import ray

    ray.init(
        address="local",
        num_cpus=4,  # 2 training workers plus the Train controller on a 2-core machine
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        log_to_driver=False,
    )
    yield
    ray.shutdown()
