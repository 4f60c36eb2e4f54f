"""The closed loop's own clock and what it learned: `driftloop demo` on a fresh folder.

    .venv/bin/python bench/bench_loop.py [--json]

The demo's source file never changes: the generator's concept drift reaches the retraining only
through the labelled traffic. Goals (issues #11, #12 and #18; the clock is absolute, no library
does the loop to compare against): from drifted traffic logged to the better champion answering
requests, under 90 s; the whole demo (a cold stack included) under 5 minutes on this 2-core
machine; and on 5,000 fresh rows of the new world that no model saw, the new champion within 0.01
ROC-AUC of the same network trained on the labelled traffic alone (the baseline here, in this
process, on the retraining's own rows), far ahead of v1. It prints where the time goes: the
monitor pass, the event reaching the trigger, the retraining run, Serve swapping to the champion.
Results go to bench/results/loop.json.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from common import Run, judge

DRIFTLOOP = str(Path(sys.executable).parent / "driftloop")
LOOP_GOAL_S, DEMO_GOAL_S = 90.0, 300.0
ALONE_GAP = 0.01  # ROC-AUC the new champion may trail a model of the new rows alone by


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_demo(root: Path) -> dict[str, Any]:
    """`driftloop demo --json` on its own stack (free ports), which it stops afterwards."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DRIFTLOOP_", "PREFECT_API"))}
    env |= {
        "DRIFTLOOP_STACK__PREFECT_PORT": str(free_port()),
        "DRIFTLOOP_STACK__RAY_PORT": str(free_port()),
        "DRIFTLOOP_STACK__DASHBOARD_PORT": str(free_port()),
        "DRIFTLOOP_STACK__RUNNER_PORT": str(free_port()),
        "DRIFTLOOP_SERVING__PORT": str(free_port()),
    }
    try:
        done = subprocess.run([DRIFTLOOP, "demo", "--json"], cwd=root, env=env, text=True,
                              stdout=subprocess.PIPE, check=False)  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"bench_loop: driftloop demo failed (exit {done.returncode})")
        return dict(json.loads(done.stdout))
    finally:
        subprocess.run([DRIFTLOOP, "down"], cwd=root, env=env, capture_output=True, check=False)


def trained_alone(folder: Path) -> float:
    """The same network trained on the retraining's labelled traffic alone (its training rows,
    the budget a training of that many rows gets), scored on the demo's fresh new-world rows."""
    from flows.demo import NEW_WORLD_ROWS
    from tasks import synthetic
    from tasks.budget import plan_budget
    from tasks.loop import LoopTraining
    from tasks.settings import load_settings
    from tasks.train.recency import quick_score

    settings = load_settings(folder / "driftloop.yaml")
    home = folder / settings.home  # the demo's home, relative to its folder
    (rows,) = list(home.glob(f"retraining/{settings.dataset.name}/*"))
    labelled = pa.concat_tables([pq.read_table(rows / f"{n}.parquet") for n in ("train", "select")])
    steps = plan_budget(rows=labelled.num_rows, config=LoopTraining.of(settings.training))
    alone = settings.model_copy(update={"retraining": settings.retraining.model_copy(
        update={"selection_steps": steps.total_steps})})  # fmt: skip
    fresh = synthetic.generate(rows=NEW_WORLD_ROWS, seed=505, scenario="concept_drift")
    return quick_score(labelled, np.ones(labelled.num_rows), select=fresh, settings=alone)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    run = Run("loop")
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-loop-") as folder:
        found = run_demo(Path(folder))
        alone = trained_alone(Path(folder))
    steps: dict[str, float] = found["loop_s"]
    stages = {str(s["stage"]).split(":")[0]: float(s["seconds"]) for s in found["stages"]}
    loop, total = sum(steps.values()), float(found["total_s"])
    world = found["new_world"]
    first, new = world[f"v{found['first']}"], world[f"v{found['retrained']}"]
    rows = [
        judge("drifted traffic logged -> new champion serving", value=loop, baseline=None,
              unit="s", op="<=", limit=LOOP_GOAL_S, of="value"),
        judge("driftloop demo, end to end", value=total, baseline=None, unit="s", op="<=",
              limit=DEMO_GOAL_S, of="value"),
        judge("new-world ROC-AUC: new champion vs the labelled traffic alone", value=new,
              baseline=alone, unit="", op=">=", limit=-ALONE_GAP, of="difference"),
        judge("new-world ROC-AUC: new champion vs v1", value=new, baseline=first, unit="",
              op=">=", limit=0.2, of="difference"),
    ]  # fmt: skip
    if not args.json:
        print(
            "where the loop's time goes: " + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items())
        )
        print("the demo's stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items()))
        for row in rows:
            print(row.line())
    details = {"loop_s": steps, "stages_s": stages, "promoted": found.get("promoted"),
               "new_world": world, "labelled_traffic_alone": alone}  # fmt: skip
    path = run.write(rows, details=details, echo=args.json)
    if not args.json:
        print(f"written to {path}")


if __name__ == "__main__":
    main()
