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
import contextlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks import files
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
    "Placement",
    "TrainResult",
    "TrainingFailed",
    "WorkerInfo",
    "auc_from_histograms",
    "evaluate",
    "place_workers",
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
# Starting the worker group is retried this often after Ray Train's 60 s placement timeout
# (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S): room for busy resources to free up, not forever.
_START_RETRIES = 2
logger = logging.getLogger(__name__)


class TrainingFailed(DriftloopError, RuntimeError):
    """Training did not finish: the message says what failed and how many restarts were spent."""


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced; `model_dir` loads with `tasks.model.load_model`."""

    model_dir: Path  # the best checkpoint's model, exported with `save_model` (a local folder)
    metric_name: str  # val_auc (binary), val_accuracy (multiclass) or val_rmse (regression)
    metric_mode: Mode
    best_metric: float
    best_epoch: int
    stopped_early: bool
    history: list[EpochRecord]  # one record per epoch, epochs redone after a restart included once
    resumed_from_epoch: list[int]  # the checkpoint epoch each worker-group attempt loaded (0: none)
    workers: list[WorkerInfo]  # the final attempt's workers
    run_path: str  # Ray Train's folder for this run (checkpoints, state): a path or a URI
    checkpoints: list[str] = field(default_factory=list)  # the checkpoints Ray Train kept
    # (resumed_from_epoch, epoch) of each checkpoint Ray Train registered, in order, as its
    # controller reported them to the driver: which checkpoint a restart should have loaded
    registered: list[tuple[int, int]] = field(default_factory=list)
    # model_dir sits in a temporary folder (remote storage): remove it once it is registered
    model_dir_is_temporary: bool = False
    # the final attempt's epochs as rank 0 timed them: train, validate, checkpoint and report
    epoch_seconds: list[float] = field(default_factory=list)
    use_gpu: bool = False
    seconds: float = 0.0


@dataclass(frozen=True)
class Placement:
    """GPU or CPU workers, and why when `use_gpu: auto` chose."""

    use_gpu: bool
    reason: str = ""
    fell_back: bool = False  # `auto` found GPUs, too few for every worker: worth a warning


# Driver -----------------------------------------------------------------------------------------


def place_workers(config: TrainingConfig, *, nodes: Sequence[Mapping[str, float]]) -> Placement:
    """Choose GPU or CPU workers for the cluster's nodes, or fail now if they cannot be placed.

    Ray Train would otherwise wait for resources that never come: without an autoscaler it
    skips its own up-front check, times out after 60 s and tries again. `nodes` holds each
    node's total resources (for an autoscaling cluster, one entry: the most it can grow to).
    `auto` means GPUs only when every worker gets one. The Train controller needs no room: Ray
    starts it with `num_cpus=0`.
    """
    n, gpus = config.num_workers, sum(node.get("GPU", 0.0) for node in nodes)
    gpu_room = _room(nodes, cpus=config.cpus_per_worker, gpu=True)
    fell_back = False
    if config.use_gpu == "auto":
        use_gpu = gpu_room >= n
        if use_gpu:
            reason = f"use_gpu=auto: {n} GPU worker(s); the cluster has {gpus:g} GPU(s)"
        elif gpus:
            fell_back = True
            reason = (
                f"use_gpu=auto: CPU workers; the cluster's {gpus:g} GPU(s) have room for "
                f"{gpu_room} of the training.num_workers={n} workers, which need one GPU each"
            )
        else:
            reason = "use_gpu=auto: CPU workers; the cluster has no GPU"
    else:
        use_gpu, reason = bool(config.use_gpu), ""
    room = gpu_room if use_gpu else _room(nodes, cpus=config.cpus_per_worker, gpu=False)
    if room < n:
        cpus = sum(node.get("CPU", 0.0) for node in nodes)
        each = f"{config.cpus_per_worker:g} CPU(s){' + 1 GPU' if use_gpu else ''}"
        raise TrainingFailed(
            f"training.num_workers={n} worker(s) of training.cpus_per_worker={each} each "
            f"(training.use_gpu={str(config.use_gpu).lower()}) cannot be placed: the Ray "
            f"cluster has {len(nodes)} node(s) with {cpus:g} CPU(s) and {gpus:g} GPU(s) in all, "
            f"room for {room} such worker(s); lower training.num_workers or "
            f"training.cpus_per_worker{', set training.use_gpu: false' if use_gpu else ''}, "
            "or add nodes"
        )
    return Placement(use_gpu, reason, fell_back)


def _room(nodes: Sequence[Mapping[str, float]], *, cpus: float, gpu: bool) -> int:
    """How many workers of `cpus` CPUs (plus one GPU each) fit, node by node."""
    fits = 0
    for node in nodes:
        here = math.floor(node.get("CPU", 0.0) / cpus + 1e-9)
        if gpu:
            here = min(here, math.floor(node.get("GPU", 0.0) + 1e-9))
        fits += here
    return fits


def cluster_nodes() -> list[dict[str, float]]:
    """Each alive node's total resources; for an autoscaling cluster, the most it can grow to."""
    import ray
    from ray._private.state import state  # what Ray Train's own up-front check reads

    with contextlib.suppress(Exception):  # a private API: fall back to the nodes alive now
        most = state.get_max_resources_from_cluster_config()
        if most:
            return [{k: float(v) for k, v in most.items()}]
    return [dict(n["Resources"]) for n in ray.nodes() if n["Alive"]]


