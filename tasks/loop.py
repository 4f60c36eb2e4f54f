"""The per-worker training loop: runs in every Ray Train worker, imports no Prefect.

`tasks.train.train_model` is its driver. Workers import this module (torch, pyarrow and
`tasks.model`), so it stays free of the orchestration stack: Prefect alone would add about 2 s and
100 MB to every worker's start.


Ingest. The driver fits the preprocessing on the training split, encodes both splits once and
writes them as Parquet under the run's storage folder: one fixed-size-list column per input kind,
rows shuffled, row groups of equal size in a multiple of the worker count. Each worker reads only
its own row groups (`rank::world_size`) with pyarrow straight into tensors, once, and iterates
in-memory batches (one shuffled gather per epoch, then contiguous slices). Measured by
bench/bench_train.py on 2 busy cores (850k rows, 128-row batches per worker; bench/RESULTS.md),
against reading the same Parquet with pyarrow straight into tensors: the first epoch (read +
batches) 0.75x of that read in a fresh process (0.17x of a warm process, which no longer pays
this VM's first touch of fresh memory), later epochs 1.1x (the tensors are reused), Ray Data's
`get_dataset_shard` + `iter_torch_batches` 0.016x (0.12-0.21x in STACK.md with larger batches).
The price is that a
worker's shard must fit in its memory, which holds for the tabular sizes driftloop targets
(1M rows x 20 features is 80 MB of float32). The data lies under the run's Ray Train storage,
which every node sees (a bucket URI or a shared folder; Ray Train requires it for checkpoints
anyway), and is read through `pyarrow.fs`; the driver deletes it when the run ends.

Recovery. Rank 0 reports a checkpoint every epoch (model directory, optimizer state, epoch, best
metric, history). After a worker dies, Ray Train restarts the whole worker group (up to
`training.max_failures` times) and the loop resumes from `ray.train.get_checkpoint()`; the
state records the checkpoint epoch each attempt loaded. Epoch shuffles and dropout are seeded per
(seed, epoch, rank), so a resumed run repeats what the lost epochs would have done, and two runs
with the same seed and workers learn the same history.
"""

from __future__ import annotations

import json
import math
import os
import resource
import socket
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from tasks import files
from tasks.model import (
    ModelSpec,
    Preprocessor,
    TabularMLP,
    compute_loss,
    save_model,
    to_predictions,
    unwrap,
)

if TYPE_CHECKING:
    from tasks.model import Kind
    from tasks.settings import TrainingConfig

Mode = Literal["max", "min"]
_AUC_BINS = 4096  # the all-reducible AUC is exact up to ties within 1/4096 of a probability
_MIN_DELTA = 1e-4  # relative improvement the validation metric needs to reset the patience


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
    device: str  # cpu, or cuda:N when the worker trained on a GPU
    peak_rss_mb: float
    code_path: str  # where the worker imported driftloop's `tasks` from (shipped on a cluster)


@dataclass(frozen=True)
class LoopTraining:
    """The `TrainingConfig` fields the loop needs, as a plain picklable object."""

    epochs: int
    batch_size: int  # global: each of the N workers takes batch_size // N rows per step
    learning_rate: float
    weight_decay: float
    patience: int
    seed: int
    threads: int

    @classmethod
    def of(cls, config: TrainingConfig) -> LoopTraining:
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
    training: LoopTraining
    metric_mode: Mode
    fault: FaultInjection | None = None


@dataclass
class _State:
    """What a checkpoint carries besides the weights and the optimizer."""

    epoch: int = 0
    best_metric: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)  # the checkpoint epoch each attempt loaded


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
            model.load_state_dict(load_file(str(Path(folder) / "model" / files.WEIGHTS)))
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

    walls: list[float] = []  # this attempt's epochs, checkpoint and report included
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
        walls.append(time.perf_counter() - started)

    workers = _all_gather(_worker_info(rank, device), world)
    return {
        "history": state.history,
        "attempts": state.attempts,
        "best_epoch": state.best_epoch,
        "best_metric": state.best_metric,
        "stopped_early": state.bad_epochs >= hp.patience and state.epoch < hp.epochs,
        "workers": workers,
        "epoch_seconds": walls,
    }


def read_shard(path: str, *, rank: int, world_size: int) -> Shard:
    """This worker's row groups (`rank::world_size`) of an encoded split, as tensors."""
    fs, fs_path = files.resolve(path)
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
    fs, fs_path = files.resolve(path)
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
    seed: tuple[int, int, int],  # (seed, epoch, rank)
    fault: FaultInjection | None = None,
) -> float:
    """One pass over a shuffled shard in `steps` batches; the mean training loss of all workers.

    Epoch 1 takes the rows in stored order: `write_encoded` already wrote them in a seeded random
    order, so the first epoch skips a gather of the whole shard. Later epochs reshuffle.
    """
    model.train()
    torch.manual_seed(_seed((*seed, 1)))  # dropout
    shuffled = shard
    if seed[1] > 1:
        generator = torch.Generator().manual_seed(_seed(seed))
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


def _worker_info(rank: int, device: torch.device) -> dict[str, Any]:
    import ray

    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return asdict(
        WorkerInfo(
            rank=rank,
            node_id=ray.get_runtime_context().get_node_id(),
            hostname=socket.gethostname(),
            pid=os.getpid(),
            device=str(device),
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
