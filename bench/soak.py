"""A chaos soak of the whole loop: predictions and labels flow while a Serve replica, a Ray Train
worker in the middle of the retraining and the deployments' runner are killed at random moments.

    .venv/bin/python bench/soak.py [--minutes 10] [--seed 0] [--json]

It builds a project in a temporary folder (`driftloop init`, `up`, `train`, `up` with two Serve
replicas), sends the generator's concept drift over HTTP for `--minutes` with every label coming
back, asks for a retraining (`driftloop monitor`) and kills, each at a seeded random moment: one
Serve replica (SIGKILL), one Ray Train worker of the retraining (SIGKILL; Ray Train restarts the
group), the runner of the deployments with its flow runs (SIGKILL to its process group; `driftloop
up` brings it back and the governor sends its request again). Then it checks, exactly: every
answered request id is in the prediction log once, every label the API accepted is stored, every
registry version verifies and the champion is one of them, and the retraining completed. It prints
the counts (`--json`: the same as JSON) and exits 1 when a check fails. tests/test_soak.py runs it
for 3 minutes; results go to bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

DRIFTLOOP = str(Path(sys.executable).parent / "driftloop")
MODEL, TARGET = "churn", "churned"
PAUSE_S = 0.1  # between a client's requests: ~200 answered rows a second from two clients
NOT_FEATURES = ("customer_id", "event_time", TARGET)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Project:
    """The soak's folder, its environment and the `driftloop` commands it runs."""

    root: Path
    env: dict[str, str]
    log: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    def run(self, *args: str, check: bool = True, timeout_s: float = 600) -> str:
        with self.log.open("a") as out:
            out.write(f"\n$ driftloop {' '.join(args)}\n")
            done = subprocess.run([DRIFTLOOP, *args], cwd=self.root, env=self.env, text=True,
                                  stdout=subprocess.PIPE, stderr=out, timeout=timeout_s,
                                  check=False)  # fmt: skip
            out.write(done.stdout)
        if check and done.returncode != 0:
            raise SystemExit(f"soak: driftloop {args[0]} failed (exit {done.returncode}); "
                             f"see {self.log}")  # fmt: skip
        return done.stdout

    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['DRIFTLOOP_SERVING__PORT']}"


def project(root: Path) -> Project:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DRIFTLOOP_", "PREFECT_API"))}
    env |= {
        "DRIFTLOOP_HOME": str(root / "home"),
        "DRIFTLOOP_SERVING__PORT": str(free_port()),
        "DRIFTLOOP_SERVING__REPLICAS": "2",
        "DRIFTLOOP_SERVING__LOG_FLUSH_SECONDS": "5",
        "DRIFTLOOP_STACK__PREFECT_PORT": str(free_port()),
        "DRIFTLOOP_STACK__RAY_PORT": str(free_port()),
        "DRIFTLOOP_STACK__DASHBOARD_PORT": str(free_port()),
        "DRIFTLOOP_STACK__RUNNER_PORT": str(free_port()),
        "DRIFTLOOP_TRAINING__EPOCHS": "3",
        "DRIFTLOOP_TRAINING__MIN_STEPS": "300",
        "DRIFTLOOP_TRAINING__MAX_FAILURES": "2",
        "DRIFTLOOP_MONITORING__WINDOWS_NEEDED": "1",
        "DRIFTLOOP_MONITORING__WINDOWS_CONSIDERED": "1",
        "DRIFTLOOP_MONITORING__MIN_ROWS": "500",
        "DRIFTLOOP_MONITORING__COOLDOWN_HOURS": "0.01",
    }
    return Project(root=root, env=env, log=root / "soak.log")


# Traffic: every answer and every accepted label, remembered -----------------------------------


@dataclass
class Traffic:
    answered: list[str] = field(default_factory=list)
    accepted: set[str] = field(default_factory=set)  # ids whose label the API took
    failed: int = 0  # requests that got no answer (a killed replica, a restart): not answered
    lock: threading.Lock = field(default_factory=threading.Lock)


