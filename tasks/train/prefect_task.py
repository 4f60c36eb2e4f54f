"""The Prefect tasks of training: the rows a training trains on (a retraining's recency choice
in the log), and `train_model` with its epochs in the task's log and the learning curve as
artifacts. The only module of `tasks.train` that imports Prefect."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks import artifacts, data
from tasks.cluster import connect_ray, dashboard_url
from tasks.loop import EpochRecord, FaultInjection
from tasks.train.driver import TrainResult, train_model
from tasks.train.progress import learning_curve_markdown
from tasks.train.recency import Labelled, TrainingRows, training_rows

if TYPE_CHECKING:
    from tasks.settings import Settings

__all__ = ["train_task", "training_rows_task"]


@task(name="training-rows", cache_policy=NO_CACHE)
def training_rows_task(
    parts: data.Splits, labelled: Labelled | None, *, settings: Settings
) -> TrainingRows:
    """The rows to train and validate on: the source's splits, and for a retraining its
    labelled production rows, weighted by the half-life that predicts the present best."""
    rows = training_rows(parts, labelled, settings=settings)
    get_run_logger().info("training rows: %s", rows.describe())
    return rows


@task(name="train", cache_policy=NO_CACHE)
def train_task(
    *,
    train: pa.Table,
    validation: pa.Table,
    settings: Settings,
    storage_path: str | None = None,
    fault: FaultInjection | None = None,
    weights: np.ndarray | None = None,
    validation_weights: np.ndarray | None = None,
) -> TrainResult:
    """Train on Ray Train and show the learning curve in the Prefect UI (`weights`: per row,
    how much each counts; see `train_model`).

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
        on_epoch=log_epoch, fault=fault, weights=weights, validation_weights=validation_weights,
    )  # fmt: skip
    logger.info(
        "best %s %.4f at epoch %d of %d%s on %d worker(s) (%s); model in %s",
        result.metric_name, result.best_metric, result.best_epoch, len(result.history),
        " (stopped early)" if result.stopped_early else "", len(result.workers),
        ", ".join(w.device for w in result.workers), result.model_dir,
    )  # fmt: skip
    name = settings.dataset.name
    create_table_artifact(
        key=artifacts.key(name, "learning-curve"),  # "churn-learning-curve"
        table=[asdict(r) for r in result.history],
        description=f"{name}: losses and {result.metric_name} per epoch",
    )
    create_markdown_artifact(
        key=artifacts.key(name, "learning-curve-chart"),
        markdown=learning_curve_markdown(result),
        description="Training and validation loss per epoch",
    )
    return result
