"""The closed loop as a user runs it, on a real local stack, through the `driftloop` command:
`up` (Prefect server, Ray, Serve, the deployments' runner), `train`, traffic and feedback labels
over HTTP, `monitor`; then the trigger starts the retraining by itself, the new champion (or the
old one, with the rejection recorded) is what Serve answers with, and after a restart of the
whole stack a second pass inside the cooldown starts no second retraining."""

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from helpers import (
    TERMINAL,
    UPSTREAM_WILDCARDS,
    InBackground,
    api,
    free_port,
    on_loopback,
    runs_of,
    stack_listeners,
    wait_for,
)

from tasks import registry
from tasks.monitor import load_state

pytestmark = pytest.mark.integration
DRIFTLOOP = str(Path(sys.executable).parent / "driftloop")
MODEL, TARGET = "churn", "churned"
NOT_FEATURES = ("customer_id", "event_time", TARGET)


class Listeners(InBackground):
    """What the stack listens on, sampled every half second while the block runs."""

    def __init__(self, home: Path) -> None:
        super().__init__()
        self.home, self.seen = home, set[tuple[str, str, int]]()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            with contextlib.suppress(Exception):  # a process that ends between two looks
                self.seen |= stack_listeners(self.home)


def refuses_without_token(port: int) -> bool:
    """Whether the replica's gRPC server at `port` turns away a call without Ray's token."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/ray.serve.ASGIService/HandleRequest")
        try:
            call(b"", timeout=10)
        except grpc.RpcError as exc:
            return bool(exc.code() == grpc.StatusCode.UNAUTHENTICATED)
    return False


class User:
    """A project folder made by `driftloop init`, and the commands its user types."""

    def __init__(self, root: Path) -> None:
        self.root, self.home = root, root / "home"
        self.serve_port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_")}
        self.env |= {
            "DRIFTLOOP_HOME": str(self.home),
            "DRIFTLOOP_SERVING__PORT": str(self.serve_port),
            "DRIFTLOOP_STACK__PREFECT_PORT": str(free_port()),
            "DRIFTLOOP_STACK__RAY_PORT": str(free_port()),
            "DRIFTLOOP_STACK__DASHBOARD_PORT": str(free_port()),
            "DRIFTLOOP_STACK__RUNNER_PORT": str(free_port()),
            "DRIFTLOOP_TRAINING__EPOCHS": "4",
            # one window decides here (M of N and the minimum rows have tests of their own)
            "DRIFTLOOP_MONITORING__WINDOWS_NEEDED": "1",
            "DRIFTLOOP_MONITORING__WINDOWS_CONSIDERED": "1",
            "DRIFTLOOP_MONITORING__MIN_ROWS": "500",
        }

    def run(self, *args: str, timeout_s: float = 420) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [DRIFTLOOP, *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        assert done.returncode == 0, f"driftloop {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done

    def json(self, *args: str) -> dict[str, Any]:
        return dict(json.loads(self.run(*args, "--json").stdout))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.serve_port}"

    def send(self, scenario: str, *, rows: int, seed: int) -> tuple[int, int]:
        """A batch of the scenario over HTTP, then every label as feedback; (answered, failed)."""
        out = self.root / "data" / f"{scenario}.parquet"
        self.run("generate", "--scenario", scenario, "--rows", str(rows), "--seed", str(seed),
                 "--out", str(out))  # fmt: skip
        table = pq.read_table(out)
        labels = table[TARGET].to_pylist()
        features = table.drop_columns(list(NOT_FEATURES)).to_pylist()
        answered, failed = [], 0
        with httpx.Client(base_url=self.url, timeout=60) as client:
            for start in range(0, rows, 250):
                reply = client.post("/predict", json={"records": features[start : start + 250]})
                failed += reply.status_code != 200
                if reply.status_code == 200:
                    answered += [p["request_id"] for p in reply.json()["predictions"]]
            given = [{"request_id": r, "label": y} for r, y in zip(answered, labels, strict=False)]
            for start in range(0, len(given), 500):
                reply = client.post("/feedback", json={"labels": given[start : start + 500]})
                failed += reply.status_code != 200
        return len(answered), failed

    def served_version(self) -> int:
        return int(httpx.get(f"{self.url}/model", timeout=30).json()["version"])


def test_drift_with_labels_retrains_by_itself_and_a_restart_inside_the_cooldown_does_not_again(
    tmp_path: Path,
) -> None:
    user = User(tmp_path)
    user.run("init", "--rows", "4000")
    try:
        started = user.json("up")
        assert started["deployments"]["running"], started
        url = started["prefect_api_url"]
        retraining = wait_for(
            "the retraining deployment",
            lambda: api(url, "/deployments/name/retraining/retraining"),
            timeout_s=60,
        )
        with Listeners(user.home) as during_training:
            user.run("train")
        first = registry.champion(root=str(user.home), model=MODEL)
        assert first is not None, "the first model did not pass the gate"
        user.run("up")  # serves the champion now that there is one
        assert user.served_version() == first.version
        # every socket of the stack, in a training and with Serve up, is on loopback, but the
        # two upstream code opens on every interface; the replica's refuses a call without
        # Ray's token
        listening = during_training.seen | stack_listeners(user.home)
        opened = {(who, ip, port) for who, ip, port in listening if not on_loopback(ip)}
        assert all(any(k in who for k in UPSTREAM_WILDCARDS) for who, _, _ in opened), opened
        assert any(ip == "127.0.0.1" for _, ip, _ in listening)
        replica = sorted(port for who, _, port in opened if "ServeReplica" in who)
        assert replica, listening  # Serve 2.60's replica gRPC server on [::]: still there
        assert refuses_without_token(replica[0])

        # Concept drift: inputs as before, labels from a changed P(y|x); all labels come back
        answered, failed = user.send("concept_drift", rows=3000, seed=11)
        assert (answered, failed) == (3000, 0)
        # every answer is in the prediction log (a replica's spool segment) before it leaves
        found = user.json("monitor")
        assert set(found) >= {"drift", "drifted_features", "quality", "decision", "reason"}
        assert found["quality"]["source"] == "measured", found["quality"]
        assert found["quality"]["decayed"], found["quality"]
        assert found["decision"] == "retrain", found["reason"]
        request_id = found["governor"]["request_id"]

        # the event alone starts the retraining; it completes, and Serve answers with the champion
        (run,) = wait_for(
            "the retraining run the trigger creates",
            lambda: [r for r in runs_of(url, retraining["id"]) if r["state_type"] in TERMINAL],
            timeout_s=600,
            every_s=3,
        )
        assert run["created_by"]["type"] == "AUTOMATION"
        assert run["state_type"] == "COMPLETED", run["state_name"]
        assert run["parameters"]["request_id"] == request_id
        latest = registry.list_versions(root=str(user.home), model=MODEL)[-1]
        meta = registry.get_version(root=str(user.home), model=MODEL, version=latest)
        assert meta["trigger"]["request_id"] == request_id  # the chain back to the drift report
        assert meta["trigger"]["drift_report"] == found["report"]
        champion = registry.champion(root=str(user.home), model=MODEL)
        assert champion is not None
        if champion.version == latest:
            assert meta["gate"]["passed"]
        else:  # rejected: the old champion stays, and the rejection is recorded
            assert (champion.version, meta["gate"]["passed"]) == (first.version, False)
        assert user.served_version() == champion.version

        # a restart of everything inside the cooldown: the governor remembers its request
        user.run("down")
        user.run("up")
        user.send("concept_drift", rows=1000, seed=12)
        again = user.json("monitor")
        assert again["decision"] == "hold", again["reason"]
        if again["governor"]["signal"]:  # the same decay judged again: held by the cooldown
            assert "cooldown" in again["reason"] or again["needs_attention"], again["reason"]
        time.sleep(10)  # a second request would have started a run by now
        assert len(runs_of(url, retraining["id"])) == 1
        assert len(load_state(home=str(user.home), model=MODEL).requests) == 1
    finally:
        stopped = user.run("down").stdout
    assert "deployments" in stopped
