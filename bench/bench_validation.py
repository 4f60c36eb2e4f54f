"""Benchmark: the GX validation gate vs the same checks hand-written in numpy/pyarrow.

    .venv/bin/python bench/bench_validation.py            # 1,000,000 rows x 20 columns
    .venv/bin/python bench/bench_validation.py --rows 200000 --repeats 3

Both arms run the very same suite (`build_suite` on a clean reference): the GX arm through
`validate` (arrow -> pandas conversion, the cached ephemeral context and data asset,
`Batch.validate(suite)`, the report rows), the numpy arm by interpreting the suite's configs with
pyarrow compute and numpy. Both compute target leakage with the same `leakage_score`, so the fair
ratio leaves it out of both ("without leakage"); "all checks" keeps it in. Goals (issue #3), from
medians of `--repeats` runs after one warm-up: GX / numpy <= 25x on 1M rows without leakage; the
fixed cost of validating 10,000 rows <= 100 ms (import excluded). Prints PASS or MISS per goal;
the rows go to bench/results/validation.json (`--json` prints them too).
"""

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from common import Run, judge

from tasks import data, expectations, leakage, synthetic, validation
from tasks.settings import Features, Settings

EXTRA_NUMERIC = 6  # synthetic churn has 14 columns; 6 more numeric ones make 20
RATIO_GOAL, FIXED_GOAL_MS = 25.0, 100.0


def make_table(rows: int, *, seed: int) -> pa.Table:
    table = synthetic.generate(rows=rows, seed=seed)
    rng = np.random.default_rng(seed)
    for i in range(EXTRA_NUMERIC):
        table = table.append_column(f"extra_{i}", pa.array(rng.normal(i, 1 + i, rows)))
    return table


def make_settings(table: pa.Table) -> Settings:
    dataset = synthetic.example_dataset_config()
    roles = {"customer_id", "event_time", str(dataset["target"])}
    numeric, categorical = data.infer_features(table.schema, exclude=roles)
    features = Features(numeric=numeric, categorical=categorical)
    return Settings(dataset={**dataset, "features": features.model_dump()})


# The numpy/pyarrow arm: the same configs, interpreted directly -----------------------------------


def numpy_checks(table: pa.Table, configs: list[dict[str, Any]], *, leakage: bool) -> list[bool]:
    """Run each suite config with pyarrow compute / numpy; one verdict per config."""
    return [_check(table, c) for c in configs if leakage or c["type"] != validation.LEAKAGE]


def _check(table: pa.Table, config: dict[str, Any]) -> bool:
    kind, kw = config["type"], config["kwargs"]
    if kind == validation.COLUMNS:
        return set(kw["column_set"]) <= set(table.column_names)
    if kind == validation.KINDS:
        return all(data.column_kind(table[c].type) in k for c, k in kw["kinds"].items())
    if kind == validation.NULLS:
        return all(table[c].null_count <= s * table.num_rows for c, s in kw["max_shares"].items())
    if kind == validation.RANGES:
        return all(_in_range(table[c], spec) for c, spec in kw["ranges"].items())
    if kind == validation.DOMAINS:
        return all(_in_set(table[c], spec) for c, spec in kw["value_sets"].items())
    if kind == "expect_table_row_count_to_be_between":
        return table.num_rows >= kw["min_value"]
    if kind == validation.LEAKAGE:
        target = table[kw["target"]].to_pandas()
        scores = [
            leakage.leakage_score(table[f].to_pandas(), target, task=kw["task"])[0]
            for f in kw["features"]
        ]
        return max(scores, default=0.0) < kw["threshold"]
    column = table[kw["column"]]
    if kind == validation.UNIQUE:  # pc.unique: about half the time of pc.count_distinct here
        valid = len(column) - column.null_count
        return len(pc.unique(column.drop_null())) >= kw["min_value"] * valid
    if kind == "expect_column_unique_value_count_to_be_between":
        return pc.count_distinct(column).as_py() >= kw["min_value"]
    raise ValueError(f"no numpy version of {kind}")


def _in_range(column: pa.ChunkedArray, spec: dict[str, Any]) -> bool:
    outside = pc.or_(pc.less(column, spec["min_value"]), pc.greater(column, spec["max_value"]))
    return _mostly(pc.sum(outside).as_py() or 0, len(column) - column.null_count, spec)


