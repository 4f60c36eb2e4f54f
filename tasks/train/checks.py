"""What can fail before or during training, caught early or said in one line.

Before: `place_workers` refuses workers the cluster can never hold (Ray Train would wait for
them, time out and try again), `warn_if_busy` says when they must wait for other work, and
`check_storage_is_shared` refuses a local storage folder that some node cannot see. After:
`failure_message` turns Ray Train's errors into the one line `TrainingFailed` carries.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow.fs as pafs

from tasks import files
from tasks.errors import DriftloopError

if TYPE_CHECKING:
    from tasks.settings import TrainingConfig

__all__ = [
    "START_RETRIES",
    "Placement",
    "TrainingFailed",
    "check_storage_is_shared",
    "failure_message",
    "nodes_without_path",
    "place_workers",
    "warn_if_busy",
]

# Starting the worker group is retried this often after Ray Train's 60 s placement timeout
# (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S): room for busy resources to free up, not forever.
START_RETRIES = 2
logger = logging.getLogger(__name__)


class TrainingFailed(DriftloopError, RuntimeError):
    """Training did not finish: the message says what failed and how many restarts were spent."""


@dataclass(frozen=True)
class Placement:
    """GPU or CPU workers, and why when `use_gpu: auto` chose."""

    use_gpu: bool
    reason: str = ""
    fell_back: bool = False  # `auto` found GPUs, too few for every worker: worth a warning


# Placement --------------------------------------------------------------------------------------


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


def warn_if_busy(config: TrainingConfig, placement: Placement) -> None:
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
            {k: free.get(k, 0.0) for k in short}, short, START_RETRIES + 1,
        )  # fmt: skip


# Shared storage ---------------------------------------------------------------------------------


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


# Failures ---------------------------------------------------------------------------------------


def failure_message(exc: Exception, *, name: str, config: TrainingConfig) -> str:
    """One line for a failed `fit()`: a group that never started, a controller that failed, or
    the worker that died first and the restarts spent."""
    from ray.train import ControllerError, WorkerGroupError

    if isinstance(exc, ControllerError):
        cause = exc.controller_failure
        if type(cause).__name__ in (
            "WorkerGroupStartupTimeoutError",
            "WorkerGroupStartupFailedError",
        ):
            return (
                f"training run {name} could not start its {config.num_workers} worker(s) in "
                f"{START_RETRIES + 1} attempts; {_describe_error(cause)}"
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
