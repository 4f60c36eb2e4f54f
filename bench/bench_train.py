"""Benchmarks of training on Ray Train against plain PyTorch and pyarrow, ratios from one run.

    .venv/bin/python bench/bench_train.py            # about 6-8 minutes on 2 cores
    .venv/bin/python bench/bench_train.py --only devices   # use_gpu=auto where a GPU is

Goals (issue #4): the Ray Train loop within 1.15x of the same plain PyTorch loop with the same
threads; a 1-step `fit()` within 8 s of fixed cost; ingest at >= 0.5x of reading the same Parquet
with pyarrow straight into tensors; 2-worker scaling efficiency and peak memory per process for
1,000,000 rows x 20 features, reported. The last lines say PASS or MISS per goal. Timings are
medians; Ray epochs are timed inside the worker (train, validate, checkpoint, report), like the
plain loop's. Every section but `devices` pins `use_gpu=False`, so a GPU machine compares CPU
with CPU; settings the machine cannot hold fail at once (`place_workers`), never hang. The
goals' rows and the whole report go to bench/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Judged, Op, Row, Run, judge

from tasks.cluster import connect_ray
from tasks.model import ModelSpec, Preprocessor, TabularMLP, save_model
from tasks.settings import DatasetConfig, Features, Settings, TrainingConfig
from tasks.synthetic import CATEGORICAL_FEATURES, NUMERIC_FEATURES, generate
from tasks.train import (
    evaluate,
    read_shard,
    run_epoch,
    train_model,
    write_encoded,
)

NOISE = [f"noise_{i}" for i in range(9)]  # 7 + 4 synthetic features + 9 = 20 features


# Data and settings -------------------------------------------------------------------------------


def churn(rows: int, *, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """Synthetic churn with 20 features, cut 85/15 into train and validation (no shuffle needed)."""
    table = generate(rows=rows, seed=seed)
    rng = np.random.default_rng(seed)
    for name in NOISE:
        table = table.append_column(name, pa.array(rng.normal(size=rows)))
    cut = int(rows * 0.85)
    return table.slice(0, cut), table.slice(cut)


def settings(home: Path, **training: Any) -> Settings:
    """Bench settings: CPU workers unless a section asks for `use_gpu` itself."""
    features = Features(numeric=[*NUMERIC_FEATURES, *NOISE], categorical=list(CATEGORICAL_FEATURES))
    return Settings(
        home=str(home),
        dataset=DatasetConfig(name="bench", source="unused", target="churned", features=features),
        training=TrainingConfig(**{"early_stopping_patience": 100, "use_gpu": False, **training}),
    )


def timed_fit(**kwargs: Any) -> tuple[float, list[float]]:
    """Wall time of `train_model`, and each epoch after the first as rank 0 timed it in the
    worker: not when the driver noticed it, which polling blurs by up to 0.25 s."""
    started = time.perf_counter()
    result = train_model(**kwargs)
    return time.perf_counter() - started, result.epoch_seconds[1:]


# 1. Loop speed: Ray Train vs the same loop in plain PyTorch -------------------------------------


def plain_epochs(
    train_path: str, val_path: str, *, pre: Preprocessor, cfg: TrainingConfig
) -> list[float]:
    """The worker loop's own functions, in this process, no Ray: train, validate, checkpoint."""
    torch.set_num_threads(int(cfg.cpus_per_worker))
    train = read_shard(str(train_path), rank=0, world_size=1)
    val = read_shard(str(val_path), rank=0, world_size=1)
    spec = ModelSpec.build(pre, cfg)
    torch.manual_seed(cfg.seed)
    model = TabularMLP(spec)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    steps = -(-len(train) // cfg.batch_size)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            run_epoch(model, optimizer, train, kind=pre.kind, steps=steps, batch=cfg.batch_size,
                      seed=(cfg.seed, epoch, 0))  # fmt: skip
            evaluate(model, val, kind=pre.kind)
            save_model(Path(tmp) / "model", model=model, spec=spec, preprocessor=pre)
            torch.save(optimizer.state_dict(), Path(tmp) / "optimizer.pt")
            times.append(time.perf_counter() - t0)
    return times[1:]


