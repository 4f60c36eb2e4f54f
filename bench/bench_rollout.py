"""Benchmarks of safe rollout: what a canary and a shadow cost a replica, and how many labelled
rows the judgement needs, ratios from one run.

    flock /tmp/driftloop-heavy.lock .venv/bin/python bench/bench_rollout.py   # ~3 minutes

Goals (issue #20), over HTTP on 127.0.0.1 with bench_serve's client, the same FastAPI app on
plain uvicorn serving a champion alone (direct), with a canary beside it (10% of requests), and
with a shadow scoring a copy of each request: canary >= 0.9x and shadow >= 0.8x the req/s of
direct at 32 clients; shadow's median at 1 client within +0.5 ms of direct. The arms are
measured in turns, `--reps` rounds, medians. Reported beside them: the rows the judgement
(tasks/monitor/canary.py at the default `rollout:` settings) needs to roll back a model trained
on shuffled labels and to promote a better one, on simulated labelled traffic (a champion whose
probabilities follow the label with a fixed skill), seeds 0-4, medians. Writes
bench/results/rollout.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_serve import MODEL, body, free_port, load, make_home, wait_ready
from common import Row, Run, judge

from tasks import registry, traffic
from tasks.model import ModelSpec, TabularMLP, load_model, save_model
from tasks.monitor.canary import judge as judge_rollout
from tasks.monitor.canary import milestones
from tasks.monitor.evidence import Evidence
from tasks.settings import RolloutConfig, ServingConfig, TrainingConfig

ARMS = ("direct", "canary", "shadow")


def add_candidate(home: str) -> int:
    """A second version beside the champion (the same architecture, other weights)."""
    predictor = load_model(registry.find(root=home, model=MODEL, ref=1).location)
    spec = ModelSpec.build(predictor.preprocessor, TrainingConfig())
    torch.manual_seed(1)
    saved = save_model(Path(home) / "m2", model=TabularMLP(spec), spec=spec,
                       preprocessor=predictor.preprocessor)  # fmt: skip
    return registry.register(root=home, model=MODEL, model_dir=str(saved), metadata={})


def plain_server(home: str, port: int, mode: str) -> None:
    """`--plain`: the app on uvicorn, serving v1 alone or with v2 as a canary or a shadow."""
    import uvicorn

    from tasks.serve import Service, make_api
    from tasks.serve.routing import Plan

    torch.set_num_threads(1)  # as a 1-CPU replica
    service = Service(home=home, model=MODEL, serving=ServingConfig())
    plan = Plan.of({"version": 1, **({} if mode == "direct" else {"candidate": 2, "mode": mode,
                                                                  "share": 0.1})})  # fmt: skip
    service.load(1, plan=plan)
    uvicorn.run(make_api(service), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)  # fmt: skip


def serving(home: str, *, reps: int, seconds: float) -> dict[str, Any]:
    servers = {}
    for arm in ARMS:
        port = free_port()
        command = [sys.executable, __file__, "--plain", home, str(port), arm]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        servers[arm] = (process, f"http://127.0.0.1:{port}")
    try:
        for _, url in servers.values():
            wait_ready(url)
        one = body(1, seed=3)
        runs: dict[str, dict[str, list[dict[str, float]]]] = {
            a: {"c32": [], "c1": []} for a in ARMS
        }
        for _ in range(reps):
            for arm, (_, url) in servers.items():
                runs[arm]["c32"].append(load(f"{url}/predict", one, clients=32, seconds=seconds))
                runs[arm]["c1"].append(load(f"{url}/predict", one, clients=1, seconds=seconds))
        import httpx

        health = httpx.get(f"{servers['shadow'][1]}/healthz", timeout=10).json()
        shadowed = health["rollout"]["shadow"]  # every copy scored, or dropped and counted
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)
    out: dict[str, Any] = {arm: {k: _medians(rs) for k, rs in kinds.items()}
                           for arm, kinds in runs.items()}  # fmt: skip
    out["shadow_copies"] = shadowed
    return out


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {m: statistics.median(r[m] for r in runs) for m in runs[0]}


# The judgement's appetite for rows ----------------------------------------------------------------

START = datetime(2026, 12, 1, tzinfo=timezone.utc)


def simulated(n: int, *, version: int, skill: float, seed: int) -> pa.Table:
    """`n` labelled rows of a binary model whose probabilities follow the label with `skill`."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = 1 / (1 + np.exp(-(skill * 4 * (y - 0.5) + rng.normal(0, 1, n))))
    return pa.table({
        traffic.REQUEST_ID: [f"{version}-{seed}-{i}" for i in range(n)],
        traffic.PREDICTED_AT: pa.array([START + timedelta(seconds=i) for i in range(n)],
                                       pa.timestamp("us", tz="UTC")),
        traffic.MODEL_VERSION: np.full(n, version, np.int64),
        traffic.LATENCY_MS: np.full(n, 1.0),
        traffic.PREDICTION: (p > 0.5).astype(np.int64),
        f"{traffic.PROBABILITY}0": 1 - p, f"{traffic.PROBABILITY}1": p, "y": y,
    })  # fmt: skip


