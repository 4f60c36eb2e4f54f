"""Data-parallel training on Ray Train: from a laptop to a Ray cluster with the same code.

    result = train_model(train=parts.train, validation=parts.validation, settings=settings)
    predictor = load_model(result.model_dir)

Ray is reused when the process already runs it; otherwise `RAY_ADDRESS` names a cluster to join
(the `tasks` package reaches its workers through the runtime environment), or a local instance
starts, its dashboard bound to 127.0.0.1.

The per-worker loop lives in `tasks.loop`; this module is its driver and the Prefect task.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.errors import DriftloopError
from tasks.loop import (
    EpochRecord,
    FaultInjection,
    LoopConfig,
    LoopTraining,
    Mode,
    WorkerInfo,
    auc_from_histograms,
    evaluate,
    read_shard,
    run_epoch,
    train_loop_per_worker,
)
from tasks.model import Kind, ModelSpec, Preprocessor, load_model, save_model

if TYPE_CHECKING:
    import ray.train

    from tasks.settings import Settings, TrainingConfig

__all__ = [  # the loop's pieces are re-exported: benchmarks and tests drive them from here
    "EpochRecord",
    "FaultInjection",
    "TrainResult",
    "TrainingFailed",
    "WorkerInfo",
    "auc_from_histograms",
    "evaluate",
    "read_shard",
    "run_epoch",
    "train_model",
    "train_task",
]

METRICS: dict[Kind, tuple[str, Mode]] = {
    "binary": ("val_auc", "max"),
    "multiclass": ("val_accuracy", "max"),
    "regression": ("val_rmse", "min"),
}
_ROWS_PER_GROUP = 131_072  # Parquet row group size cap: the unit a worker reads


class TrainingFailed(DriftloopError, RuntimeError):
    """Training did not finish: the message says what failed and how many restarts were spent."""


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced; `model_dir` loads with `tasks.model.load_model`."""

    model_dir: Path  # the best checkpoint's model, exported with `save_model`
    metric_name: str  # val_auc (binary), val_accuracy (multiclass) or val_rmse (regression)
    metric_mode: Mode
    best_metric: float
    best_epoch: int
    stopped_early: bool
    history: list[EpochRecord]  # one record per epoch, epochs redone after a restart included once
    resumed_from_epoch: list[int]  # start epoch of each worker-group attempt: [0] if uninterrupted
    workers: list[WorkerInfo]  # the final attempt's workers
    run_path: str  # Ray Train's folder for this run (checkpoints, state)
    checkpoints: list[str] = field(default_factory=list)  # the checkpoints Ray Train kept
    use_gpu: bool = False
    seconds: float = 0.0


# Driver -----------------------------------------------------------------------------------------


def resolve_use_gpu(setting: bool | Literal["auto"], resources: Mapping[str, float]) -> bool:
    """`auto` trains on GPUs when the Ray cluster has any (not merely the driver's machine)."""
    if setting == "auto":
        return resources.get("GPU", 0) > 0
    return bool(setting)


def connect_ray() -> None:
    """Reuse a running Ray; else join `RAY_ADDRESS`, or start a local instance on 127.0.0.1."""
    import ray

    if ray.is_initialized():
        return
    # On Linux Ray replaces 127.0.0.1 by the host's address and listens on every interface
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    address = os.environ.get("RAY_ADDRESS")
    if address:  # a cluster: its workers cannot import this checkout, so ship the package
        ray.init(address=address, runtime_env=_runtime_env(ship_code=True))
        return
    # The dashboard serves the State API that Train's placement-group cleaner polls; without it
    # the cleaner logs a warning every second. Loopback only: the dashboard can run code.
    ray.init(
        address="local",
        runtime_env=_runtime_env(ship_code=False),
        include_dashboard=True,
        dashboard_host="127.0.0.1",
    )


def dashboard_url() -> str | None:
    """The Ray dashboard's URL, when this process is connected to a Ray that serves one."""
    try:
        from ray._private.worker import get_dashboard_url

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            url = get_dashboard_url()
    except Exception:
        return None
    return f"http://{url}" if url and "://" not in url else url or None


