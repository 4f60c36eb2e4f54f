"""Shared fixtures: real services start once per session, never per test."""

import os
import secrets
from collections.abc import Iterator

import pytest

# Keep outside endpoints out of tests: no analytics from GX or Prefect (no internet here).
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# On Linux Ray swaps 127.0.0.1 for the host's address and listens on every interface; this keeps
# the test suite's Ray on loopback (tests/test_stack.py checks the same for `driftloop up`).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(scope="session", autouse=True)
def _ray_token_outside_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Ray 2.60 turns token auth on and writes its token to ~/.ray/auth_token unless told where:
    the suite's Ray instances (and the clusters tests start) keep theirs in a temp folder."""
    token = tmp_path_factory.mktemp("ray-auth") / "auth_token"
    token.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
    token.chmod(0o600)
    previous = os.environ.get("RAY_AUTH_TOKEN_PATH")
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    yield
    if previous is None:
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    else:
        os.environ["RAY_AUTH_TOKEN_PATH"] = previous


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A real local Ray instance shared by the session's tests (dashboard on loopback only).

    `address="local"` always starts a fresh instance, never joins a cluster `driftloop up` or
    another test started.
    """
    import ray

    from tasks.train import worker_setup_hook

    ray.init(
        address="local",
        num_cpus=4,  # 2 one-CPU training workers and room to spare (the Train controller takes 0)
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        log_to_driver=False,
        # Points Train's placement-group cleaner at this cluster when others run on the machine
        runtime_env={"worker_process_setup_hook": worker_setup_hook()},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[None]:
    """A temporary Prefect server (SQLite) per test module: its runs, artifacts and events only.

    Tests that run a flow or a task take it; without it Prefect would start an ephemeral server
    of its own, outside the test's control, and stop it only at interpreter exit.
    """
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
