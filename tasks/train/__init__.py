"""Data-parallel training on Ray Train: from a laptop to a Ray cluster with the same code.

    result = train_model(train=parts.train, validation=parts.validation, settings=settings)
    predictor = load_model(result.model_dir)

`driver` runs a training (`train_model`), `checks` catches what cannot work before Ray Train
waits on it and words what failed, `progress` brings epochs to the driver live and draws the
learning curve, `prefect_task` is the Prefect task. The Ray connection is `tasks.cluster`; the
per-worker loop is `tasks.loop`, whose pieces are re-exported here for benchmarks and tests.
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
from tasks.train.driver import METRICS, TrainResult, train_model, write_encoded
from tasks.train.prefect_task import train_task
from tasks.train.progress import (
    ProgressTail,
    learning_curve_markdown,
    learning_curve_svg,
    progress_callback,
)

__all__ = [
    "METRICS",
    "EpochRecord",
    "FaultInjection",
    "Placement",
    "ProgressTail",
    "TrainResult",
    "TrainingFailed",
    "WorkerInfo",
    "auc_from_histograms",
    "check_storage_is_shared",
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
    "run_epoch",
    "train_model",
    "train_task",
    "worker_setup_hook",  # from tasks.cluster
    "write_encoded",
]