def _in_set(column: pa.ChunkedArray, spec: dict[str, Any]) -> bool:
    valid = len(column) - column.null_count
    inside = pc.sum(pc.is_in(column.drop_null(), pa.array(spec["value_set"]))).as_py() or 0
    return _mostly(valid - inside, valid, spec)


def _mostly(unexpected: int, valid: int, spec: dict[str, Any]) -> bool:
    return valid == 0 or 1 - unexpected / valid >= spec.get("mostly", 1.0)


def suite_without_leakage(suite: Any) -> Any:
    """The same suite minus the leakage expectation: what is not shared numpy code."""
    configs = [c for c in validation.suite_configs(suite) if c["type"] != validation.LEAKAGE]
    return expectations.load_gx().ExpectationSuite(name="no-leakage", expectations=configs)


# Timing ------------------------------------------------------------------------------------------


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first-call imports and registrations are not what we measure
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the results file's JSON")
    args = parser.parse_args()
    run = Run("validation")

    start = time.perf_counter()
    expectations.load_gx()
    import_s = time.perf_counter() - start
    print(f"GX import + registration: {import_s:.2f} s (excluded below)")

    reference = make_table(20_000, seed=0)
    settings = make_settings(reference)
    suite = validation.build_suite(reference, settings=settings)
    configs = validation.suite_configs(suite)
    no_leakage = suite_without_leakage(suite)
    print(f"suite: {len(configs)} GX expectations over {reference.num_columns} columns")

    def gx_run(table: pa.Table, *, leakage: bool = True) -> Callable[[], object]:
        chosen = suite if leakage else no_leakage

        def run() -> object:
            report = validation.validate(table, suite=chosen, settings=settings, fingerprint="-")
            assert report.success, validation.summary(report)
            return report

        return run

    def np_run(table: pa.Table, *, leakage: bool = True) -> Callable[[], object]:
        def run() -> object:
            assert all(numpy_checks(table, configs, leakage=leakage))
            return None

        return run

    big = make_table(args.rows, seed=1)
    print(f"\n{big.num_rows:,} rows x {big.num_columns} columns")
    gx_s = median_seconds(gx_run(big), args.repeats)
    gx_plain_s = median_seconds(gx_run(big, leakage=False), args.repeats)
    frame_s = median_seconds(lambda: validation.to_frame(big), args.repeats)
    np_s = median_seconds(np_run(big), args.repeats)
    np_plain_s = median_seconds(np_run(big, leakage=False), args.repeats)
    plain = judge(
        f"GX / numpy, {big.num_rows:,} rows x {big.num_columns}, without leakage",
        value=gx_plain_s,
        baseline=np_plain_s,
        unit="s",
        op="<=",
        limit=RATIO_GOAL,
    )
    print(f"arrow -> pandas for GX: {frame_s:8.3f} s   (inside the GX figures)")
    print(f"all checks:      GX {gx_s:7.3f} s   numpy {np_s:6.3f} s   ratio {gx_s / np_s:5.1f}x")
    print(
        f"without leakage: GX {gx_plain_s:7.3f} s   numpy {np_plain_s:6.3f} s   "
        f"ratio {gx_plain_s / np_plain_s:5.1f}x   goal {plain.goal}: {plain.verdict}"
    )

    small = make_table(10_000, seed=2)
    fixed_ms = 1000 * median_seconds(gx_run(small), max(args.repeats, 7))
    small_np_ms = 1000 * median_seconds(np_run(small), max(args.repeats, 7))
    fixed = judge(
        "GX fixed cost, 10,000 rows (numpy beside it)",
        value=fixed_ms,
        baseline=small_np_ms,
        unit="ms",
        op="<=",
        limit=FIXED_GOAL_MS,
        of="value",
    )
    print(
        f"\nfixed cost, 10,000 rows: GX {fixed_ms:.0f} ms   numpy {small_np_ms:.0f} ms   "
        f"goal {fixed.goal}: {fixed.verdict}"
    )
    details = {
        "rows": big.num_rows,
        "columns": big.num_columns,
        "repeats": args.repeats,
        "gx_import_s": import_s,
        "gx_all_checks_s": gx_s,
        "numpy_all_checks_s": np_s,
        "arrow_to_pandas_s": frame_s,
    }
    path = run.write([plain, fixed], details=details, echo=args.json)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
