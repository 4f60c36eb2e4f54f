"""The driver of a Ray Train run: preprocessing, the run's configs, `fit()`, the result.

    result = train_model(train=parts.train, validation=parts.validation, settings=settings)
    predictor = load_model(result.model_dir)

`train_model` reads as its steps: check the rows, fit the preprocessing, place the workers on
the cluster, write the encoded splits where every node reads them, build Ray Train's configs,
fit, and collect the best checkpoint's model with the loop's summary. The per-worker loop lives
in `tasks.loop`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from tasks import files
from tasks.budget import Budget, plan_budget
from tasks.calibration import Calibration, calibrate
from tasks.cluster import cluster_nodes, connect_ray
from tasks.loop import (
    EpochRecord,
    FaultInjection,
    LoopConfig,
    LoopTraining,
    Mode,
    WorkerInfo,
    best_model_folder,
    train_loop_per_worker,
)
from tasks.model import Kind, ModelSpec, Predictor, Preprocessor, load_model, save_model
from tasks.train.checks import (
    START_RETRIES,
    Placement,
    TrainingFailed,
    check_storage_is_shared,
    failure_message,
    place_workers,
    warn_if_busy,
)
from tasks.train.encoded import as_location, remove, storage_location, write_encoded, write_splits
from tasks.train.progress import ProgressTail

if TYPE_CHECKING:
    import ray.train

    from tasks.settings import Settings, TrainingConfig

__all__ = ["METRICS", "TrainResult", "train_model", "write_encoded"]

METRICS: dict[Kind, tuple[str, Mode]] = {
    "binary": ("val_auc", "max"),
    "multiclass": ("val_accuracy", "max"),
    "regression": ("val_rmse", "min"),
}
logger = logging.getLogger(__name__)


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
    steps: int = 0  # optimizer steps run (the budget's, unless early stopping ended the run)
    budget: Budget | None = None  # planned from the training rows: the same on 1 or N workers
    calibration: Calibration | None = None  # the temperature fitted on the validation split


def train_model(
    *,
    train: pa.Table,
    validation: pa.Table,
    settings: Settings,
    storage_path: str | os.PathLike[str] | None = None,
    name: str | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    fault: FaultInjection | None = None,
    weights: np.ndarray | None = None,
    validation_weights: np.ndarray | None = None,
) -> TrainResult:
    """Fit the preprocessing and train the MLP with DDP on Ray Train; export the best model,
    with a temperature fitted on the validation split for a classifier (`training.calibrate`).

    The step budget (`tasks.budget`) is planned here, from the training rows and the global
    batch, and handed to every worker: 1 and N workers take the same optimizer steps.

    Args:
        train: the training split (the preprocessing is fitted on it alone).
        validation: the split that early stopping and checkpoint ranking look at.
        settings: resolved settings (`load_settings`), for the dataset contract and `training`.
        storage_path: Ray Train storage, a folder or a URI; default `<home>/ray`. Every node
            must see it: a bucket, or a folder on shared storage.
        name: the run's name; a new run with the name of an unfinished one resumes it.
        on_epoch: called in the driver as epochs finish (live progress), once per epoch.
        fault: a fault drill for tests and game days.
        weights: one per training row (>= 0): how much each row counts in the loss (a
            retraining's recency weights); None: every row alike.
        validation_weights: the same for the validation rows: how much each counts in the
            validation loss and metric (early stopping, the best round) and the temperature.

    Raises:
        TrainingFailed: too few rows for the workers, the cluster cannot hold the workers the
            settings ask for, a local storage folder is not shared by its nodes, or the run
            failed more often than `training.max_failures` allows.
    """
    started = time.perf_counter()
    config = settings.training
    _check_rows(train, validation, config)
    weights = _check_weights(weights, rows=train.num_rows, what="weights")
    validation_weights = _check_weights(
        validation_weights, rows=validation.num_rows, what="validation_weights"
    )
    pre = _fit_preprocessing(train, settings)
    spec = ModelSpec.build(pre, config)
    metric, mode = METRICS[pre.kind]
    budget = plan_budget(rows=train.num_rows, config=LoopTraining.of(config))
    logger.info(
        "budget: %d steps of %d rows (%.1f epochs), %d evaluation rounds of %d steps",
        budget.total_steps, budget.global_batch, budget.epochs, budget.rounds, budget.eval_every,
    )  # fmt: skip

    # Cluster: fail now on what it can never hold, or on storage its nodes cannot share
    placement = _place_on_cluster(config)
    storage = storage_location(os.fspath(storage_path or settings.location("ray")))
    check_storage_is_shared(storage)
    name = name or _run_name(settings.dataset.name)
    data_dir = files.join(storage, name, "data")
    progress = ProgressTail(on_epoch)
    try:
        # Data: encoded once, sharded by row group, where every node reads it
        paths = write_splits(
            {"train": (train, weights), "validation": (validation, validation_weights)},
            pre, data_dir=data_dir, shards=config.num_workers,
        )  # fmt: skip
        # Train loop config
        loop = LoopConfig(
            train_path=paths["train"],
            validation_path=paths["validation"],
            spec=spec,
            preprocessor=pre,
            training=LoopTraining.of(config),
            metric_mode=mode,
            fault=fault,
            budget=budget,
        )
        # Scaling config
        scaling = _scaling_config(config, placement)
        # Checkpoint config
        checkpoints = _checkpoint_config(config, mode)
        # Failure config
        failures = _failure_config(config)
        # Run config
        run = _run_config(name, storage, checkpoints, failures, progress)
        # Train
        result = _fit(loop, scaling, run, name=name, config=config)
    finally:
        progress.close()
        remove(data_dir)  # about 100 bytes a row; the checkpoints stay
    # Collect
    trained = _collect(
        result,
        metric=metric,
        mode=mode,
        storage=storage,
        placement=placement,
        registered=progress.registered,
        t0=started,
        validation=validation,
        calibrate_on=config.calibrate,
        bins=settings.evaluation.calibration_bins,
        budget=budget,
        validation_weights=validation_weights,
    )
    progress.catch_up(trained.history)
    return trained


# The steps of `train_model` ---------------------------------------------------------------------


def _check_rows(train: pa.Table, validation: pa.Table, config: TrainingConfig) -> None:
    """One training row per worker and one validation row at least, before Ray starts."""
    if train.num_rows < config.num_workers or validation.num_rows == 0:
        raise TrainingFailed(
            f"need at least {config.num_workers} training rows (one per worker, "
            f"training.num_workers={config.num_workers}) and one validation row; got "
            f"{train.num_rows} and {validation.num_rows}"
        )


def _check_weights(weights: np.ndarray | None, *, rows: int, what: str) -> np.ndarray | None:
    """One finite weight >= 0 per row, not all zero; scaled to average 1 (None stays None)."""
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (rows,) or not np.isfinite(w).all() or (w < 0).any() or not w.sum() > 0:
        raise TrainingFailed(
            f"{what}: need {rows} finite weights >= 0, not all zero; got shape {w.shape}"
        )
    return w / w.mean()


def _fit_preprocessing(train: pa.Table, settings: Settings) -> Preprocessor:
    """The preprocessing, fitted on the training split alone."""
    return Preprocessor.fit(
        train,
        features=settings.features,
        target=settings.dataset.target,
        task=settings.dataset.task,
    )


def _place_on_cluster(config: TrainingConfig) -> Placement:
    """Connect to Ray and choose GPU or CPU workers; fail now if the cluster can never hold
    them, warn if they must wait for other work."""
    connect_ray()
    placement = place_workers(config, nodes=cluster_nodes())
    if placement.reason:
        logger.log(logging.WARNING if placement.fell_back else logging.INFO, placement.reason)
    warn_if_busy(config, placement)
    return placement


def _scaling_config(config: TrainingConfig, placement: Placement) -> ray.train.ScalingConfig:
    """`num_workers` workers of `cpus_per_worker` CPUs each, plus one GPU each on GPU workers."""
    from ray.train import ScalingConfig

    gpu = {"GPU": 1} if placement.use_gpu else {}
    return ScalingConfig(
        num_workers=config.num_workers,
        use_gpu=placement.use_gpu,
        resources_per_worker={"CPU": config.cpus_per_worker, **gpu},
    )


def _checkpoint_config(config: TrainingConfig, mode: Mode) -> ray.train.CheckpointConfig:
    """Keep the `checkpoints_to_keep` best by the validation metric (Ray keeps the newest too)."""
    from ray.train import CheckpointConfig

    return CheckpointConfig(
        num_to_keep=config.checkpoints_to_keep,
        checkpoint_score_attribute="val_metric",
        checkpoint_score_order=mode,
    )


def _failure_config(config: TrainingConfig) -> ray.train.FailureConfig:
    """Restart the worker group `max_failures` times; retry starting it `START_RETRIES` times."""
    from ray.train import FailureConfig

    # mypy sees Train V1's classes behind `ray.train`; at run time they are V2's
    return FailureConfig(
        max_failures=config.max_failures,
        controller_failure_limit=START_RETRIES,  # type: ignore[call-arg]
    )


def _run_config(
    name: str,
    storage: str,
    checkpoints: ray.train.CheckpointConfig,
    failures: ray.train.FailureConfig,
    progress: ProgressTail,
) -> ray.train.RunConfig:
    """The run's name and storage, its checkpoint and failure configs, and the live progress."""
    from ray.train import RunConfig

    return RunConfig(
        name=name,
        storage_path=storage,
        checkpoint_config=checkpoints,
        failure_config=failures,
        callbacks=[progress.callback],  # type: ignore[list-item]
    )


def _fit(
    loop: LoopConfig,
    scaling: ray.train.ScalingConfig,
    run: ray.train.RunConfig,
    *,
    name: str,
    config: TrainingConfig,
) -> ray.train.Result:
    """Run the loop on the workers; a run that cannot finish is a one-line `TrainingFailed`."""
    import ray.train
    from ray.train.torch import TorchTrainer

    _poll_workers_often()
    trainer = TorchTrainer(
        train_loop_per_worker,  # type: ignore[arg-type]  # Ray keeps rank 0's return value
        train_loop_config={"loop": loop},
        scaling_config=scaling,
        run_config=run,
    )
    try:
        return trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise TrainingFailed(failure_message(exc, name=name, config=config)) from None


def _poll_workers_often() -> None:
    """The controller polls workers every 2 s by default, so a short run idles up to 2 s after
    its last report before it is noticed; polling every 0.25 s is cheap. A user's value wins.

    A process-wide variable because Ray Train 2.60 has no per-run way: no config field holds
    the interval, and `fit()` builds the controller's environment from this process's
    (`get_env_vars_to_propagate`); `RunConfig.worker_runtime_env` reaches the workers only.
    """
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


def _run_name(dataset: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{dataset}-{stamp}-{os.urandom(3).hex()}"


# The result -------------------------------------------------------------------------------------


def _collect(
    result: ray.train.Result,
    *,
    metric: str,
    mode: Mode,
    storage: str,
    placement: Placement,
    registered: list[tuple[int, int]],
    t0: float,
    validation: pa.Table,
    calibrate_on: bool,
    bins: int,
    budget: Budget,
    validation_weights: np.ndarray | None = None,
) -> TrainResult:
    """Export the best round's model, calibrated, and gather what the loop returned.

    The newest checkpoint carries the best round's weights (`tasks.loop.best_model_folder`),
    even when Ray Train no longer keeps that round's own checkpoint.
    """
    run_path = as_location(storage, str(result.path))
    newest = result.checkpoint
    if newest is None:
        raise TrainingFailed(f"training run {run_path} finished without any checkpoint")
    model_dir, temporary = _model_dir(result)
    with newest.as_directory() as folder:
        predictor = load_model(best_model_folder(folder))
    calibration = _fit_temperature(
        predictor, validation, enabled=calibrate_on, bins=bins, weights=validation_weights
    )
    save_model(
        model_dir,
        model=predictor.model,
        spec=predictor.spec,
        preprocessor=predictor.preprocessor,
        calibration=calibration,
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
        checkpoints=[as_location(storage, c.path) for c, _ in result.best_checkpoints or []],
        registered=list(registered),
        epoch_seconds=list(summary.get("epoch_seconds", [])),
        use_gpu=placement.use_gpu,
        seconds=time.perf_counter() - t0,
        model_dir_is_temporary=temporary,
        steps=int(summary.get("steps", 0)),
        budget=budget,
        calibration=calibration,
    )


def _fit_temperature(
    predictor: Predictor,
    validation: pa.Table,
    *,
    enabled: bool,
    bins: int,
    weights: np.ndarray | None = None,
) -> Calibration | None:
    """A classifier's temperature, fitted on the validation split, its rows weighted where
    `weights` are given (tasks.calibration)."""
    pre = predictor.preprocessor
    if not enabled or pre.kind == "regression" or validation.num_rows == 0:
        return None
    found = calibrate(
        predictor.logits(validation), pre.encode_target(validation), kind=pre.kind, bins=bins,
        weights=weights,
    )  # fmt: skip
    logger.info(
        "temperature %.3f on %d validation rows: log loss %.4f -> %.4f, ECE %.4f -> %.4f",
        found.temperature, found.rows, found.log_loss_before, found.log_loss_after,
        found.ece_before, found.ece_after,
    )  # fmt: skip
    return found


def _model_dir(result: ray.train.Result) -> tuple[Path, bool]:
    """Where the best model is exported, and whether that is a temporary folder: beside the run
    on local storage, else in a local temporary folder (`save_model` writes a local folder)."""
    run = Path(result.path)
    if isinstance(result.filesystem, pafs.LocalFileSystem):
        return run / "model", False
    return Path(tempfile.mkdtemp(prefix=f"driftloop-{run.name}-")) / "model", True


def _checkpoint_state(checkpoint: ray.train.Checkpoint | None) -> dict[str, Any]:
    """The loop's state saved in a checkpoint (history, attempts, best epoch and metric)."""
    if checkpoint is None:
        return {}
    fs: pafs.FileSystem = checkpoint.filesystem
    with fs.open_input_stream(f"{checkpoint.path}/state.json") as file:
        state: dict[str, Any] = json.loads(file.read())
    return state