def _warn_if_busy(config: TrainingConfig, placement: Placement) -> None:
    """The workers fit the cluster, but other work may hold what they need right now."""
    import ray

    free = ray.available_resources()
    need = {"CPU": config.num_workers * config.cpus_per_worker}
    if placement.use_gpu:
        need["GPU"] = config.num_workers
    short = {k: v for k, v in need.items() if free.get(k, 0.0) + 1e-9 < v}
    if short:
        logger.warning(
            "the Ray cluster has %s free of the %s the workers need: training waits for other "
            "work (or the autoscaler) to free them, at most %d x Ray Train's start timeout",
            {k: free.get(k, 0.0) for k in short}, short, _START_RETRIES + 1,
        )  # fmt: skip


def connect_ray() -> None:
    """Reuse a running Ray; else join `RAY_ADDRESS`, or start a local instance on 127.0.0.1."""
    import ray

    if ray.is_initialized():
        return
    # On Linux Ray replaces 127.0.0.1 by the host's address and listens on every interface
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    address = os.environ.get("RAY_ADDRESS")
    if address:  # a cluster: its workers cannot import this checkout, so ship the package
        # Ray Client pickles the job config without cloudpickle: no setup hook by value there
        client = address.startswith("ray://")
        ray.init(address=address, runtime_env=_runtime_env(ship_code=True, hook=not client))
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


def _runtime_env(*, ship_code: bool, hook: bool = True) -> dict[str, Any]:
    env: dict[str, Any] = {"worker_process_setup_hook": worker_setup_hook()} if hook else {}
    if ship_code:
        env["py_modules"] = [str(Path(__file__).resolve().parent)]
    return env


def check_storage_is_shared(storage: str) -> None:
    """Fail now if a local storage path is not the same folder on every node of the cluster.

    Workers read their data there and Ray Train persists checkpoints there; on a node with
    another disk they would fail only once training started. Buckets (s3://, gs://) are shared
    by nature, and a single-node Ray runs on the driver's machine (unless reached by Ray Client).
    """
    import ray
    from ray.util.client import ray as ray_client

    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2 and not ray_client.is_connected():
        return
    fs, folder = files.resolve(storage)
    if not isinstance(fs, pafs.LocalFileSystem):  # a bucket: shared by nature
        return
    marker = f"{folder}/.driftloop-shared-{os.urandom(4).hex()}"
    fs.create_dir(folder, recursive=True)
    with fs.open_output_stream(marker):
        pass
    try:
        missing = nodes_without_path(marker, node_ids=nodes)
    finally:
        with contextlib.suppress(OSError):
            fs.delete_file(marker)
    if missing:
        raise TrainingFailed(
            f"Ray Train storage {storage} is a local folder that {len(missing)} of {len(nodes)} "
            f"node(s) of the cluster at RAY_ADDRESS={os.environ.get('RAY_ADDRESS', '')} cannot "
            f"see (node {missing[0]}); set DRIFTLOOP_HOME to a bucket (s3://, gs://) or to a "
            "folder every node mounts at the same path"
        )


