"""The closed loop's own clock: `driftloop demo` on a fresh folder, timed stage by stage.

    .venv/bin/python bench/bench_loop.py [--json]

Goals (issues #11 and #12, absolute: no library does the loop to compare against): from drifted
traffic logged to the new champion answering requests, under 3 minutes; the whole demo (a cold
stack included) under 5 minutes on this 2-core machine. It prints where the time goes: the
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

from common import Run, judge

DRIFTLOOP = str(Path(sys.executable).parent / "driftloop")
LOOP_GOAL_S, DEMO_GOAL_S = 180.0, 300.0


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    run = Run("loop")
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-loop-") as folder:
        found = run_demo(Path(folder))
    steps: dict[str, float] = found["loop_s"]
    stages = {str(s["stage"]).split(":")[0]: float(s["seconds"]) for s in found["stages"]}
    loop, total = sum(steps.values()), float(found["total_s"])
    rows = [
        judge("drifted traffic logged -> new champion serving", value=loop, baseline=None,
              unit="s", op="<=", limit=LOOP_GOAL_S, of="value"),
        judge("driftloop demo, end to end", value=total, baseline=None, unit="s", op="<=",
              limit=DEMO_GOAL_S, of="value"),
    ]  # fmt: skip
    if not args.json:
        print(
            "where the loop's time goes: " + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items())
        )
        print("the demo's stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items()))
        for row in rows:
            print(row.line())
    details = {"loop_s": steps, "stages_s": stages, "promoted": found.get("promoted")}
    path = run.write(rows, details=details, echo=args.json)
    if not args.json:
        print(f"written to {path}")


if __name__ == "__main__":
    main()