def worker_setup_hook() -> Callable[[], None]:
    """A `worker_process_setup_hook` for `ray.init(runtime_env=...)`: quiets known Ray noise.

    Ray Train's placement-group cleaner polls the State API every second. Without a dashboard it
    logs a warning each time; with several Ray instances on one machine (a test session beside
    `driftloop up`) its address auto-detection fails and its thread dies. The hook points the
    State API at this job's own cluster and filters that warning. It is built here so that
    cloudpickle ships it by value: workers need not import this module to run it.
    """

    def setup() -> None:
        import logging
        import os

        import ray

        os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
        logging.getLogger(
            "ray.train.v2._internal.execution.controller.placement_group_cleaner"
        ).addFilter(lambda r: "Failed to query Ray Train Controller" not in r.getMessage())

    return setup


def _runtime_env(*, ship_code: bool) -> dict[str, Any]:
    env: dict[str, Any] = {"worker_process_setup_hook": worker_setup_hook()}
    if ship_code:
        env["py_modules"] = [str(Path(__file__).resolve().parent)]
    return env


def train_model(
    *,
    train: pa.Table,
    validation: pa.Table,
    settings: Settings,
    storage_path: str | os.PathLike[str] | None = None,
    name: str | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    fault: FaultInjection | None = None,
) -> TrainResult:
    """Fit the preprocessing and train the MLP with DDP on Ray Train; export the best model.

    Args:
        train: the training split (the preprocessing is fitted on it alone).
        validation: the split that early stopping and checkpoint ranking look at.
        settings: resolved settings (`load_settings`), for the dataset contract and `training`.
        storage_path: Ray Train storage; default `<home>/ray`. Must be shared by all nodes.
        name: the run's name; a new run with the name of an unfinished one resumes it.
        on_epoch: called in the driver as epochs finish (live progress).
        fault: a fault drill for tests and game days.

    Raises:
        TrainingFailed: the run failed more often than `training.max_failures` allows.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    started = time.perf_counter()
    config = settings.training
    pre = Preprocessor.fit(
        train,
        features=settings.features,
        target=settings.dataset.target,
        task=settings.dataset.task,
    )
    spec = ModelSpec.build(pre, config)
    metric, mode = METRICS[pre.kind]
    connect_ray()
    use_gpu = resolve_use_gpu(config.use_gpu, ray.cluster_resources())
    name = name or _run_name(settings.dataset.name)
    storage = Path(storage_path or settings.location("ray")).resolve()
    run_dir = storage / name

    # Data: encoded once, sharded by row group
    if train.num_rows < config.num_workers or validation.num_rows == 0:
        raise ValueError(
            f"need at least {config.num_workers} training rows (one per worker) and one "
            f"validation row; got {train.num_rows} and {validation.num_rows}"
        )
    paths = {
        part: write_encoded(
            table, pre, run_dir / "data" / f"{part}.parquet", shards=config.num_workers, seed=i
        )
        for i, (part, table) in enumerate([("train", train), ("validation", validation)])
    }
    progress = _ProgressTail(run_dir / "progress.jsonl", on_epoch) if on_epoch else None
    loop = LoopConfig(
        train_path=str(paths["train"]),
        validation_path=str(paths["validation"]),
        spec=spec,
        preprocessor=pre,
        training=LoopTraining.of(config),
        metric_mode=mode,
        fault=fault,
        progress_path=str(progress.path) if progress else None,
    )

    # Scaling, checkpoints, failures
    scaling = ScalingConfig(
        num_workers=config.num_workers,
        use_gpu=use_gpu,
        resources_per_worker={"CPU": config.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
    )
    checkpoints = CheckpointConfig(
        num_to_keep=config.checkpoints_to_keep,
        checkpoint_score_attribute="val_metric",
        checkpoint_score_order=mode,
    )
    run = RunConfig(
        name=name,
        storage_path=str(storage),
        checkpoint_config=checkpoints,
        failure_config=FailureConfig(max_failures=config.max_failures),
    )

    # Train
    # The controller polls workers every 2 s by default, so a short run idles up to 2 s after its
    # last report before it is noticed; polling every 0.25 s is cheap. A user's value wins.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    trainer = TorchTrainer(
        train_loop_per_worker,  # type: ignore[arg-type]  # Ray keeps rank 0's return value
        train_loop_config={"loop": loop},
        scaling_config=scaling,
        run_config=run,
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise TrainingFailed(_failure_message(exc, name=name, config=config)) from None
    finally:
        if progress:
            progress.close()
    return _collect(result, metric=metric, mode=mode, run_dir=run_dir, use_gpu=use_gpu, t0=started)


def write_encoded(
    table: pa.Table, pre: Preprocessor, path: Path, *, shards: int, seed: int = 0
) -> Path:
    """Encode `table` and write it, rows shuffled, in row groups that split evenly over `shards`.

    Columns: `numeric` and `categorical` (fixed-size lists, so a reader gets one contiguous
    buffer per kind) and `target`.
    """
    encoded = pre.transform(table)
    target = pre.encode_target(table)
    order = np.random.default_rng(seed).permutation(table.num_rows)
    columns: dict[str, pa.Array] = {}
    for key, values in (("numeric", encoded.numeric), ("categorical", encoded.categorical)):
        if values.shape[1]:
            flat = pa.array(values[order].reshape(-1))
            columns[key] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
    columns["target"] = pa.array(target[order])
    encoded_table = pa.table(columns)
    groups = shards * max(1, -(-table.num_rows // (shards * _ROWS_PER_GROUP)))
    bounds = np.linspace(0, table.num_rows, groups + 1).astype(int)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with pq.ParquetWriter(tmp, encoded_table.schema) as writer:
        for lo, hi in itertools.pairwise(bounds):
            writer.write_table(encoded_table.slice(lo, hi - lo), row_group_size=max(hi - lo, 1))
    os.replace(tmp, path)
    return path


def _run_name(dataset: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{dataset}-{stamp}-{os.urandom(3).hex()}"


def _collect(
    result: ray.train.Result, *, metric: str, mode: Mode, run_dir: Path, use_gpu: bool, t0: float
) -> TrainResult:
    """Export the best checkpoint's model and gather what the loop returned."""
    best = result.get_best_checkpoint("val_metric", mode)
    if best is None:
        raise TrainingFailed(f"training run {run_dir.name} finished without any checkpoint")
    model_dir = run_dir / "model"
    with best.as_directory() as folder:
        predictor = load_model(Path(folder) / "model")
        save_model(
            model_dir,
            model=predictor.model,
            spec=predictor.spec,
            preprocessor=predictor.preprocessor,
        )
    summary: dict[str, Any] = getattr(result, "return_value", None) or {}  # Train V2 only
    return TrainResult(
        model_dir=model_dir,
        metric_name=metric,
        metric_mode=mode,
        best_metric=float(summary.get("best_metric", float("nan"))),
        best_epoch=int(summary.get("best_epoch", 0)),
        stopped_early=bool(summary.get("stopped_early", False)),
        history=[EpochRecord(**r) for r in summary.get("history", [])],
        resumed_from_epoch=list(summary.get("attempts", [])),
        workers=[WorkerInfo(**w) for w in summary.get("workers", [])],
        run_path=str(result.path),
        checkpoints=[c.path for c, _ in result.best_checkpoints or []],
        use_gpu=use_gpu,
        seconds=time.perf_counter() - t0,
    )