def nodes_without_path(path: str, *, node_ids: Sequence[str]) -> list[str]:
    """The nodes on which `path` does not exist, asked by a zero-CPU task pinned to each."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_path_exists())
    refs = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
            path
        )
        for node in node_ids
    ]
    try:
        found = ray.get(refs, timeout=60)
    except ray.exceptions.GetTimeoutError:
        logger.warning("could not check within 60 s that every node sees %s; going on", path)
        return []
    return [node for node, ok in zip(node_ids, found, strict=True) if not ok]


def _path_exists() -> Callable[[str], bool]:
    """Built here so that cloudpickle ships it by value: the probe needs no driftloop code."""

    def exists(path: str) -> bool:
        import os

        return os.path.exists(path)

    return exists


def progress_callback(path: str) -> ray.train.UserCallback:
    """A Ray Train callback that appends each registered report of rank 0 to a JSON-lines file.

    It runs in the Train controller, which Ray Train places on the driver's node, so `path` can
    be a local file the driver follows: no actor, no shared storage. The class is built here so
    that cloudpickle ships it by value: the controller need not import driftloop (or Prefect).
    """
    from ray.train import UserCallback

    class ProgressLog(UserCallback):
        def __init__(self, path: str) -> None:
            self.path = path

        def after_report(
            self,
            run_context: Any,
            metrics: list[dict[str, Any]],
            checkpoint: ray.train.Checkpoint | None,
        ) -> None:
            import contextlib
            import json

            line = json.dumps({**metrics[0], "checkpoint": checkpoint is not None})
            with contextlib.suppress(OSError), open(self.path, "a") as file:
                file.write(line + "\n")  # best effort: a log, not state

    return ProgressLog(path)


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
        storage_path: Ray Train storage, a folder or a URI; default `<home>/ray`. Every node
            must see it: a bucket, or a folder on shared storage.
        name: the run's name; a new run with the name of an unfinished one resumes it.
        on_epoch: called in the driver as epochs finish (live progress), once per epoch.
        fault: a fault drill for tests and game days.

    Raises:
        TrainingFailed: too few rows for the workers, the cluster cannot hold the workers the
            settings ask for, a local storage folder is not shared by its nodes, or the run
            failed more often than `training.max_failures` allows.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    started = time.perf_counter()
    config = settings.training
    if train.num_rows < config.num_workers or validation.num_rows == 0:
        raise TrainingFailed(
            f"need at least {config.num_workers} training rows (one per worker, "
            f"training.num_workers={config.num_workers}) and one validation row; got "
            f"{train.num_rows} and {validation.num_rows}"
        )
    pre = Preprocessor.fit(
        train,
        features=settings.features,
        target=settings.dataset.target,
        task=settings.dataset.task,
    )
    spec = ModelSpec.build(pre, config)
    metric, mode = METRICS[pre.kind]

    # Cluster: fail now on what it can never hold, or on storage its nodes cannot share
    connect_ray()
    placement = place_workers(config, nodes=cluster_nodes())
    if placement.reason:
        logger.log(logging.WARNING if placement.fell_back else logging.INFO, placement.reason)
    _warn_if_busy(config, placement)
    storage = _storage_location(os.fspath(storage_path or settings.location("ray")))
    check_storage_is_shared(storage)
    name = name or _run_name(settings.dataset.name)
    data_dir = files.join(storage, name, "data")
    progress = _ProgressTail(on_epoch)
    try:
        # Data: encoded once, sharded by row group, where every node reads it
        paths = {
            part: write_encoded(
                table,
                pre,
                files.join(data_dir, f"{part}.parquet"),
                shards=config.num_workers,
                seed=i,
            )
            for i, (part, table) in enumerate([("train", train), ("validation", validation)])
        }
        loop = LoopConfig(
            train_path=paths["train"],
            validation_path=paths["validation"],
            spec=spec,
            preprocessor=pre,
            training=LoopTraining.of(config),
            metric_mode=mode,
            fault=fault,
        )

        # Scaling, checkpoints, failures
        gpu = {"GPU": 1} if placement.use_gpu else {}
        scaling = ScalingConfig(
            num_workers=config.num_workers,
            use_gpu=placement.use_gpu,
            resources_per_worker={"CPU": config.cpus_per_worker, **gpu},
        )
        checkpoints = CheckpointConfig(
            num_to_keep=config.checkpoints_to_keep,
            checkpoint_score_attribute="val_metric",
            checkpoint_score_order=mode,
        )
        # mypy sees Train V1's classes behind `ray.train`; at run time they are V2's
        failures = FailureConfig(
            max_failures=config.max_failures,
            controller_failure_limit=_START_RETRIES,  # type: ignore[call-arg]
        )
        run = RunConfig(
            name=name,
            storage_path=storage,
            checkpoint_config=checkpoints,
            failure_config=failures,
            callbacks=[progress.callback],  # type: ignore[list-item]
        )

        # Train
        # The controller polls workers every 2 s by default, so a short run idles up to 2 s after
        # its last report before it is noticed; polling every 0.25 s is cheap. A user's value wins.
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
        progress.close()
        _remove(data_dir)  # about 100 bytes a row; the checkpoints stay
    trained = _collect(
        result,
        metric=metric,
        mode=mode,
        storage=storage,
        placement=placement,
        registered=progress.registered,
        t0=started,
    )
    progress.catch_up(trained.history)
    return trained


def write_encoded(
    table: pa.Table,
    pre: Preprocessor,
    location: str | os.PathLike[str],
    *,
    shards: int,
    seed: int = 0,
) -> str:
    """Encode `table` and write it, rows shuffled, in row groups that split evenly over `shards`.

    `location` is a path or a URI (written through `pyarrow.fs`). Columns: `numeric` and
    `categorical` (fixed-size lists, so a reader gets one contiguous buffer per kind) and
    `target`. Written in place, not renamed: only this run's workers read it, after this returns.
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
    where = os.fspath(location)
    fs, path = files.resolve(where)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with pq.ParquetWriter(path, encoded_table.schema, filesystem=fs) as writer:
        for lo, hi in itertools.pairwise(bounds):
            writer.write_table(encoded_table.slice(lo, hi - lo), row_group_size=max(hi - lo, 1))
    return where