def bench_loop(home: Path, train: pa.Table, val: pa.Table, repeats: int = 2) -> dict[str, Any]:
    """Per-epoch wall time (after the first epoch), Ray and plain runs alternating (ABAB).

    Six epochs a run: five timed epochs per run and kind keep the medians steady on a machine
    whose 2 cores other work shares; each repeat's own ratio is reported beside them.
    """
    base = {"epochs": 6, "batch_size": 256}
    probe = settings(home, **base)
    pre = Preprocessor.fit(train, features=probe.features, target="churned", task="classification")
    paths = [
        write_encoded(t, pre, home / f"{n}.parquet", shards=1)
        for n, t in (("t", train), ("v", val))
    ]
    epochs: dict[str, list[float]] = {}
    per_repeat: dict[str, list[float]] = {}
    for _ in range(repeats):
        for threads in (1, 2):
            cfg = TrainingConfig(**base, cpus_per_worker=threads)
            plain = plain_epochs(*paths, pre=pre, cfg=cfg)
            s = settings(home, num_workers=1, cpus_per_worker=threads, **base)
            ray_epochs = timed_fit(train=train, validation=val, settings=s)[1]
            epochs.setdefault(f"plain_{threads}", []).extend(plain)
            epochs.setdefault(f"ray_1x{threads}", []).extend(ray_epochs)
            per_repeat.setdefault(f"loop_ratio_{threads}thread_each_repeat", []).append(
                round(statistics.median(ray_epochs) / statistics.median(plain), 3)
            )
        s = settings(home, num_workers=2, cpus_per_worker=1, **base)
        epochs.setdefault("ray_2x1", []).extend(
            timed_fit(train=train, validation=val, settings=s)[1]
        )
    t = {k: statistics.median(v) for k, v in epochs.items()}
    return {
        "rows": train.num_rows,
        "plain_1thread_epoch_s": t["plain_1"],
        "plain_2threads_epoch_s": t["plain_2"],
        "ray_1worker_1thread_epoch_s": t["ray_1x1"],
        "ray_1worker_2threads_epoch_s": t["ray_1x2"],
        "ray_2workers_1thread_epoch_s": t["ray_2x1"],
        "loop_ratio_ray_vs_plain_1thread": t["ray_1x1"] / t["plain_1"],
        "loop_ratio_ray_vs_plain_2threads": t["ray_1x2"] / t["plain_2"],
        "scaling_efficiency_2x1_vs_1x1": t["ray_1x1"] / (2 * t["ray_2x1"]),
        "speedup_2x1_vs_best_plain": min(t["plain_1"], t["plain_2"]) / t["ray_2x1"],
        **per_repeat,
    }


# 2. Fixed cost of a 1-step fit -------------------------------------------------------------------


def bench_fixed_cost(
    home: Path, train: pa.Table, val: pa.Table, repeats: int = 3
) -> dict[str, float]:
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    s = settings(home, num_workers=2, epochs=1, batch_size=256)
    ours = [timed_fit(train=train.slice(0, 256), validation=val.slice(0, 256), settings=s)[0]
            for _ in range(repeats)]  # fmt: skip

    def noop(config: dict[str, Any]) -> None:
        ray.train.report({"done": 1})

    bare = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        TorchTrainer(noop, scaling_config=ScalingConfig(num_workers=2),
                     run_config=RunConfig(storage_path=str(home / "noop"))).fit()  # fmt: skip
        bare.append(time.perf_counter() - t0)
    return {
        "fit_1step_s": statistics.median(ours),
        "bare_torchtrainer_noop_fit_s": statistics.median(bare),
    }


# 2b. Devices: `use_gpu="auto"` on whatever this machine has, against one CPU worker ------------