def _failure_message(exc: Exception, *, name: str, config: TrainingConfig) -> str:
    from ray.train import ControllerError, WorkerGroupError

    if isinstance(exc, WorkerGroupError) and exc.worker_failures:
        what = _describe_worker_failures(exc.worker_failures)
    elif isinstance(exc, ControllerError):
        what = f"the Ray Train controller failed: {_describe_error(exc.controller_failure)}"
    else:
        what = _describe_error(exc)
    return (
        f"training run {name} failed after {config.max_failures} restart(s) "
        f"(training.max_failures={config.max_failures}); {what}"
    )


def _describe_worker_failures(failures: Mapping[int, BaseException]) -> str:
    """Name the worker that died first; the others' errors (broken collectives) follow from it."""
    died = [r for r, e in failures.items() if getattr(e, "health_check_failure", None)]
    rank = min(died or failures)
    error = failures[rank]
    if rank in died:
        text = str(error)
        exit_type = re.search(r"Worker exit type: (\w+)", text)
        log = re.search(r"log_file_path='([^']+)'", text)
        what = f"worker rank {rank} died ({type(error.health_check_failure).__name__}"  # type: ignore[attr-defined]
        what += f", exit type {exit_type[1]})" if exit_type else ")"
        what += f"; its log: {log[1]}" if log else ""
    else:
        what = f"worker rank {rank} failed: {_describe_error(error)}"
    others = sorted(set(failures) - {rank})
    return what + (f"; rank(s) {others} failed with it" if others else "")