def _storage_location(location: str) -> str:
    """Ray Train storage as Ray takes it: a URI as it is, a local path made absolute."""
    return location.rstrip("/") if "://" in location else str(Path(location).resolve())


def _as_location(storage: str, fs_path: str) -> str:
    """A path on the storage's file system as a location like `storage`: a path, or a URI with
    the storage's scheme and options."""
    if "://" not in storage:
        return fs_path
    scheme, _, rest = storage.partition("://")
    _, mark, query = rest.partition("?")
    return f"{scheme}://{fs_path}{mark}{query}"


def _model_dir(result: ray.train.Result) -> tuple[Path, bool]:
    """Where the best model is exported, and whether that is a temporary folder: beside the run
    on local storage, else in a local temporary folder (`save_model` writes a local folder)."""
    run = Path(result.path)
    if isinstance(result.filesystem, pafs.LocalFileSystem):
        return run / "model", False
    return Path(tempfile.mkdtemp(prefix=f"driftloop-{run.name}-")) / "model", True


def _remove(location: str) -> None:
    fs, path = files.resolve(location)
    with contextlib.suppress(OSError):
        fs.delete_dir(path)


def _run_name(dataset: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{dataset}-{stamp}-{os.urandom(3).hex()}"


def _collect(
    result: ray.train.Result,
    *,
    metric: str,
    mode: Mode,
    storage: str,
    placement: Placement,
    registered: list[tuple[int, int]],
    t0: float,
) -> TrainResult:
    """Export the best checkpoint's model and gather what the loop returned."""
    run_path = _as_location(storage, str(result.path))
    best = result.get_best_checkpoint("val_metric", mode)
    if best is None:
        raise TrainingFailed(f"training run {run_path} finished without any checkpoint")
    model_dir, temporary = _model_dir(result)
    with best.as_directory() as folder:
        predictor = load_model(Path(folder) / "model")
        save_model(
            model_dir,
            model=predictor.model,
            spec=predictor.spec,
            preprocessor=predictor.preprocessor,
        )
    # Rank 0's return value (Train V2); else the newest checkpoint's state, which has the same
    # history: the result never depends on what reached the driver live.
    summary: dict[str, Any] = getattr(result, "return_value", None) or _checkpoint_state(
        result.checkpoint
    )
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
        run_path=run_path,
        checkpoints=[_as_location(storage, c.path) for c, _ in result.best_checkpoints or []],
        registered=list(registered),
        epoch_seconds=list(summary.get("epoch_seconds", [])),
        use_gpu=placement.use_gpu,
        seconds=time.perf_counter() - t0,
        model_dir_is_temporary=temporary,
    )


