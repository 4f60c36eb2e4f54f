"""Shared fixtures: real services start once per session, never per test.

The suite isolates itself from the shell it runs in: `pytest_configure` removes the caller's
driftloop settings and service addresses (`DRIFTLOOP_*`, `PREFECT_API_URL`, `PREFECT_HOME`,
`RAY_ADDRESS`...) before any test module is imported, and gives Prefect a scratch home, so no
test (nor the notebook's kernel, nor a subprocess, which inherit this environment) reaches a
user's server, cluster, profile or registry. `_isolated_environment` checks it stays so.
"""

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator

import pytest

# What a caller's shell may carry that would point a test at something outside the suite
LEAKS = ("DRIFTLOOP_", "PREFECT_API_", "PREFECT_HOME", "PREFECT_PROFILE", "RAY_ADDRESS")
LEAK_NAMES = ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")
_SCRATCH: list[str] = []  # folders made for the session, removed at its end


def pytest_configure(config: pytest.Config) -> None:
    for name in [n for n in os.environ if n.startswith(LEAKS) or n in LEAK_NAMES]:
        del os.environ[name]
    # Prefect's home (profiles, its SQLite) in a scratch folder: a user's ~/.prefect profile
    # with a PREFECT_API_URL would otherwise still reach the tests
    scratch = tempfile.mkdtemp(prefix="driftloop-tests-")
    _SCRATCH.append(scratch)
    os.environ["PREFECT_HOME"] = os.path.join(scratch, "prefect")
    # Keep outside endpoints out of tests: no analytics from GX or Prefect (no internet here).
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    # On Linux Ray swaps 127.0.0.1 for the host's address and listens on every interface; this
    # keeps the suite's Ray on loopback (tests/test_stack.py checks the same for `driftloop up`).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


# Fixtures that start a real service; a test that takes one (even through another fixture) is
# `integration`, and `pytest -m "not integration"` runs the pure tests alone.
SERVICE_FIXTURES = frozenset({"ray_local", "prefect_server", "s3_endpoint", "running", "serve_app"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [
        item.nodeid
        for item in items
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("integration") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests start real services but lack @pytest.mark.integration: "
            + ", ".join(unmarked)
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    for folder in _SCRATCH:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def _isolated_environment() -> Iterator[None]:
    """Each test starts without the caller's settings, and a test that sets one (rather than
    using monkeypatch) cannot hand it to the next test."""
    before = dict(os.environ)
    for name in [n for n in os.environ if n.startswith("DRIFTLOOP_")]:
        del os.environ[name]
    yield
    leaked = [n for n in os.environ if n.startswith("DRIFTLOOP_") and n not in before]
    for name in leaked:
        del os.environ[name]


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

    from tasks.cluster import worker_setup_hook

    temp_dir = tempfile.mkdtemp(prefix="dl-ray-")  # short: Ray's socket paths must fit 107 bytes
    ray.init(
        address="local",
        _temp_dir=temp_dir,  # the suite's own session files and logs, not /tmp/ray's
        num_cpus=4,  # 2 one-CPU training workers and room to spare (the Train controller takes 0)
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        log_to_driver=False,
        # Points Train's placement-group cleaner at this cluster when others run on the machine
        runtime_env={"worker_process_setup_hook": worker_setup_hook()},
    )
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[None]:
    """A temporary Prefect server (SQLite) per test module: its runs, artifacts and events only.

    Tests that run a flow or a task take it; without it Prefect would start an ephemeral server
    of its own, outside the test's control, and stop it only at interpreter exit.
    """
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
