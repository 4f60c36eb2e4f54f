"""Data-parallel training on Ray Train: from a laptop to a Ray cluster with the same code.

    result = train_model(train=parts.train, validation=parts.validation, settings=settings)
    predictor = load_model(result.model_dir)

Ray is reused when the process already runs it; otherwise `RAY_ADDRESS` names a cluster to join
(the `tasks` package reaches its workers through the runtime environment), or a local instance
starts, its dashboard bound to 127.0.0.1.

Ingest. The driver fits the preprocessing on the training split, encodes both splits once and
writes them as Parquet under the run's storage folder: one fixed-size-list column per input kind,
rows shuffled, row groups of equal size in a multiple of the worker count. Each worker reads only
its own row groups (`rank::world_size`) with pyarrow straight into tensors, once, and iterates
in-memory batches (one shuffled gather per epoch, then contiguous slices). Measured by
bench/bench_train.py on 2 busy cores (850k rows, 128-row batches per worker), against reading the
same Parquet with pyarrow straight into tensors: the first epoch (read + shuffle + batches)
0.43x, later epochs 1.45x (the tensors are reused), Ray Data's `get_dataset_shard` +
`iter_torch_batches` 0.015x (0.12-0.21x in STACK.md with larger batches). The price is that a
worker's shard must fit in its memory, which holds for the tabular sizes driftloop targets
(1M rows x 20 features is 80 MB of float32). The storage folder must be visible to every node
(a shared path, or later an object-store URI), which Ray Train requires for checkpoints anyway.

Recovery. Rank 0 reports a checkpoint every epoch (model directory, optimizer state, epoch, best
metric, history). After a worker dies, Ray Train restarts the whole worker group (up to
`training.max_failures` times) and the loop resumes from `ray.train.get_checkpoint()`. Epoch
shuffles and dropout are seeded per (seed, epoch, rank), so a resumed run repeats what the lost
epochs would have done.
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
import resource
import socket
import sys
import tempfile
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
import torch
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from safetensors.torch import load_file

from tasks import data
from tasks.errors import DriftloopError
from tasks.model import (
    Kind,
    ModelSpec,
    Preprocessor,
    TabularMLP,
    compute_loss,
    load_model,
    save_model,
    to_predictions,
    unwrap,
)

if TYPE_CHECKING:
    import ray.train

    from tasks.settings import Settings, TrainingConfig

Mode = Literal["max", "min"]
METRICS: dict[Kind, tuple[str, Mode]] = {
    "binary": ("val_auc", "max"),
    "multiclass": ("val_accuracy", "max"),
    "regression": ("val_rmse", "min"),
}
_ROWS_PER_GROUP = 131_072  # Parquet row group size cap: the unit a worker reads
_AUC_BINS = 4096  # the all-reducible AUC is exact up to ties within 1/4096 of a probability
_MIN_DELTA = 1e-4  # relative improvement the validation metric needs to reset the patience


class TrainingFailed(DriftloopError, RuntimeError):
    """Training did not finish: the message says what failed and how many restarts were spent."""


@dataclass(frozen=True)
class FaultInjection:
    """A fault drill: worker `rank` exits mid-way through `epoch`, once (`marker` remembers it)."""

    epoch: int
    rank: int
    marker: str  # a file path every worker can see; created when the fault fires


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float
    val_metric: float
    seconds: float


@dataclass(frozen=True)
class WorkerInfo:
    rank: int
    node_id: str
    hostname: str
    pid: int
    peak_rss_mb: float
    code_path: str  # where the worker imported driftloop's `tasks` from (shipped on a cluster)


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
    storage = Path(storage_path or settings.home / "ray").resolve()
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
    progress = _ProgressQueue(on_epoch) if on_epoch else None
    loop = LoopConfig(
        train_path=str(paths["train"]),
        validation_path=str(paths["validation"]),
        spec=spec,
        preprocessor=pre,
        training=_LoopTraining.of(config),
        metric_mode=mode,
        fault=fault,
        progress=progress.queue if progress else None,
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


class _ProgressQueue:
    """Epoch records from rank 0 to a callback in the driver, through a CPU-free queue actor."""

    def __init__(self, callback: Callable[[EpochRecord], None]) -> None:
        from ray.util.queue import Queue

        self.queue = Queue(actor_options={"num_cpus": 0})
        self._callback = callback
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="train-progress", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        from ray.util.queue import Empty

        while True:
            try:
                record = self.queue.get(timeout=0.5)
            except Empty:
                if self._stop.is_set():
                    return
                continue
            except Exception:  # the queue actor is gone: nothing more will come
                return
            try:
                self._callback(EpochRecord(**record))
            except Exception:  # a logging hiccup must not end training
                logging.getLogger(__name__).exception("progress callback failed")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.queue.shutdown()


# Worker loop (runs in every Ray Train worker; no Prefect here) -----------------------------------


@dataclass(frozen=True)
class _LoopTraining:
    """The `TrainingConfig` fields the loop needs, as a plain picklable object."""

    epochs: int
    batch_size: int  # global: each of the N workers takes batch_size // N rows per step
    learning_rate: float
    weight_decay: float
    patience: int
    seed: int
    threads: int

    @classmethod
    def of(cls, config: TrainingConfig) -> _LoopTraining:
        return cls(
            epochs=config.epochs,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
            patience=config.early_stopping_patience,
            seed=config.seed,
            threads=max(1, int(config.cpus_per_worker)),
        )


@dataclass(frozen=True)
class LoopConfig:
    train_path: str
    validation_path: str
    spec: ModelSpec
    preprocessor: Preprocessor
    training: _LoopTraining
    metric_mode: Mode
    fault: FaultInjection | None = None
    progress: Any = None  # a ray.util.queue.Queue, or None


@dataclass
class _State:
    """What a checkpoint carries besides the weights and the optimizer."""

    epoch: int = 0
    best_metric: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Shard:
    numeric: torch.Tensor
    categorical: torch.Tensor
    target: torch.Tensor

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def take(self, index: torch.Tensor) -> Shard:
        """The rows at `index`, copied (numpy's take is several times faster on CPU here)."""
        parts = (self.numeric, self.categorical, self.target)
        if index.device.type != "cpu":
            return Shard(*(t.index_select(0, index) for t in parts))
        rows = index.numpy()
        return Shard(*(torch.from_numpy(np.take(t.numpy(), rows, axis=0)) for t in parts))

    def slice(self, start: int, stop: int) -> Shard:
        return Shard(
            self.numeric[start:stop], self.categorical[start:stop], self.target[start:stop]
        )

    def to(self, device: torch.device) -> Shard:
        return Shard(self.numeric.to(device), self.categorical.to(device), self.target.to(device))


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """One DDP worker: read its shard, resume from the last checkpoint, train, validate, report."""
    import ray.train
    import ray.train.torch

    cfg: LoopConfig = config["loop"]
    hp = cfg.training
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(hp.threads)
    device = ray.train.torch.get_device()
    train = read_shard(cfg.train_path, rank=rank, world_size=world).to(device)
    validation = read_shard(cfg.validation_path, rank=rank, world_size=world).to(device)
    steps = _steps_per_epoch(cfg.train_path, world_size=world, batch_size=hp.batch_size)
    kind = cfg.preprocessor.kind

    torch.manual_seed(hp.seed)
    model = TabularMLP(cfg.spec)
    optimizer_state, state = None, _State()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            model.load_state_dict(load_file(str(Path(folder) / "model" / "weights.safetensors")))
            optimizer_state = torch.load(
                Path(folder) / "optimizer.pt", map_location="cpu", weights_only=True
            )
            state = _State(**json.loads((Path(folder) / "state.json").read_text()))
    state.attempts.append(state.epoch)
    ddp = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(
        ddp.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay
    )
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)

    while state.epoch < hp.epochs and state.bad_epochs < hp.patience:
        epoch, started = state.epoch + 1, time.perf_counter()
        crash = (
            cfg.fault if cfg.fault and (cfg.fault.epoch, cfg.fault.rank) == (epoch, rank) else None
        )
        train_loss = run_epoch(
            ddp, optimizer, train, kind=kind, steps=steps, batch=hp.batch_size // world,
            seed=(hp.seed, epoch, rank), fault=crash,
        )  # fmt: skip
        val_loss, val_metric = evaluate(
            ddp, validation, kind=kind, target_std=cfg.preprocessor.target_std
        )
        record = EpochRecord(epoch, train_loss, val_loss, val_metric, time.perf_counter() - started)
        _advance(state, record, mode=cfg.metric_mode)
        metrics = {**asdict(record), "resumed_from_epoch": state.attempts[-1]}
        with tempfile.TemporaryDirectory() as folder:
            saved = None
            if rank == 0:
                _write_checkpoint(Path(folder), ddp, optimizer, state, cfg)
                saved = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=saved)
        if rank == 0 and cfg.progress is not None:
            with contextlib.suppress(Exception):  # progress is best effort
                cfg.progress.put_nowait(asdict(record))

    workers = _all_gather(_worker_info(rank), world)
    return {
        "history": state.history,
        "attempts": state.attempts,
        "best_epoch": state.best_epoch,
        "best_metric": state.best_metric,
        "stopped_early": state.bad_epochs >= hp.patience and state.epoch < hp.epochs,
        "workers": workers,
    }