def _checkpoint_state(checkpoint: ray.train.Checkpoint | None) -> dict[str, Any]:
    """The loop's state saved in a checkpoint (history, attempts, best epoch and metric)."""
    if checkpoint is None:
        return {}
    fs: pafs.FileSystem = checkpoint.filesystem
    with fs.open_input_stream(f"{checkpoint.path}/state.json") as file:
        state: dict[str, Any] = json.loads(file.read())
    return state


def _failure_message(exc: Exception, *, name: str, config: TrainingConfig) -> str:
    from ray.train import ControllerError, WorkerGroupError

    if isinstance(exc, ControllerError):
        cause = exc.controller_failure
        if type(cause).__name__ in (
            "WorkerGroupStartupTimeoutError",
            "WorkerGroupStartupFailedError",
        ):
            return (
                f"training run {name} could not start its {config.num_workers} worker(s) in "
                f"{_START_RETRIES + 1} attempts; {_describe_error(cause)}"
            )
        return (
            f"training run {name} failed: the Ray Train controller failed: {_describe_error(cause)}"
        )
    if isinstance(exc, WorkerGroupError):
        what = (
            _describe_worker_failures(exc.worker_failures)
            if exc.worker_failures
            else _describe_error(exc)
        )
        return (
            f"training run {name} failed after {config.max_failures} restart(s) "
            f"(training.max_failures={config.max_failures}); {what}"
        )
    return f"training run {name} failed: {_describe_error(exc)}"


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
    """The error's type and first line; a first line that only introduces ("...errors:") takes
    the next one with it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    first = " ".join(lines[:2]) if lines and lines[0].endswith(":") else "".join(lines[:1])
    return f"{type(exc).__name__}: {first or 'no message'}"[:300]


class _ProgressTail:
    """Epoch reports from the Train controller to a callback in the driver.

    `callback` (for `RunConfig`) appends each registered report to a JSON-lines file in a local
    temporary folder; a driver thread follows it. Where the driver cannot see that file (Ray
    Client: the controller runs on the cluster), nothing arrives live and `catch_up` delivers
    the epochs from the final history instead, so `on_epoch` still sees every epoch once.
    """

    def __init__(self, on_epoch: Callable[[EpochRecord], None] | None) -> None:
        self._folder = tempfile.mkdtemp(prefix="driftloop-progress-")
        self.path = os.path.join(self._folder, "progress.jsonl")
        self.callback = progress_callback(self.path)
        self.registered: list[tuple[int, int]] = []
        self._on_epoch = on_epoch
        self._delivered: set[int] = set()
        self._offset = 0
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
            report = json.loads(line)
            if report.get("checkpoint"):
                self.registered.append((report["resumed_from_epoch"], report["epoch"]))
            self._deliver(EpochRecord(**{k: report[k] for k in _EPOCH_FIELDS}))

    def _deliver(self, record: EpochRecord) -> None:
        if self._on_epoch is None or record.epoch in self._delivered:
            return
        self._delivered.add(record.epoch)
        try:
            self._on_epoch(record)
        except Exception:  # a logging hiccup must not end training
            logger.exception("progress callback failed")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        shutil.rmtree(self._folder, ignore_errors=True)

    def catch_up(self, history: list[EpochRecord]) -> None:
        """Deliver the epochs that did not arrive live (the controller ran out of sight)."""
        missed = [r for r in history if r.epoch not in self._delivered]
        if missed and self._on_epoch is not None:
            logger.info(
                "%d epoch(s) did not reach the driver live (the Train controller runs where "
                "this process cannot see its files); reporting them from the result",
                len(missed),
            )
        for record in missed:
            self._deliver(record)


_EPOCH_FIELDS = [f.name for f in fields(EpochRecord)]


# Prefect ----------------------------------------------------------------------------------------


@task(name="train", cache_policy=NO_CACHE)
def train_task(
    *,
    train: pa.Table,
    validation: pa.Table,
    settings: Settings,
    storage_path: str | None = None,
    fault: FaultInjection | None = None,
) -> TrainResult:
    """Train on Ray Train and show the learning curve in the Prefect UI.

    The task run fails with `TrainingFailed`'s one-line reason when training cannot finish.
    """
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
        on_epoch=log_epoch, fault=fault,
    )  # fmt: skip
    logger.info(
        "best %s %.4f at epoch %d of %d%s on %d worker(s) (%s); model in %s",
        result.metric_name, result.best_metric, result.best_epoch, len(result.history),
        " (stopped early)" if result.stopped_early else "", len(result.workers),
        ", ".join(w.device for w in result.workers), result.model_dir,
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