def send(user: Project, traffic: Traffic, stop: threading.Event, *, seed: int) -> None:
    """One client: 20 records a request, and the labels of its answers every few requests."""
    from tasks import synthetic

    batch = synthetic.generate(rows=2_000, seed=seed, scenario="concept_drift")
    labels = batch[TARGET].to_pylist()
    records = batch.drop_columns(list(NOT_FEATURES)).to_pylist()
    owed: list[dict[str, Any]] = []
    with httpx.Client(base_url=user.url(), timeout=30) as http:
        for i in range(10**9):
            if stop.wait(PAUSE_S):
                return
            start = (20 * i) % len(records)
            try:
                answer = http.post("/predict", json={"records": records[start : start + 20]})
            except httpx.HTTPError:
                answer = None
            if answer is None or answer.status_code != 200:
                with traffic.lock:
                    traffic.failed += 1
                time.sleep(0.2)
                continue
            ids = [p["request_id"] for p in answer.json()["predictions"]]
            with traffic.lock:
                traffic.answered += ids
            owed += [{"request_id": r, "label": labels[(start + k) % len(labels)]}
                     for k, r in enumerate(ids)]  # fmt: skip
            if len(owed) >= 100:
                with contextlib.suppress(httpx.HTTPError):
                    given = http.post("/feedback", json={"labels": owed})
                    if given.status_code == 200:
                        unknown = set(given.json()["unknown"])
                        with traffic.lock:
                            traffic.accepted |= {o["request_id"] for o in owed} - unknown
                owed = []


# Chaos ----------------------------------------------------------------------------------------


def family(home: Path) -> dict[int, str]:
    """Every process of the stack (and its descendants) with its command line."""
    import psutil

    state = json.loads((home / "run" / "stack.json").read_text())
    found: dict[int, str] = {}
    for service in state["services"].values():
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(service["pid"])
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    found[proc.pid] = " ".join(proc.cmdline())
    return found


def kill_one(home: Path, marker: str, *, rng: random.Random) -> int | None:
    """SIGKILL one process of the stack whose command line holds `marker`; its pid."""
    pids = sorted(pid for pid, cmd in family(home).items() if marker in cmd)
    if not pids:
        return None
    pid = rng.choice(pids)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return pid