def bench_devices(home: Path, train: pa.Table, val: pa.Table) -> dict[str, Any]:
    """Seconds per epoch (after the first) for 1 auto-placed worker, 1 CPU worker and 2 CPU
    workers, each worker with the same threads; where CUDA exists `auto` must pick the GPU."""
    threads = max(1, min(8, (os.cpu_count() or 2) // 4))  # 2 workers + Train's actors fit
    base = {"epochs": 4, "batch_size": 1024, "cpus_per_worker": threads}
    runs: dict[str, tuple[float, list[float]]] = {}
    report: dict[str, Any] = {"rows": train.num_rows, "threads_per_worker": threads}
    for label, extra in (("auto_1", {"num_workers": 1, "use_gpu": "auto"}),
                         ("cpu_1", {"num_workers": 1, "use_gpu": False}),
                         ("cpu_2", {"num_workers": 2, "use_gpu": False})):  # fmt: skip
        result = train_model(train=train, validation=val, settings=settings(home, **base, **extra))
        epochs = result.epoch_seconds[1:]
        runs[label] = (result.best_metric, epochs)
        report[f"{label}_devices"] = [w.device for w in result.workers]
        report[f"{label}_epoch_s"] = statistics.median(epochs)
        report[f"{label}_val_auc"] = result.best_metric
        print(label, report[f"{label}_devices"], report[f"{label}_epoch_s"], flush=True)
    report["cuda_available_in_driver"] = torch.cuda.is_available()
    report["speedup_auto_vs_cpu_1"] = report["cpu_1_epoch_s"] / report["auto_1_epoch_s"]
    report["scaling_efficiency_cpu_2_vs_1"] = report["cpu_1_epoch_s"] / (
        2 * report["cpu_2_epoch_s"]
    )
    return report


# 3. Ingest ---------------------------------------------------------------------------------------


def pyarrow_into_tensors(path: str) -> float:
    """Seconds to read a whole Parquet file with pyarrow into tensors (any layout)."""
    t0 = time.perf_counter()
    table = pq.read_table(path)
    for column in table.columns:
        if pa.types.is_fixed_size_list(column.type):
            chunk = column.combine_chunks()
            torch.from_numpy(chunk.values.to_numpy().reshape(len(chunk), -1))
        else:
            torch.from_numpy(column.to_numpy())
    return time.perf_counter() - t0


def pyarrow_in_a_fresh_process(path: str) -> float:
    """`pyarrow_into_tensors` in a new Python process, as a training worker reads: on this VM a
    process's first touch of fresh memory is slow (0.15-0.4 s per 50 MB), which a warm process
    that has read the file before no longer pays."""
    child = [sys.executable, __file__, "--pyarrow-child", path]
    out = subprocess.run(child, capture_output=True, text=True, timeout=300, check=True)
    return float(out.stdout.split()[-1])


def _slowest(seconds: float) -> float:
    """The slowest worker's time (workers start together after a barrier)."""
    t = torch.tensor([seconds])
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t)


def ingest_ours(config: dict[str, Any]) -> dict[str, float]:
    """Worker: read this rank's row groups into tensors, then epochs of shuffled batches."""
    import ray.train

    ctx = ray.train.get_context()
    torch.distributed.barrier()
    t0 = time.perf_counter()
    shard = read_shard(config["path"], rank=ctx.get_world_rank(), world_size=ctx.get_world_size())
    seconds = []
    for epoch in (1, 2):  # the first reads the file, in its stored (shuffled) order as `run_epoch`
        shuffled = shard if epoch == 1 else shard.take(torch.randperm(len(shard)))
        for start in range(0, len(shard), config["batch"]):
            shuffled.slice(start, start + config["batch"])
        seconds.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
    return {"seconds": _slowest(seconds[0]), "later_epoch_seconds": _slowest(seconds[1])}


def ingest_ray_data(config: dict[str, Any]) -> dict[str, float]:
    """Worker: Ray Data's shard, one epoch of `iter_torch_batches`."""
    import ray.train

    shard = ray.train.get_dataset_shard("train")
    torch.distributed.barrier()
    t0 = time.perf_counter()
    for _ in shard.iter_torch_batches(batch_size=config["batch"], local_shuffle_buffer_size=None):
        pass
    return {"seconds": _slowest(time.perf_counter() - t0)}


def bench_ingest(home: Path, train: pa.Table) -> dict[str, float]:
    import ray.data
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    s = settings(home, num_workers=2)
    pre = Preprocessor.fit(train, features=s.features, target="churned", task="classification")
    ours_path = write_encoded(train, pre, home / "ingest" / "encoded.parquet", shards=2)
    baselines: list[float] = []
    cold: list[float] = []

    def measure_baseline() -> None:
        baselines.extend(pyarrow_into_tensors(ours_path) for _ in range(3))
        cold.append(pyarrow_in_a_fresh_process(ours_path))

    def ours_in_process() -> float:
        """Our worker code path for both shards, one after the other, in this process."""
        t0 = time.perf_counter()
        for rank in range(2):
            shard = read_shard(ours_path, rank=rank, world_size=2)
            for start in range(0, len(shard), 128):  # epoch 1: the stored (shuffled) order
                shard.slice(start, start + 128)
        return time.perf_counter() - t0

    def run(fn: Callable[[dict[str, Any]], Any], **kwargs: Any) -> list[dict[str, float]]:
        out = []
        for _ in range(3):
            measure_baseline()
            trainer = TorchTrainer(fn, train_loop_config={"path": str(ours_path), "batch": 128},
                                   scaling_config=ScalingConfig(num_workers=2),
                                   run_config=RunConfig(storage_path=str(home / "ingest-runs")),
                                   **kwargs)  # fmt: skip
            out.append(getattr(trainer.fit(), "return_value", None) or {})
        return out

    def rows_per_s(runs: list[dict[str, float]], key: str = "seconds") -> float:
        return float(train.num_rows / statistics.median(r[key] for r in runs))

    ours = run(ingest_ours)
    ray_data = run(ingest_ray_data, datasets={"train": ray.data.read_parquet(str(ours_path))})
    in_process = statistics.median(ours_in_process() for _ in range(3))
    measure_baseline()
    pyarrow = train.num_rows / statistics.median(baselines)
    pyarrow_cold = train.num_rows / statistics.median(cold)
    return {
        "rows": train.num_rows,
        "batch_per_worker": 128,
        "pyarrow_rows_per_s": pyarrow,
        "pyarrow_fresh_process_rows_per_s": pyarrow_cold,
        "ours_rows_per_s": rows_per_s(ours),
        "ours_later_epoch_rows_per_s": rows_per_s(ours, "later_epoch_seconds"),
        "ray_data_rows_per_s": rows_per_s(ray_data),
        "ours_in_one_process_no_ray_rows_per_s": train.num_rows / in_process,
        "ingest_ratio_ours_vs_pyarrow": rows_per_s(ours) / pyarrow,
        "ingest_ratio_ours_vs_pyarrow_fresh_process": rows_per_s(ours) / pyarrow_cold,
        "ingest_ratio_ours_later_epochs_vs_pyarrow": rows_per_s(ours, "later_epoch_seconds")
        / pyarrow,
        "ingest_ratio_ray_data_vs_pyarrow": rows_per_s(ray_data) / pyarrow,
    }


# 4. Peak memory, 1M x 20, in a fresh process ----------------------------------------------------


def memory_child(home: Path) -> dict[str, Any]:
    import psutil

    connect_ray()  # a fresh local Ray in this process
    train, val = churn(1_000_000, seed=3)
    me = psutil.Process()
    before = me.memory_info().rss
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    s = settings(home, num_workers=2, epochs=1, batch_size=1024)
    result = train_model(train=train, validation=val, settings=s)
    stop.set()
    arrow_mb = (train.nbytes + val.nbytes) / 2**20
    return {
        "rows": train.num_rows + val.num_rows,
        "features": len(s.features.all),
        "input_arrow_mb": arrow_mb,
        "driver_rss_before_mb": before / 2**20,
        "driver_peak_rss_during_train_mb": peak[0] / 2**20,
        "worker_peak_rss_mb": [round(w.peak_rss_mb) for w in result.workers],
        "epoch_s": result.history[0].seconds,
        "fit_s": result.seconds,
    }


def bench_memory(home: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(home / "memory")],
        capture_output=True, text=True, timeout=900,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )  # fmt: skip
    lines = [line for line in out.stdout.splitlines() if line.startswith("MEMORY ")]
    if not lines:
        raise RuntimeError(f"memory run failed: {out.stderr[-2000:]}")
    return dict(json.loads(lines[-1].removeprefix("MEMORY ")))