def _describe_error(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else 'no message'}"[:300]


class _ProgressTail:
    """Epoch records from rank 0 to a callback in the driver: rank 0 appends JSON lines to a file
    in the run's storage folder (shared by all nodes), a driver thread follows it. No actor."""

    def __init__(self, path: Path, callback: Callable[[EpochRecord], None]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._offset = path.stat().st_size if path.exists() else 0  # a resumed run's old lines
        self._callback = callback
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="train-progress", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.wait(0.25):
            self._read()
        self._read()

    def _read(self) -> None:
        try:
            with open(self.path, "rb") as file:
                file.seek(self._offset)
                chunk = file.read()
        except FileNotFoundError:
            return
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written waits for the next read
        self._offset += len(complete)
        for line in complete.splitlines():
            try:
                self._callback(EpochRecord(**json.loads(line)))
            except Exception:  # a logging hiccup must not end training
                logging.getLogger(__name__).exception("progress callback failed")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


# Prefect ----------------------------------------------------------------------------------------


@task(name="train", cache_policy=NO_CACHE)
def train_task(
    *,
    train: pa.Table,
    validation: pa.Table,
    settings: Settings,
    storage_path: str | None = None,
) -> TrainResult:
    """Train on Ray Train and show the learning curve in the Prefect UI."""
    logger = get_run_logger()
    connect_ray()
    url = dashboard_url()
    if url:
        logger.info("Ray dashboard: %s", url)

    def log_epoch(r: EpochRecord) -> None:
        logger.info(
            "epoch %d: train loss %.4f, val loss %.4f, val metric %.4f (%.1f s)",
            r.epoch, r.train_loss, r.val_loss, r.val_metric, r.seconds,
        )  # fmt: skip

    result = train_model(
        train=train, validation=validation, settings=settings, storage_path=storage_path,
        on_epoch=log_epoch,
    )  # fmt: skip
    logger.info(
        "best %s %.4f at epoch %d of %d%s; model in %s",
        result.metric_name, result.best_metric, result.best_epoch, len(result.history),
        " (stopped early)" if result.stopped_early else "", result.model_dir,
    )  # fmt: skip
    key = _artifact_key(settings.dataset.name)
    create_table_artifact(
        key=f"{key}-learning-curve",
        table=[asdict(r) for r in result.history],
        description=f"{settings.dataset.name}: losses and {result.metric_name} per epoch",
    )
    create_markdown_artifact(
        key=f"{key}-learning-curve-chart",
        markdown=learning_curve_markdown(result),
        description="Training and validation loss per epoch",
    )
    return result


def learning_curve_markdown(result: TrainResult) -> str:
    """A small markdown report with the learning curve as an inline SVG image."""
    svg = learning_curve_svg(result.history)
    uri = "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()
    return (
        f"### Learning curve\n\n![learning curve]({uri})\n\n"
        f"Best {result.metric_name} **{result.best_metric:.4f}** at epoch {result.best_epoch}"
        f" of {len(result.history)}{' (stopped early)' if result.stopped_early else ''}.\n"
    )


def learning_curve_svg(history: list[EpochRecord], *, width: int = 480, height: int = 240) -> str:
    """Training (blue) and validation (orange) loss as SVG polylines; no plotting library."""
    pad = 32
    series = {
        "#1f77b4": [r.train_loss for r in history],
        "#ff7f0e": [r.val_loss for r in history],
    }
    values = [v for vs in series.values() for v in vs if np.isfinite(v)] or [0.0, 1.0]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    steps = max(len(history) - 1, 1)

    def point(i: int, v: float) -> str:
        x = pad + i * (width - 2 * pad) / steps
        y = height - pad - (v - low) * (height - 2 * pad) / span
        return f"{x:.1f},{y:.1f}"

    lines = [
        f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
        + " ".join(point(i, v) for i, v in enumerate(vs))
        + '"/>'
        for color, vs in series.items()
    ]
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<text x="{pad}" y="20" font-size="12" font-family="sans-serif">'
        f'loss per epoch: <tspan fill="#1f77b4">train</tspan>, '
        f'<tspan fill="#ff7f0e">validation</tspan> ({low:.3g} to {high:.3g})</text>'
        + "".join(lines)
        + "</svg>"
    )


def _artifact_key(name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    key = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return key or "model"
