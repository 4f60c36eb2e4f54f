"""Data-parallel training on Ray Train: from a laptop to a Ray cluster with the same code.

    result = train_model(train=parts.train, validation=parts.validation, settings=settings)
    predictor = load_model(result.model_dir)

`driver` runs a training (`train_model`), `encoded` writes the splits its workers read,
`checks` catches what cannot work before Ray Train
waits on it and words what failed, `progress` brings epochs to the driver live and draws the
learning curve, `recency` weights a retraining's rows by age (the half-life chosen by quick fits
scored on recent labelled rows), `prefect_task` holds the Prefect tasks. The Ray connection is
`tasks.cluster`; the per-worker loop is `tasks.loop`, whose pieces are re-exported here for
benchmarks and tests.
"""

from tasks.cluster import connect_ray, dashboard_url, worker_setup_hook
from tasks.loop import (
    EpochRecord,
    FaultInjection,
    WorkerInfo,
    auc_from_histograms,
    evaluate,
    read_shard,
    run_epoch,
)
from tasks.train.checks import (
    Placement,
    TrainingFailed,
    check_storage_is_shared,
    failure_message,
    nodes_without_path,
    place_workers,
)
from tasks.train.driver import METRICS, TrainResult, train_model
from tasks.train.encoded import write_encoded
from tasks.train.prefect_task import train_task, training_rows_task
from tasks.train.progress import (
    ProgressTail,
    learning_curve_markdown,
    learning_curve_svg,
    progress_callback,
)
from tasks.train.recency import (
    Candidate,
    Labelled,
    Recency,
    TrainingRows,
    ages_in_days,
    choose_half_life,
    recency_weights,
    training_rows,
)

__all__ = [
    "METRICS",
    "Candidate",
    "EpochRecord",
    "FaultInjection",
    "Labelled",
    "Placement",
    "ProgressTail",
    "Recency",
    "TrainResult",
    "TrainingFailed",
    "TrainingRows",
    "WorkerInfo",
    "ages_in_days",
    "auc_from_histograms",
    "check_storage_is_shared",
    "choose_half_life",
    "connect_ray",  # from tasks.cluster, kept here for older callers
    "dashboard_url",  # from tasks.cluster
    "evaluate",
    "failure_message",
    "learning_curve_markdown",
    "learning_curve_svg",
    "nodes_without_path",
    "place_workers",
    "progress_callback",
    "read_shard",
    "recency_weights",
    "run_epoch",
    "train_model",
    "train_task",
    "training_rows",
    "training_rows_task",
    "worker_setup_hook",  # from tasks.cluster
    "write_encoded",
]