# Goals -------------------------------------------------------------------------------------------

# (section, what it is, driftloop's figure, the baseline's, unit, comparison, goal, judged on)
GOALS: list[tuple[str, str, str, str, str, Op, float, Judged]] = [
    ("loop", "Ray loop / plain torch, 1 thread, s per epoch", "ray_1worker_1thread_epoch_s",
     "plain_1thread_epoch_s", "s", "<=", 1.15, "ratio"),
    ("loop", "Ray loop / plain torch, 2 threads, s per epoch", "ray_1worker_2threads_epoch_s",
     "plain_2threads_epoch_s", "s", "<=", 1.15, "ratio"),
    ("fixed_cost", "fit() fixed cost of a 1-step run (bare TorchTrainer beside it)", "fit_1step_s",
     "bare_torchtrainer_noop_fit_s", "s", "<=", 8.0, "value"),
    ("ingest", "ingest epoch 1 / pyarrow->tensors in this warm process", "ours_rows_per_s",
     "pyarrow_rows_per_s", "rows/s", ">=", 0.5, "ratio"),
    ("ingest", "ingest epoch 1 / pyarrow->tensors in a fresh process", "ours_rows_per_s",
     "pyarrow_fresh_process_rows_per_s", "rows/s", ">=", 0.5, "ratio"),
    ("ingest", "ingest later epochs / pyarrow->tensors", "ours_later_epoch_rows_per_s",
     "pyarrow_rows_per_s", "rows/s", ">=", 0.5, "ratio"),
]  # fmt: skip

