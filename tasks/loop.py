"""The per-worker training loop: runs in every Ray Train worker, imports no Prefect.

`tasks.train.train_model` is its driver. Workers import this module (torch, pyarrow and
`tasks.model`), so it stays free of the orchestration stack: Prefect alone would add about 2 s and
100 MB to every worker's start.


Ingest: `tasks.shards` (each worker reads its own row groups straight into tensors).

Budget. `tasks.budget.plan_budget` fixes the optimizer steps once from the training rows and
the global batch (the driver computes it and passes it in `LoopConfig.budget`), so 1 and N workers
take exactly the same steps. Each worker draws its `global // N` rows a step from its shard as a
stream of seeded passes: pass p is a permutation seeded by (seed, p, rank) (pass 0 keeps the
stored order, which `write_encoded` already shuffled), and step s is batch s % per_pass of pass
s // per_pass, so the stream never runs out of rows and a resume at step s continues it exactly.
The learning rate warms up linearly, then decays on a cosine (`tasks.budget.lr_factor`; AdamW
with weight decay).

Rounds. Every `budget.eval_every` steps the loop validates, checkpoints and reports: an
"epoch" in `EpochRecord`, `FaultInjection` and the history is one such evaluation round (one
pass over the data for a large table; for a small one, many passes), and `EpochRecord.step`
says how many optimizer steps had run. Early stopping counts rounds whose validation LOSS did
not improve (`training.early_stopping_patience`); the best model is the round with the best
validation metric (ties go to the lower validation loss), and Ray Train ranks the checkpoints it
keeps by that metric. Each checkpoint also carries the best round's weights (`best/`, when that
is not the round itself), so the best model is exported from the newest checkpoint even when
Ray Train dropped the best round's own.

Recovery. Rank 0 reports a checkpoint every round (model directory, optimizer and scheduler
state, the round, the step, best metric, history). After a worker dies, Ray Train restarts the
whole worker group (up to `training.max_failures` times) and the loop resumes from
`ray.train.get_checkpoint()`; the state records the checkpoint round each attempt loaded. Passes
and dropout are seeded per (seed, pass or round, rank), so a resumed run repeats what the lost
rounds would have done, and two runs with the same seed and workers learn the same history.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file

from tasks import files
from tasks.budget import Budget, lr_factor, plan_budget
from tasks.model import (
    ModelSpec,
    Preprocessor,
    TabularMLP,
    compute_loss,
    save_model,
    to_predictions,
    unwrap,
)
from tasks.shards import BatchStream, Shard, count_rows, read_shard

__all__ = [  # the shard readers are re-exported: the driver, benchmarks and tests use them here
    "BatchStream",
    "Shard",
    "count_rows",
    "read_shard",
]

if TYPE_CHECKING:
    from tasks.model import Kind
    from tasks.settings import TrainingConfig

Mode = Literal["max", "min"]
_AUC_BINS = 4096  # the all-reducible AUC is exact up to ties within 1/4096 of a probability
_MIN_DELTA = 1e-4  # relative improvement a validation metric or loss needs to count
BEST = "best"  # a checkpoint's folder with the best round's model, when not the round itself


@dataclass(frozen=True)
class FaultInjection:
    """A fault drill: worker `rank` exits mid-way through round `epoch`, once (`marker` remembers
    it). A round is one evaluation round of the step budget (see the module docstring)."""

    epoch: int
    rank: int
    marker: str  # a file path every worker can see; created when the fault fires


@dataclass(frozen=True)
class EpochRecord:
    """One evaluation round: `epoch` numbers the round, `step` the optimizer steps run by then."""

    epoch: int
    train_loss: float  # mean over the round's steps and all workers
    val_loss: float
    val_metric: float
    seconds: float
    step: int = 0


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
    patience: int  # evaluation rounds without a better validation loss before stopping
    seed: int
    threads: int
    min_steps: int = 0
    max_steps: int | None = None
    max_evaluations: int = 1_000_000
    warmup_share: float = 0.0
    min_lr_share: float = 1.0  # 1.0: a constant learning rate

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
            min_steps=config.min_steps,
            max_steps=config.max_steps,
            max_evaluations=config.max_evaluations,
            warmup_share=config.warmup_share,
            min_lr_share=config.min_lr_share,
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
    budget: Budget | None = None  # None: planned from the training file's row count


@dataclass
class _State:
    """What a checkpoint carries besides the weights, the optimizer and the scheduler."""

    epoch: int = 0  # evaluation rounds done
    step: int = 0  # optimizer steps done
    best_metric: float | None = None
    best_epoch: int = 0
    best_loss: float | None = None  # the best round's validation loss (breaks metric ties)
    lowest_loss: float | None = None  # the lowest validation loss so far (early stopping)
    bad_epochs: int = 0  # rounds since the validation loss last improved
    history: list[dict[str, float]] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)  # the checkpoint round each attempt loaded

    @classmethod
    def from_json(cls, text: str) -> _State:
        raw = json.loads(text)
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})


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
    budget = cfg.budget or plan_budget(rows=count_rows(cfg.train_path), config=hp)
    stream = BatchStream(train, batch=budget.per_worker_batch(world), seed=hp.seed, rank=rank)
    kind = cfg.preprocessor.kind

    torch.manual_seed(hp.seed)
    model = TabularMLP(cfg.spec)
    saved: dict[str, Any] = {}
    state = _State()
    best: dict[str, torch.Tensor] | None = None  # the best round's weights (rank 0 keeps them)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state, best, saved = _read_checkpoint(Path(folder), model)
    state.attempts.append(state.epoch)
    ddp = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(
        ddp.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay
    )
    scheduler = make_scheduler(optimizer, budget, min_lr_share=hp.min_lr_share)
    if saved:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])

    walls: list[float] = []  # this attempt's rounds, checkpoint and report included
    while state.step < budget.total_steps and state.bad_epochs < hp.patience:
        epoch, started = state.epoch + 1, time.perf_counter()
        crash = (
            cfg.fault if cfg.fault and (cfg.fault.epoch, cfg.fault.rank) == (epoch, rank) else None
        )
        stop = budget.round_end(epoch)
        train_loss = run_steps(
            ddp, optimizer, stream, kind=kind, start=state.step, stop=stop, scheduler=scheduler,
            dropout_seed=(hp.seed, epoch, rank), fault=crash,
        )  # fmt: skip
        val_loss, val_metric = evaluate(
            ddp, validation, kind=kind, target_std=cfg.preprocessor.target_std
        )
        seconds = time.perf_counter() - started
        record = EpochRecord(epoch, train_loss, val_loss, val_metric, seconds, step=stop)
        state.step = stop
        if _advance(state, record, mode=cfg.metric_mode) and rank == 0:
            best = _weights(ddp)
        metrics = {**asdict(record), "resumed_from_epoch": state.attempts[-1]}
        with tempfile.TemporaryDirectory() as folder:
            report = None
            if rank == 0:
                other = best if state.best_epoch != epoch else None  # None: this round is best
                _write_checkpoint(Path(folder), ddp, optimizer, scheduler, state, cfg, best=other)
                report = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=report)
        walls.append(time.perf_counter() - started)

    workers = _all_gather(_worker_info(rank, device), world)
    return {
        "history": state.history,
        "attempts": state.attempts,
        "best_epoch": state.best_epoch,
        "best_metric": state.best_metric,
        "stopped_early": state.bad_epochs >= hp.patience and state.step < budget.total_steps,
        "steps": state.step,
        "budget": asdict(budget),
        "workers": workers,
        "epoch_seconds": walls,
    }


def make_scheduler(
    optimizer: torch.optim.Optimizer, budget: Budget, *, min_lr_share: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay (`tasks.budget.lr_factor`), stepped once per step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, budget, min_lr_share=min_lr_share)
    )


def run_steps(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    stream: BatchStream,
    *,
    kind: Kind,
    start: int,
    stop: int,
    dropout_seed: tuple[int, ...],
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    fault: FaultInjection | None = None,
) -> float:
    """Optimizer steps `start` .. `stop - 1` from the stream; the mean loss of all workers."""
    model.train()
    torch.manual_seed(_seed((*dropout_seed, 1)))
    total = torch.zeros(2, dtype=torch.float64, device=stream.shard.target.device)  # sum, rows
    for step in range(start, stop):
        if fault and step == (start + stop) // 2:
            _fire(fault)
        part = stream.at(step)
        # weights average 1 over the training rows (the driver scales them): a batch's loss is
        # its rows' weighted sum over its size, so rows count by their weight, batches alike
        losses = compute_loss(model(part.numeric, part.categorical), part.target, kind=kind)
        loss = (losses * part.weight).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total[0] += loss.detach().double() * len(part)
        total[1] += len(part)
    _all_reduce(total)
    return float(total[0] / total[1]) if float(total[1]) else math.nan


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
    """`steps` batches of `batch` rows, as epoch `seed[1]` (1-based) of a constant learning rate:
    the loop's steps without a budget, for benchmarks that time an epoch."""
    stream = BatchStream(shard, batch=batch, seed=seed[0], rank=seed[2])
    first = (seed[1] - 1) * steps
    return run_steps(model, optimizer, stream, kind=kind, start=first, stop=first + steps,
                     dropout_seed=seed, fault=fault)  # fmt: skip