def rows_needed(*, skill: float, seed: int, config: RolloutConfig) -> tuple[int | None, str]:
    """The labelled rows of the candidate at which the judgement ended, and how."""
    champion = simulated(config.max_rows * 10, version=1, skill=1.0, seed=100 + seed)
    candidate = simulated(config.max_rows, version=2, skill=skill, seed=seed)
    for m in milestones(config):
        found = Evidence(mode="canary", champion=champion, candidate=candidate.slice(0, m),
                         failures=0, started=START, target="y", classes=["0", "1"])  # fmt: skip
        verdict = judge_rollout(found, config=config, metric_name="roc_auc", champion=1,
                                candidate=2, now=START + timedelta(minutes=1))  # fmt: skip
        if verdict.decision != "continue":
            return m, verdict.decision
    return None, "undecided"


def appetite() -> dict[str, Any]:
    config = RolloutConfig()
    out: dict[str, Any] = {}
    for name, skill in (("shuffled labels", 0.0), ("better", 1.3)):
        found = [rows_needed(skill=skill, seed=s, config=config) for s in range(5)]
        out[name] = {"rows": [r for r, _ in found], "decisions": [d for _, d in found]}
    out["share"] = config.share
    return out


def goal_rows(out: dict[str, Any]) -> list[Row]:
    d, c, s = (out["serving"][a] for a in ARMS)
    return [
        judge("canary / direct req/s, 1 record, 32 clients", value=c["c32"]["requests_per_s"],
              baseline=d["c32"]["requests_per_s"], unit="req/s", op=">=", limit=0.9),
        judge("shadow / direct req/s, 1 record, 32 clients", value=s["c32"]["requests_per_s"],
              baseline=d["c32"]["requests_per_s"], unit="req/s", op=">=", limit=0.8),
        judge("median latency at 1 client, shadow vs direct", value=s["c1"]["p50_ms"],
              baseline=d["c1"]["p50_ms"], unit="ms", op="<=", limit=0.5, of="difference"),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--reps", type=int, default=3, help="rounds over every arm")
    parser.add_argument("--json", action="store_true", help="print the results file's JSON")
    parser.add_argument(
        "--plain", nargs=3, metavar=("HOME", "PORT", "MODE"), help=argparse.SUPPRESS
    )
    options = parser.parse_args()
    if options.plain:
        plain_server(options.plain[0], int(options.plain[1]), options.plain[2])
        return
    started = Run("rollout")
    home = make_home()
    add_candidate(home)
    out: dict[str, Any] = {"serving": serving(home, reps=options.reps, seconds=options.seconds)}
    out["appetite"] = appetite()
    rows = goal_rows(out)
    for name, found in out["appetite"].items():
        if isinstance(found, dict):
            known = [r for r in found["rows"] if r is not None]
            out.setdefault("reported", {})[f"labelled rows to decide, {name} (median of 5)"] = (
                statistics.median(known) if known else float("nan")
            )
    path = started.write(rows, details=out, echo=options.json)
    print(f"shadow copies: {out['serving']['shadow_copies']}")
    for arm in ARMS:
        for key, m in out["serving"][arm].items():
            print(f"{arm:8s} {key:4s} {m['requests_per_s']:8.1f} req/s  p50 {m['p50_ms']:7.2f} ms"
                  f"  p99 {m['p99_ms']:7.2f} ms  errors {m['errors']}")  # fmt: skip
    for name, found in out["appetite"].items():
        if isinstance(found, dict):
            print(f"judgement, {name}: labelled rows {found['rows']}, {found['decisions']}")
    for row in rows:
        print(row.line())
    for what, figure in out.get("reported", {}).items():
        print(f"REPORT  {what}: {figure:.3g}")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