# (section, figure, what it is): figures without a goal, printed beside the goals
REPORTED = [
    ("loop", "scaling_efficiency_2x1_vs_1x1", "2-worker scaling efficiency"),
    ("devices", "speedup_auto_vs_cpu_1", "use_gpu=auto vs 1 CPU worker, speedup"),
    ("devices", "scaling_efficiency_cpu_2_vs_1", "2-worker scaling efficiency (devices)"),
    ("memory", "driver_peak_rss_during_train_mb", "1M x 20: driver peak RSS, MB"),
    ("memory", "worker_peak_rss_mb", "1M x 20: each worker's peak RSS, MB"),
]


def goal_rows(report: dict[str, Any]) -> list[Row]:
    """One row per goal whose section ran."""
    return [
        judge(label, value=report[section][ours], baseline=report[section][base], unit=unit,
              op=op, limit=limit, of=of)
        for section, label, ours, base, unit, op, limit, of in GOALS
        if ours in report.get(section, {})
    ]  # fmt: skip


def reported_lines(report: dict[str, Any]) -> list[str]:
    """One REPORT line per figure without a goal whose section ran."""
    return [
        f"REPORT  {label}: {_shown(report[section][key])}"
        for section, key, label in REPORTED
        if key in report.get(section, {})
    ]


def _shown(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# Main --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--memory-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--pyarrow-child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--only", nargs="*", default=["loop", "fixed", "ingest", "memory"],
        choices=["loop", "fixed", "devices", "ingest", "memory"],
    )  # fmt: skip
    parser.add_argument("--no-dashboard", action="store_true", help="Ray without ray[default]")
    args = parser.parse_args()
    if args.pyarrow_child:
        print(pyarrow_into_tensors(args.pyarrow_child))
        return
    if args.memory_child:
        print("MEMORY " + json.dumps(memory_child(args.memory_child)), flush=True)
        return

    import ray

    run = Run("train")
    # At least 4 logical CPUs: room for Ray Data's read tasks beside 2 training workers (a worker
    # group holding every CPU starves Ray Data); torch threads are set per run, not from this.
    ray.init(address="local", num_cpus=max(4, os.cpu_count() or 0), log_to_driver=False,
             include_dashboard=not args.no_dashboard, dashboard_host="127.0.0.1")  # fmt: skip
    report: dict[str, Any] = {"cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        home = Path(tmp)
        if "loop" in args.only:
            report["loop"] = bench_loop(home / "loop", *churn(200_000, seed=1))
            report["loop"]["load_avg_1min_after"] = os.getloadavg()[0]
            print(json.dumps({"loop": report["loop"]}, indent=1), flush=True)
        if "fixed" in args.only:
            report["fixed_cost"] = bench_fixed_cost(home / "fixed", *churn(2_000, seed=2))
            report["fixed_cost"]["load_avg_1min_after"] = os.getloadavg()[0]
            print(json.dumps({"fixed_cost": report["fixed_cost"]}, indent=1), flush=True)
        if "devices" in args.only:
            report["devices"] = bench_devices(home / "devices", *churn(1_000_000, seed=5))
            print(json.dumps({"devices": report["devices"]}, indent=1), flush=True)
        if "ingest" in args.only:
            report["ingest"] = bench_ingest(home / "ingest", churn(1_000_000, seed=4)[0])
            report["ingest"]["load_avg_1min_after"] = os.getloadavg()[0]
            print(json.dumps({"ingest": report["ingest"]}, indent=1), flush=True)
        ray.shutdown()
        if "memory" in args.only:
            report["memory"] = bench_memory(home)
    report["load_avg_end"] = os.getloadavg()  # other processes share these 2 cores
    rows = goal_rows(report)
    report["verdicts"] = [row.line() for row in rows] + reported_lines(report)
    print(json.dumps(report, indent=1, default=str))
    print("\n".join(report["verdicts"]))
    print(f"written to {run.write(rows, details=report)}")


if __name__ == "__main__":
    main()