def evaluate(
    model: torch.nn.Module, shard: Shard, *, kind: Kind, target_std: float = 1.0
) -> tuple[float, float]:
    """Validation loss and metric over all workers' shards (sums all-reduced, not averaged),
    each row counted by its weight.

    The metric is the AUC (binary), the accuracy (multiclass) or the RMSE in target units.
    """
    model.eval()
    device = shard.target.device
    weight = shard.weight.double()
    with torch.no_grad():
        outputs = unwrap(model)(shard.numeric, shard.categorical) if len(shard) else None
        if kind == "binary":
            hist = torch.zeros(2, _AUC_BINS, dtype=torch.float64, device=device)
            if outputs is not None:
                p = to_predictions(outputs, kind=kind)[:, 1]
                bins = (p * _AUC_BINS).long().clamp(0, _AUC_BINS - 1)
                labels = shard.target.long()
                hist.index_put_((labels, bins), weight, True)
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, weight, metric sum
        if outputs is not None:
            sums[0] = (compute_loss(outputs, shard.target, kind=kind).double() * weight).sum()
            sums[1] = weight.sum()
            if kind == "multiclass":
                sums[2] = ((outputs.argmax(1) == shard.target).double() * weight).sum()
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


def _advance(state: _State, record: EpochRecord, *, mode: Mode) -> bool:
    """Record a round; True when it is the best so far (by the metric, ties: the lower loss).

    Early stopping counts the rounds since the validation loss last improved.
    """
    state.epoch = record.epoch
    state.history.append(asdict(record))
    best, loss = state.best_metric, record.val_loss
    margin = _MIN_DELTA * max(1.0, abs(best)) if best is not None else 0.0
    better = best is None or (
        record.val_metric > best + margin if mode == "max" else record.val_metric < best - margin
    )
    if not better and best is not None and record.val_metric == best:
        better = state.best_loss is not None and _lower(loss, state.best_loss)
    if better:
        state.best_metric, state.best_epoch, state.best_loss = record.val_metric, record.epoch, loss
    if state.lowest_loss is None or _lower(loss, state.lowest_loss):
        state.lowest_loss, state.bad_epochs = loss, 0
    else:
        state.bad_epochs += 1
    return better


