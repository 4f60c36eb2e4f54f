"""Time the synthetic generator: 1,000,000 rows generated, then written as Parquet.

    .venv/bin/python bench/bench_synthetic.py [--rows 1000000] [--scenario clean] [--repeat 3]

Baseline, in the same run: drawing as many raw float64 uniforms as the table has cells, the
floor for any vectorised generator. Goal (issue #2, "1,000,000 rows in a few seconds", read as
5 s): generating 1M rows <= 5 s, scaled to `--rows`. Results (medians) print and go
to bench/results/synthetic.json.
"""

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import Run, judge

from tasks.synthetic import SCENARIOS, generate, write_parquet

GOAL_S_PER_MILLION = 5.0  # "a few seconds" for 1,000,000 rows (issue #2)


def _median_seconds(action: Callable[[], object], repeat: int) -> float:
    """Median wall time of `repeat` runs (the first run is a warm-up and not counted)."""
    action()
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        action()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--scenario", choices=SCENARIOS, default="clean")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    run = Run("synthetic")

    table = generate(rows=args.rows, seed=0, scenario=args.scenario)
    cells = table.num_rows * table.num_columns
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "churn.parquet"
        results = {
            "rows": args.rows,
            "scenario": args.scenario,
            "generate_s": _median_seconds(
                lambda: generate(rows=args.rows, seed=1, scenario=args.scenario), args.repeat
            ),
            "write_parquet_s": _median_seconds(lambda: write_parquet(table, path), args.repeat),
            "baseline_uniforms_s": _median_seconds(
                lambda: np.random.default_rng(0).random(cells), args.repeat
            ),
            "parquet_mb": round(path.stat().st_size / 1e6, 1),
        }
    total = results["generate_s"] + results["write_parquet_s"]
    results |= {
        "rows_per_s": round(args.rows / total),
        "generate_rows_per_s": round(args.rows / results["generate_s"]),
        "generate_vs_baseline": round(results["generate_s"] / results["baseline_uniforms_s"], 1),
    }
    print(json.dumps(results, indent=2))
    row = judge(
        f"{args.rows:,} rows ({args.scenario}) generated, vs as many raw uniforms as cells",
        value=results["generate_s"],
        baseline=results["baseline_uniforms_s"],
        unit="s",
        op="<=",
        limit=GOAL_S_PER_MILLION * args.rows / 1e6,
        of="value",
    )
    print(row.line())
    print(f"written to {run.write([row], details=results)}")


if __name__ == "__main__":
    main()