def read_shard(path: str, *, rank: int, world_size: int) -> Shard:
    """This worker's row groups (`rank::world_size`) of an encoded split, as tensors."""
    fs, fs_path = data.resolve(path)
    parquet = pq.ParquetFile(fs_path, filesystem=fs, pre_buffer=True)
    table = parquet.read_row_groups(list(range(rank, parquet.num_row_groups, world_size)))
    n = table.num_rows
    numeric = _matrix(table, "numeric", np.float32, n)
    categorical = _matrix(table, "categorical", np.int64, n)
    target = table.column("target").to_numpy()
    with warnings.catch_warnings():  # Arrow buffers are read-only; nothing writes into them
        warnings.simplefilter("ignore", UserWarning)
        return Shard(
            torch.from_numpy(numeric), torch.from_numpy(categorical), torch.from_numpy(target)
        )


def _matrix(table: pa.Table, column: str, dtype: type, rows: int) -> np.ndarray:
    if column not in table.column_names:
        return np.zeros((rows, 0), dtype=dtype)
    lists = table.column(column).combine_chunks()
    return lists.values.to_numpy().reshape(rows, lists.type.list_size)


def _steps_per_epoch(path: str, *, world_size: int, batch_size: int) -> int:
    """The same step count on every worker (DDP needs it): the smallest shard decides."""
    fs, fs_path = data.resolve(path)
    meta = pq.ParquetFile(fs_path, filesystem=fs).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    smallest = min(sum(sizes[r::world_size]) for r in range(world_size))
    return max(1, -(-smallest // max(1, batch_size // world_size)))


def run_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    shard: Shard,
    *,
    kind: Kind,
    steps: int,
    batch: int,
    seed: tuple[int, int, int],
    fault: FaultInjection | None = None,
) -> float:
    """One pass over a shuffled shard in `steps` batches; the mean training loss of all workers."""
    model.train()
    generator = torch.Generator().manual_seed(_seed(seed))
    torch.manual_seed(_seed((*seed, 1)))  # dropout
    order = torch.randperm(len(shard), generator=generator).to(shard.target.device)
    shuffled = shard.take(order)
    batch = max(1, batch)
    total = torch.zeros(2, dtype=torch.float64, device=shard.target.device)  # loss sum, rows
    for step in range(steps):  # `steps` batches fit in the smallest shard: none is empty
        if fault and step == steps // 2:
            _fire(fault)
        part = shuffled.slice(step * batch, (step + 1) * batch)
        loss = compute_loss(model(part.numeric, part.categorical), part.target, kind=kind).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total[0] += loss.detach().double() * len(part)
        total[1] += len(part)
    _all_reduce(total)
    return float(total[0] / total[1])


def evaluate(
    model: torch.nn.Module, shard: Shard, *, kind: Kind, target_std: float = 1.0
) -> tuple[float, float]:
    """Validation loss and metric over all workers' shards (sums all-reduced, not averaged).

    The metric is the AUC (binary), the accuracy (multiclass) or the RMSE in target units.
    """
    model.eval()
    device = shard.target.device
    with torch.no_grad():
        outputs = unwrap(model)(shard.numeric, shard.categorical) if len(shard) else None
        if kind == "binary":
            hist = torch.zeros(2, _AUC_BINS, dtype=torch.float64, device=device)
            if outputs is not None:
                p = to_predictions(outputs, kind=kind)[:, 1]
                bins = (p * _AUC_BINS).long().clamp(0, _AUC_BINS - 1)
                labels = shard.target.long()
                hist.index_put_((labels, bins), torch.ones_like(p, dtype=torch.float64), True)
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, count, metric sum
        if outputs is not None:
            sums[0] = compute_loss(outputs, shard.target, kind=kind).double().sum()
            sums[1] = len(shard)
            if kind == "multiclass":
                sums[2] = (outputs.argmax(1) == shard.target).double().sum()
    _all_reduce(sums)
    loss = float(sums[0] / sums[1])
    if kind == "binary":
        _all_reduce(hist)
        return loss, auc_from_histograms(hist[1], hist[0])
    if kind == "multiclass":
        return loss, float(sums[2] / sums[1])
    return loss, math.sqrt(loss) * target_std


def auc_from_histograms(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """ROC AUC from per-bin counts of positive and negative scores (ties count one half)."""
    pos, neg = positive.double(), negative.double()
    n_pos, n_neg = float(pos.sum()), float(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5
    below = torch.cumsum(neg, 0) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg))


def _advance(state: _State, record: EpochRecord, *, mode: Mode) -> None:
    state.epoch = record.epoch
    state.history.append(asdict(record))
    best = state.best_metric
    margin = _MIN_DELTA * max(1.0, abs(best)) if best is not None else 0.0
    better = best is None or (
        record.val_metric > best + margin if mode == "max" else record.val_metric < best - margin
    )
    if better:
        state.best_metric, state.best_epoch, state.bad_epochs = record.val_metric, record.epoch, 0
    else:
        state.bad_epochs += 1


def _write_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: _State,
    cfg: LoopConfig,
) -> None:
    save_model(folder / "model", model=model, spec=cfg.spec, preprocessor=cfg.preprocessor)
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    (folder / "state.json").write_text(json.dumps(asdict(state)))


def _fire(fault: FaultInjection) -> None:
    """Exit this worker abruptly, once per marker file."""
    marker = Path(fault.marker)
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"fault fired in pid {os.getpid()}\n")
    sys.stdout.flush()
    os._exit(1)


def _worker_info(rank: int) -> dict[str, Any]:
    import ray

    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return asdict(
        WorkerInfo(
            rank=rank,
            node_id=ray.get_runtime_context().get_node_id(),
            hostname=socket.gethostname(),
            pid=os.getpid(),
            peak_rss_mb=rss_kb / 1024,
            code_path=str(Path(__file__).resolve().parent),
        )
    )


def _all_reduce(tensor: torch.Tensor) -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)


def _all_gather(item: dict[str, Any], world_size: int) -> list[dict[str, Any]]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [item]
    items: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(items, item)
    return items


def _seed(parts: tuple[int, ...]) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


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