def _lower(loss: float, reference: float) -> bool:
    """`loss` improves on `reference` by more than the relative margin."""
    return loss < reference - _MIN_DELTA * abs(reference)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}


def _write_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: _State,
    cfg: LoopConfig,
    *,
    best: dict[str, torch.Tensor] | None,
) -> None:
    """The round's model, optimizer, scheduler and state; `best`: the best round's weights when
    that is an earlier round (written as a second model directory, `best/`)."""
    save_model(folder / "model", model=model, spec=cfg.spec, preprocessor=cfg.preprocessor)
    if best is not None:
        net = TabularMLP(cfg.spec)
        net.load_state_dict(best)
        save_model(folder / BEST, model=net, spec=cfg.spec, preprocessor=cfg.preprocessor)
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
        folder / "optimizer.pt",
    )
    (folder / "state.json").write_text(json.dumps(asdict(state)))


def _read_checkpoint(
    folder: Path, model: torch.nn.Module
) -> tuple[_State, dict[str, torch.Tensor], dict[str, Any]]:
    """Load a checkpoint's weights into `model`; its state, the best round's weights and the
    optimizer and scheduler states."""
    model.load_state_dict(load_file(str(folder / "model" / files.WEIGHTS)))
    best_file = folder / BEST / files.WEIGHTS
    best = load_file(str(best_file)) if best_file.exists() else _weights(model)
    saved = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
    state = _State.from_json((folder / "state.json").read_text())
    return state, best, saved


def best_model_folder(checkpoint: str | Path) -> Path:
    """The best round's model directory inside a (local) checkpoint folder."""
    folder = Path(checkpoint)
    return folder / BEST if (folder / BEST).exists() else folder / "model"


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