def kill_runner(user: Project) -> int:
    """SIGKILL the deployments' runner and its flow runs (its process group), then `up`."""
    state = json.loads((user.home / "run" / "stack.json").read_text())
    pid = int(state["services"]["deployments"]["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    time.sleep(1.0)
    user.run("up")
    return pid


def retraining_done(home: Path) -> dict[str, Any] | None:
    """The retraining's outcome, once a request of the governor's ended with a version
    (promoted or rejected by the gate: the loop went round)."""
    from tasks.monitor import load_state

    for request in reversed(load_state(home=str(home), model=MODEL).requests):
        if request.get("status") in ("promoted", "rejected"):
            return dict(request)
    return None


def chaos(
    user: Project, minutes: float, *, rng: random.Random, started: float
) -> list[dict[str, Any]]:
    """The kills, at seeded moments of the soak: a Serve replica whenever it comes; the
    retraining asked for early, one of its Ray Train workers killed as soon as it trains; the
    runner later (which may strike the retraining again: the governor sends it once more)."""
    seconds = 60 * minutes
    kills: list[dict[str, Any]] = []

    def record(what: str, pid: int | None) -> None:
        kills.append({"what": what, "at_s": round(time.monotonic() - started, 1), "pid": pid})

    def until(moment: float) -> None:
        time.sleep(max(0.0, started + moment - time.monotonic()))

    replica = threading.Timer(
        max(0.0, started + rng.uniform(0.1, 0.6) * seconds - time.monotonic()),
        lambda: record("serve replica", kill_one(user.home, "ServeReplica", rng=rng)),
    )
    replica.start()
    until(0.1 * seconds)
    user.run("monitor", check=False)  # the drift is there: a retraining is asked for
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        pid = kill_one(user.home, "RayTrainWorker", rng=rng)
        if pid is not None:
            record("ray train worker", pid)
            break
        time.sleep(0.5)
    until(max(rng.uniform(0.5, 0.9) * seconds, kills[-1]["at_s"] + 5 if kills else 0))
    record("deployments runner", kill_runner(user))
    replica.join()
    return kills


# The checks -----------------------------------------------------------------------------------


def verify(user: Project, traffic: Traffic) -> dict[str, Any]:
    """Exact: the answered ids in the log once each, the accepted labels stored, the registry
    whole, the retraining ended."""
    from tasks import registry
    from tasks import traffic as log

    home = str(user.home)
    log.convert_closed(home=home, model=MODEL)  # what a killed replica left, adopted
    logged = log.read(home=home, model=MODEL, kind="predictions", columns=["request_id"])
    ids = [] if logged is None else logged["request_id"].to_pylist()
    labels = log.read(home=home, model=MODEL, kind="feedback", columns=["request_id"])
    stored = set() if labels is None else set(labels["request_id"].to_pylist())
    problems = []
    for version in registry.list_versions(root=home, model=MODEL):
        try:
            registry.check_version(root=home, model=MODEL, version=version)
        except Exception as exc:
            problems.append(f"v{version}: {exc}")
    champion = registry.champion(root=home, model=MODEL)
    if champion is None or champion.version not in registry.list_versions(root=home, model=MODEL):
        problems.append(f"the champion alias points at no version: {champion}")
    answered = set(traffic.answered)
    missing = sorted(answered - set(ids))
    return {
        "answered": len(traffic.answered),
        "failed_requests": traffic.failed,
        "logged": len(ids),
        "missing": missing[:10],
        "missing_count": len(missing),
        "duplicates": len(ids) - len(set(ids)),
        "labels_accepted": len(traffic.accepted),
        "labels_missing": len(traffic.accepted - stored),
        "registry_problems": problems,
        "versions": registry.list_versions(root=home, model=MODEL),
        "champion": champion.version if champion else None,
        "retraining": retraining_done(user.home),
    }


def soak(minutes: float, *, seed: int, root: Path) -> dict[str, Any]:
    rng = random.Random(seed)
    user = project(root)
    user.run("init", "--rows", "4000")
    user.run("up")
    user.run("train")
    user.run("up")  # serves the champion
    traffic, stop = Traffic(), threading.Event()
    clients = [threading.Thread(target=send, args=(user, traffic, stop), kwargs={"seed": 10 + k},
                                daemon=True) for k in range(2)]  # fmt: skip
    started = time.monotonic()
    for client in clients:
        client.start()
    try:
        kills = chaos(user, minutes, rng=rng, started=started)
        time.sleep(max(0.0, started + 60 * minutes - time.monotonic()))
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=60)
    deadline = time.monotonic() + 600  # the retraining completes, the governor re-sending it
    while retraining_done(user.home) is None and time.monotonic() < deadline:
        user.run("up", check=False)
        user.run("monitor", check=False)
        time.sleep(10)
    user.run("down", check=False)
    found = verify(user, traffic)
    found |= {"minutes": minutes, "seed": seed, "kills": kills}
    found["passed"] = (
        found["missing_count"] == 0 and found["duplicates"] == 0 and found["labels_missing"] == 0
        and not found["registry_problems"] and found["retraining"] is not None
        and {k["what"] for k in kills} == {"serve replica", "ray train worker",
                                           "deployments runner"}
    )  # fmt: skip
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long traffic flows")
    parser.add_argument("--seed", type=int, default=0, help="the moments of the kills")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="driftloop-soak-") as folder:
        try:
            found = soak(args.minutes, seed=args.seed, root=Path(folder))
        finally:
            subprocess.run([DRIFTLOOP, "down", "--force"], cwd=folder, env=project(Path(folder))
                           .env, capture_output=True, check=False)  # fmt: skip
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / "soak.json").write_text(json.dumps(found, indent=1, default=str))
    if args.json:
        print(json.dumps(found, indent=1, default=str))
    else:
        for key in ("answered", "failed_requests", "logged", "missing_count", "duplicates",
                    "labels_accepted", "labels_missing", "registry_problems", "versions",
                    "champion", "retraining", "kills"):  # fmt: skip
            print(f"{key}: {found[key]}")
        print("PASS" if found["passed"] else "FAIL")
    sys.exit(0 if found["passed"] else 1)


if __name__ == "__main__":
    main()
