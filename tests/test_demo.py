"""`driftloop demo` as a user runs it after `make demo`: its own stack, real processes, HTTP."""

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DRIFTLOOP = str(Path(sys.executable).parent / "driftloop")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, body: dict[str, object]) -> list[dict[str, object]]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=30) as response:
        return list(json.loads(response.read()))


def test_the_demo_starts_the_stack_trains_a_champion_and_catches_a_broken_batch(
    tmp_path: Path,
) -> None:
    prefect_port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DRIFTLOOP_", "PREFECT_API", "RAY_ADDRESS", "RAY_AUTH"))
    }
    env.update(
        DRIFTLOOP_HOME=str(tmp_path / "home"),
        DRIFTLOOP_STACK__PREFECT_PORT=str(prefect_port),
        DRIFTLOOP_STACK__RAY_PORT=str(free_port()),
        DRIFTLOOP_STACK__DASHBOARD_PORT=str(free_port()),
        DRIFTLOOP_TRAINING__EPOCHS="3",
    )

    def driftloop(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DRIFTLOOP, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=500
        )

    try:
        run = driftloop("demo")
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
        assert (tmp_path / "driftloop.yaml").exists()
        assert (tmp_path / "data" / "churn.parquet").exists()
        assert f"http://127.0.0.1:{prefect_port}" in run.stdout  # the UI's address is printed
        assert "'decision': 'promoted'" in run.stdout
        assert "'champion_version': 1" in run.stdout
        assert "'production_batch_ok': False" in run.stdout  # the missing-value spike is caught
        assert "driftloop down" in run.stdout

        # The runs are in the stack's Prefect server (what the UI shows), completed
        api = f"http://127.0.0.1:{prefect_port}/api"
        flows = {f["id"]: f["name"] for f in post(f"{api}/flows/filter", {"limit": 50})}
        runs = post(f"{api}/flow_runs/filter", {"limit": 50})
        done = {flows[r["flow_id"]] for r in runs if r["state_type"] == "COMPLETED"}
        assert {"demo", "training-pipeline"} <= done

        # New source data with a missing-value spike: `driftloop train` stops at validation and
        # says why, one line per failed expectation, with no traceback
        spike = ("--scenario", "missing_spike", "--out", "data/churn.parquet", "--rows", "3000")
        assert driftloop("generate", *spike).returncode == 0
        refused = driftloop("train")
        assert refused.returncode == 1, refused.stdout[-2000:] + refused.stderr[-2000:]
        error = refused.stderr[refused.stderr.rindex("driftloop: error: ") :]
        assert error.startswith("driftloop: error: validation of churn (3,000 rows, ")
        assert "problems: missing_values" in error.splitlines()[0]
        assert "null_shares_to_be_at_most on monthly_charges: " in error
        assert "Traceback" not in refused.stderr, refused.stderr[-4000:]

        status = driftloop("status")
        assert "prefect" in status.stdout
        assert "ray" in status.stdout
    finally:
        stopped = driftloop("down")
    assert stopped.returncode == 0
    assert "stopped" in stopped.stdout
