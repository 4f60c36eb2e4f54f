"""Training on Ray Train: DDP that learns, early stopping, checkpoints, recovery, a 2-node cluster.

Every run uses 2 CPU workers (`use_gpu` pinned off: the same on a GPU machine) on the session's
real Ray (`ray_local`), a few thousand synthetic rows and a few epochs: Ray Train's fixed cost
(about 15-25 s per `fit()` on 2 cores) dominates, so runs are shared by module fixtures.
"""

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from tasks.data import Splits, split
from tasks.model import load_model
from tasks.settings import DatasetConfig, Features, Settings, TrainingConfig
from tasks.synthetic import CATEGORICAL_FEATURES, NUMERIC_FEATURES, generate
from tasks.train import (
    EpochRecord,
    FaultInjection,
    ProgressTail,
    TrainingFailed,
    TrainResult,
    auc_from_histograms,
    check_storage_is_shared,
    failure_message,
    learning_curve_svg,
    nodes_without_path,
    place_workers,
    train_model,
    train_task,
)

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 4


def make_settings(home: Path | str, **training: object) -> Settings:
    features = Features(numeric=list(NUMERIC_FEATURES), categorical=list(CATEGORICAL_FEATURES))
    defaults: dict[str, object] = {
        "epochs": EPOCHS,
        "batch_size": 128,
        "learning_rate": 1e-2,
        "hidden_layers": [32, 16],
        "num_workers": 2,
        "early_stopping_patience": 10,
        "checkpoints_to_keep": 2,
        "use_gpu": False,  # the same CPU runs on a GPU machine
        "min_steps": 0,  # a budget of EPOCHS epochs: each evaluation round is one epoch
    }
    return Settings(
        home=str(home),
        dataset=DatasetConfig(name="churn", source="unused", target="churned", features=features),
        training=TrainingConfig(**(defaults | training)),
    )


@pytest.fixture(scope="module")
def parts() -> Splits:
    settings = make_settings(Path("unused"))
    return split(generate(rows=4000, seed=7), dataset=settings.dataset, config=settings.split)


class Baseline(NamedTuple):
    result: TrainResult
    seen: list[EpochRecord]  # what `on_epoch` was called with, in order
    seen_at: list[float]  # time.monotonic() at each of those calls
    fit_ended: float  # time.monotonic() as Ray Train's `fit()` returned


@pytest.fixture(scope="module")
def baseline(ray_local: None, parts: Splits, tmp_path_factory: pytest.TempPathFactory) -> Baseline:
    """One fault-free run that several tests look at, with the epochs seen live and when, and
    when Ray Train's `fit()` returned (a wrapper around `TorchTrainer.fit` notes it). Its home is
    a file:// URI: Ray Train storage, the encoded data and the checkpoints go through pyarrow.fs."""
    from ray.train.torch import TorchTrainer

    seen: list[EpochRecord] = []
    seen_at: list[float] = []
    fit_ended: list[float] = []
    fit = TorchTrainer.fit

    def on_epoch(record: EpochRecord) -> None:
        seen.append(record)
        seen_at.append(time.monotonic())

    def timed_fit(self: TorchTrainer) -> Any:
        try:
            return fit(self)
        finally:
            fit_ended.append(time.monotonic())

    home = tmp_path_factory.mktemp("baseline")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TorchTrainer, "fit", timed_fit)
        result = train_model(
            train=parts.train,
            validation=parts.validation,
            settings=make_settings(home.as_uri()),
            on_epoch=on_epoch,
        )
    (ended,) = fit_ended  # one fit() per run
    return Baseline(result, seen, seen_at, ended)


@pytest.fixture(scope="module")
def crashed(
    ray_local: None, parts: Splits, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainResult, Path]:
    """The baseline's run again, with worker 1 killed half-way through epoch 3 (os._exit)."""
    home = tmp_path_factory.mktemp("crashed")
    marker = home / "fault-fired"
    result = train_model(
        train=parts.train,
        validation=parts.validation,
        settings=make_settings(home),
        fault=FaultInjection(epoch=3, rank=1, marker=str(marker)),
    )
    return result, marker


def local(location: str) -> Path:
    """The folder behind a path or a file:// URI."""
    return Path(location.removeprefix("file://"))


def learned(history: list[EpochRecord]) -> list[tuple[int, float, float, float]]:
    """What a run learned per epoch, without its timings."""
    return [(r.epoch, r.train_loss, r.val_loss, r.val_metric) for r in history]


# Pure logic --------------------------------------------------------------------------------------

GPU_NODE = {"CPU": 16.0, "GPU": 2.0}


@pytest.mark.parametrize(
    ("setting", "workers", "nodes", "expected"),
    [
        ("auto", 2, [GPU_NODE], True),
        ("auto", 2, [{"CPU": 16.0, "GPU": 1.0}], False),  # a GPU for one of two workers: CPUs
        ("auto", 2, [{"CPU": 16.0, "GPU": 1.0}, {"CPU": 16.0, "GPU": 1.0}], True),
        ("auto", 2, [{"CPU": 16.0}], False),
        ("auto", 1, [{"CPU": 16.0, "GPU": 0.0}], False),
        (True, 2, [GPU_NODE], True),
        (False, 2, [GPU_NODE], False),
    ],
)
def test_use_gpu_auto_picks_gpus_only_when_every_worker_gets_one(
    setting: bool | str, workers: int, nodes: list[dict[str, float]], expected: bool
) -> None:
    config = TrainingConfig(use_gpu=setting, num_workers=workers)
    placement = place_workers(config, nodes=nodes)
    assert placement.use_gpu is expected
    if setting == "auto" and not expected:  # the log says why it chose CPUs
        assert "CPU workers" in placement.reason
    has_gpus = any(node.get("GPU", 0) for node in nodes)
    assert placement.fell_back is (setting == "auto" and not expected and bool(has_gpus))


def test_auto_says_how_many_gpus_were_too_few() -> None:
    config = TrainingConfig(num_workers=2)
    reason = place_workers(config, nodes=[{"CPU": 8.0, "GPU": 1.0}]).reason
    assert reason.startswith("use_gpu=auto: CPU workers; the cluster's 1 GPU(s)")
    assert "training.num_workers=2" in reason


@pytest.mark.parametrize(
    ("training", "nodes", "names"),
    [
        # more CPUs than the cluster has
        ({"num_workers": 2, "cpus_per_worker": 3}, [{"CPU": 4.0}], ["cpus_per_worker=3 CPU(s)"]),
        ({"num_workers": 5}, [{"CPU": 4.0, "GPU": 2.0}], ["num_workers=5", "room for 4"]),
        # enough CPUs in all, but no node holds two 2-CPU workers: 2 fit, not 3
        ({"num_workers": 3, "cpus_per_worker": 2}, [{"CPU": 3.0}, {"CPU": 3.0}], ["room for 2"]),
        # GPUs asked for outright, none there
        ({"use_gpu": True, "num_workers": 1}, [{"CPU": 4.0}], ["1 CPU(s) + 1 GPU", "use_gpu=true"]),
    ],
)
def test_settings_the_cluster_cannot_hold_fail_now_naming_them(
    training: dict[str, object], nodes: list[dict[str, float]], names: list[str]
) -> None:
    with pytest.raises(TrainingFailed) as info:
        place_workers(TrainingConfig(**training), nodes=nodes)
    message = str(info.value)
    assert "training.num_workers=" in message
    assert "training.cpus_per_worker=" in message
    assert "training.use_gpu=" in message
    assert f"the Ray cluster has {len(nodes)} node(s)" in message
    for name in names:
        assert name in message


def test_too_few_rows_for_the_workers_are_refused_before_ray_starts(
    parts: Splits, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, num_workers=2)
    with pytest.raises(TrainingFailed, match=r"need at least 2 training rows .* got 1 and"):
        train_model(train=parts.train.slice(0, 1), validation=parts.validation, settings=settings)
    with pytest.raises(TrainingFailed, match=r"and one validation row; got \d+ and 0$"):
        train_model(train=parts.train, validation=parts.validation.slice(0, 0), settings=settings)
    assert not (tmp_path / "ray").exists()


def test_fractional_cpus_per_worker_share_a_cpu() -> None:
    config = TrainingConfig(num_workers=2, cpus_per_worker=0.5, use_gpu=False)
    assert place_workers(config, nodes=[{"CPU": 1.0}]).use_gpu is False


def test_a_worker_group_that_never_started_is_not_reported_as_restarts() -> None:
    from ray.train import ControllerError
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    error = ControllerError(WorkerGroupStartupTimeoutError(num_workers=2))
    message = failure_message(error, name="run-1", config=TrainingConfig(max_failures=3))
    assert "restart" not in message
    assert message.startswith("training run run-1 could not start its 2 worker(s) in 3 attempts")
    assert "WorkerGroupStartupTimeoutError: The worker group startup timed out" in message


def test_each_kind_of_training_failure_is_one_line_naming_what_failed() -> None:
    from ray.train import ControllerError, WorkerGroupError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    config = TrainingConfig(max_failures=2)
    died = WorkerHealthCheckFailedError(
        "health check failed",
        # the text Ray's ActorDiedError carries for a killed worker process
        ConnectionError("Worker exit type: SYSTEM_ERROR\nlog_file_path='/tmp/ray/worker-7.err'"),
    )
    cases = {
        "the controller": (
            ControllerError(RuntimeError("scheduling loop broke\ntraceback ...")),
            "training run r failed: the Ray Train controller failed: "
            "RuntimeError: scheduling loop broke",
        ),
        "a worker's own error": (
            WorkerGroupError("group failed", {1: ValueError("loss is nan"), 0: OSError("gloo")}),
            "training run r failed after 2 restart(s) (training.max_failures=2); "
            "worker rank 0 failed: OSError: gloo; rank(s) [1] failed with it",
        ),
        "a worker that died, named before the ranks that failed with it": (
            WorkerGroupError("group failed", {0: RuntimeError("allreduce broke"), 1: died}),
            "training run r failed after 2 restart(s) (training.max_failures=2); worker rank 1 "
            "died (ConnectionError, exit type SYSTEM_ERROR); its log: /tmp/ray/worker-7.err; "
            "rank(s) [0] failed with it",
        ),
        "a group error without worker errors": (
            WorkerGroupError("the group could not be polled", {}),
            "training run r failed after 2 restart(s) (training.max_failures=2); "
            "WorkerGroupError: Training failed due to worker errors: the group could not be polled",
        ),
        "anything else": (KeyError("x"), "training run r failed: KeyError: 'x'"),
    }
    for case, (error, expected) in cases.items():
        message = failure_message(error, name="r", config=config)
        assert message == expected, case


def test_epochs_that_never_reach_the_driver_live_are_delivered_once_from_the_result(
    tmp_path: Path,
) -> None:
    from ray.train import Checkpoint

    seen: list[EpochRecord] = []
    history = [EpochRecord(i, 1.0 / i, 1.1 / i, 0.7, 0.1) for i in range(1, 4)]
    tail = ProgressTail(seen.append)
    after_report: Any = tail.callback.after_report  # called as the Train controller calls it
    # The controller's callback reaches the driver for epoch 1; the rest is out of its sight.
    report = {**asdict(history[0]), "resumed_from_epoch": 0}
    after_report(None, [report], Checkpoint.from_directory(tmp_path))
    tail.close()
    after_report(None, [report], None)  # its file is gone: nothing raises in the controller
    tail.catch_up(history)
    assert seen == history
    assert tail.registered == [(0, 1)]


def test_the_all_reducible_auc_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(5000) < 0.3
    scores = np.clip(rng.normal(0.4 + 0.2 * labels, 0.15), 0, 1)
    bins = np.minimum((scores * 4096).astype(int), 4095)
    pos = torch.from_numpy(np.bincount(bins[labels], minlength=4096).astype(float))
    neg = torch.from_numpy(np.bincount(bins[~labels], minlength=4096).astype(float))
    assert auc_from_histograms(pos, neg) == pytest.approx(roc_auc_score(labels, scores), abs=1e-3)
    assert auc_from_histograms(pos, torch.zeros(4096)) == 0.5


def test_the_learning_curve_is_an_svg_with_one_line_per_loss() -> None:
    history = [EpochRecord(i, 1.0 / i, 1.2 / i, 0.5 + i / 10, 0.1) for i in range(1, 5)]
    svg = learning_curve_svg(history)
    assert svg.startswith("<svg")
    assert svg.endswith("</svg>")
    assert svg.count("<polyline") == 2


# Training on Ray ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_two_ddp_workers_learn_better_than_chance_and_the_prior(
    baseline: Baseline, parts: Splits
) -> None:
    result, seen = baseline.result, baseline.seen
    assert [w.rank for w in result.workers] == [0, 1]
    assert len({w.pid for w in result.workers}) == 2
    assert [w.device for w in result.workers] == ["cpu", "cpu"]  # use_gpu pinned off
    assert result.use_gpu is False
    assert result.metric_name == "val_auc"
    assert result.best_metric > 0.75  # chance is 0.5
    # The exported model agrees on held-out rows: AUC well above chance, log loss below the
    # trivial model that always predicts the training prior.
    probs = load_model(result.model_dir).predict(parts.holdout)[:, 1]
    y = parts.holdout["churned"].to_numpy()
    prior = float(parts.train["churned"].to_numpy().mean())
    log_loss = -np.mean(y * np.log(probs) + (1 - y) * np.log(1 - probs))
    prior_loss = -np.mean(y * np.log(prior) + (1 - y) * np.log(1 - prior))
    assert roc_auc_score(y, probs) > 0.75
    assert log_loss < prior_loss - 0.05
    assert [r.epoch for r in result.history] == list(range(1, EPOCHS + 1))
    assert seen == result.history  # progress reached the driver live, every epoch once
    assert result.resumed_from_epoch == [0]
    assert len(result.epoch_seconds) == EPOCHS  # timed inside the worker


@pytest.mark.integration
def test_progress_reaches_the_driver_while_fit_runs_not_from_the_result_at_the_end(
    baseline: Baseline,
) -> None:
    # Epochs delivered only from the final result (the catch-up for a Train controller out of
    # the driver's sight) would all arrive after fit() returned. Live, an epoch arrives within
    # about half a second of its report (the controller polls the workers and the driver reads
    # the progress file every 0.25 s), so the first one arrives while later epochs still train.
    result, seen, seen_at, fit_ended = baseline
    assert seen == result.history
    late = {r.epoch: round(t - fit_ended, 2) for r, t in zip(seen, seen_at, strict=True)}
    assert seen_at[0] < fit_ended, f"epoch 1 came after fit() returned (s after, by epoch): {late}"


@pytest.mark.integration
def test_a_file_uri_home_keeps_checkpoints_and_deletes_the_encoded_data(
    baseline: Baseline,
) -> None:
    result = baseline.result
    assert result.run_path.startswith("file:///")
    run = local(result.run_path)
    assert run.parent.name == "ray"  # settings.location("ray")
    assert [p.name for p in run.iterdir() if p.name.startswith("checkpoint_")]
    assert not (run / "data").exists()  # the encoded splits (~100 bytes a row) are gone
    assert result.model_dir == run / "model"
    assert all(c.startswith("file:///") for c in result.checkpoints)


@pytest.mark.integration
def test_the_kept_checkpoints_are_the_k_best_by_the_validation_metric_plus_the_latest(
    baseline: Baseline,
) -> None:
    result = baseline.result
    metric = {r.epoch: r.val_metric for r in result.history}
    best_two = sorted(metric, key=metric.__getitem__, reverse=True)[:2]  # checkpoints_to_keep
    run = local(result.run_path)
    on_disk = [p for p in run.iterdir() if p.is_dir() and p.name.startswith("checkpoint_")]
    # Each checkpoint's own state says which epoch it holds and what it scored.
    states = [json.loads((p / "state.json").read_text()) for p in on_disk]
    for state in states:
        assert state["history"][-1]["val_metric"] == metric[state["epoch"]]
    kept = {state["epoch"] for state in states}
    # Ray Train also keeps the newest checkpoint (for recovery) when it is not among the best.
    assert kept == {*best_two, EPOCHS}
    ranked = {
        int(json.loads((local(c) / "state.json").read_text())["epoch"]) for c in result.checkpoints
    }
    assert set(best_two) <= ranked <= kept
    assert result.best_epoch == best_two[0]
    assert result.best_metric == metric[best_two[0]]


@pytest.mark.integration
def test_early_stopping_ends_the_run_when_the_metric_stops_improving(
    ray_local: None, parts: Splits, tmp_path: Path
) -> None:
    # A learning rate this small leaves the metric flat: no epoch after the first improves it.
    settings = make_settings(tmp_path, epochs=10, learning_rate=1e-12, early_stopping_patience=2)
    result = train_model(train=parts.train, validation=parts.validation, settings=settings)
    assert result.stopped_early
    assert [r.epoch for r in result.history] == [1, 2, 3]
    assert result.best_epoch == 1


@pytest.mark.integration
def test_a_worker_crash_resumes_from_the_newest_registered_checkpoint_and_finishes_alike(
    crashed: tuple[TrainResult, Path], baseline: Baseline
) -> None:
    result, marker = crashed
    assert marker.exists()  # the worker really died (os._exit mid-epoch 3)
    # What the controller registered, in order: the first attempt's checkpoints, then the
    # restarted group's, each tagged with the checkpoint epoch its attempt loaded.
    before = [epoch for loaded, epoch in result.registered if loaded == 0]
    after = [epoch for loaded, epoch in result.registered if loaded != 0]
    assert before, "no checkpoint was registered before the fault"
    assert before[-1] <= 2  # epoch 3 never finished
    assert result.resumed_from_epoch == [0, before[-1]]  # the newest one, not epoch 0
    assert after == list(range(before[-1] + 1, EPOCHS + 1))  # nothing redone, nothing skipped
    assert [r.epoch for r in result.history] == list(range(1, EPOCHS + 1))
    fault_free = baseline[0]
    assert result.best_metric == pytest.approx(fault_free.best_metric, abs=0.01)
    assert result.history[-1].val_loss == pytest.approx(fault_free.history[-1].val_loss, abs=0.01)


@pytest.mark.integration
def test_two_runs_with_the_same_seed_and_workers_learn_the_same_history(
    crashed: tuple[TrainResult, Path], baseline: Baseline
) -> None:
    # The crashed run is the baseline's settings again; seeded shuffles and dropout per (seed,
    # epoch, rank) make even its restarted epochs repeat the baseline's.
    assert learned(crashed[0].history) == learned(baseline[0].history)


@pytest.mark.integration
def test_asking_for_more_cpus_than_the_cluster_has_fails_at_once_naming_the_settings(
    ray_local: None, parts: Splits, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, cpus_per_worker=3)  # 2 x 3 CPUs; the session Ray has 4
    started = time.perf_counter()
    with pytest.raises(TrainingFailed) as info:
        train_model(train=parts.train, validation=parts.validation, settings=settings)
    assert time.perf_counter() - started < 15  # not Ray Train's 60 s timeout, retried forever
    message = str(info.value)
    assert "\n" not in message
    assert "training.num_workers=2 worker(s) of training.cpus_per_worker=3 CPU(s)" in message
    assert "training.use_gpu=false" in message
    assert "node(s) with 4 CPU(s)" in message
    assert not (tmp_path / "ray").exists()  # refused before writing anything


@pytest.mark.integration
def test_the_storage_probe_names_the_nodes_that_cannot_see_a_path(
    ray_local: None, tmp_path: Path
) -> None:
    import ray

    node = ray.get_runtime_context().get_node_id()
    here = tmp_path / "marker"
    here.write_text("")
    assert nodes_without_path(str(here), node_ids=[node]) == []
    assert nodes_without_path(str(tmp_path / "elsewhere"), node_ids=[node]) == [node]


@pytest.mark.integration
def test_local_storage_a_node_cannot_see_is_refused_before_training_and_leaves_nothing(
    ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    from tasks.train import checks

    # A second machine with its own disk cannot exist here: the cluster's node list and the
    # probe's answer stand in for one. The probe itself is tested against real nodes above.
    alive = [{"NodeID": "a" * 56, "Alive": True}, {"NodeID": "b" * 56, "Alive": True}]
    asked: list[str] = []

    def probe(path: str, *, node_ids: list[str]) -> list[str]:
        asked.append(path)
        assert Path(path).exists()  # the marker is written before the nodes are asked
        return node_ids[1:]

    monkeypatch.setattr(ray, "nodes", lambda: alive)
    monkeypatch.setattr(checks, "nodes_without_path", probe)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    storage = tmp_path / "ray"
    with pytest.raises(TrainingFailed) as refused:
        check_storage_is_shared(str(storage))
    message = str(refused.value)
    assert message.startswith(f"Ray Train storage {storage} is a local folder that 1 of 2 node(s)")
    assert "RAY_ADDRESS=10.0.0.5:6379" in message
    assert f"(node {'b' * 56})" in message
    assert "set DRIFTLOOP_HOME to a bucket (s3://, gs://)" in message
    assert "\n" not in message
    assert len(asked) == 1
    assert list(storage.iterdir()) == []
    monkeypatch.setattr(checks, "nodes_without_path", lambda path, *, node_ids: [])
    check_storage_is_shared(str(storage))  # every node sees it: training may go on


@pytest.mark.integration
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_trains_one_worker_on_the_gpu_when_there_is_one(
    ray_local: None, parts: Splits, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, num_workers=1, use_gpu="auto", epochs=1)
    result = train_model(train=parts.train, validation=parts.validation, settings=settings)
    assert result.use_gpu is True
    assert [w.device for w in result.workers] == ["cuda:0"]
    assert result.best_metric > 0.6


# A real 2-node cluster ---------------------------------------------------------------------------

DRIVER = """
import json, sys, time
import ray
from pathlib import Path
from tasks.data import split
from tasks.synthetic import generate
from tasks.cluster import connect_ray
from tasks.train import train_model
sys.path.insert(0, {tests!r})
from test_train import make_settings

connect_ray()  # joins RAY_ADDRESS, shipping the tasks package to the cluster's workers
deadline = time.time() + 60
while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.time() < deadline:
    time.sleep(0.5)
settings = make_settings(Path({home!r}), epochs=2)
parts = split(generate(rows=2000, seed=1), dataset=settings.dataset, config=settings.split)
result = train_model(train=parts.train, validation=parts.validation, settings=settings)
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
workers = [w.__dict__ for w in result.workers]
print("RESULT " + json.dumps({{"nodes": nodes, "workers": workers, "auc": result.best_metric}}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def two_node_cluster() -> Iterator[tuple[str, dict[str, str], str]]:
    """A head and a worker node on this machine (token auth), stopped by process group after."""
    temp_dir = tempfile.mkdtemp(prefix="dlray", dir="/tmp")  # short: Ray's socket paths are long
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),  # this cluster's own; ~/.ray stays untouched
    }
    port = free_port()
    ray_cli = str(Path(sys.executable).parent / "ray")
    common = [
        "--block",
        "--num-cpus",
        "1",
        "--node-ip-address",
        "127.0.0.1",
        "--temp-dir",
        temp_dir,
    ]
    head = [
        *("start", "--head", "--port", str(port), "--resources", '{"head": 1}'),
        *("--dashboard-host", "127.0.0.1", "--dashboard-port", str(free_port())),
        *("--ray-client-server-port", str(free_port()), "--disable-usage-stats"),
    ]
    worker = ["start", "--address", f"127.0.0.1:{port}", "--resources", '{"worker2": 1}']
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for args in (head, worker):
            agent = ["--dashboard-agent-listen-port", str(free_port())]
            procs.append(
                subprocess.Popen(
                    [ray_cli, *args, *common, *agent],
                    env=env,
                    start_new_session=True,  # its own process group: stopped without `ray stop`
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            if args is head:  # the GCS must listen before the second node joins
                _wait_listening(port, head=procs[0])
        yield f"127.0.0.1:{port}", env, temp_dir
    finally:
        for proc in reversed(procs):
            _stop_group(proc)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_listening(port: int, *, head: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not _listening(port):
        assert head.poll() is None, f"the head node exited with {head.returncode} while starting"
        assert time.monotonic() < deadline, f"the head's GCS did not listen on {port} in time"
        time.sleep(0.1)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):  # what is left in the group goes too
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.mark.integration
def test_ray_address_runs_the_same_training_on_both_nodes_of_a_cluster(
    two_node_cluster: tuple[str, dict[str, str], str], tmp_path: Path
) -> None:
    address, env, temp_dir = two_node_cluster
    script = DRIVER.format(tests=str(REPO / "tests"), home=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "RAY_ADDRESS": address},
        cwd=tmp_path,  # not the checkout: the code must reach the workers by the runtime env
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0, done.stderr[-3000:]
    assert lines, done.stdout[-3000:]
    found = json.loads(lines[-1].removeprefix("RESULT "))
    assert len(found["nodes"]) == 2
    assert {w["node_id"] for w in found["workers"]} == set(found["nodes"])  # one worker per node
    assert all(w["code_path"].startswith(temp_dir) for w in found["workers"])  # shipped code
    assert found["auc"] > 0.6


# Prefect -----------------------------------------------------------------------------------------


@pytest.mark.integration
def test_the_prefect_task_logs_epochs_and_publishes_the_learning_curve(
    prefect_server: None, ray_local: None, parts: Splits, tmp_path: Path
) -> None:
    from prefect import flow
    from prefect.artifacts import Artifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    settings = make_settings(tmp_path, epochs=2)

    @flow(name="train-task-test")
    def run() -> TrainResult:
        return train_task(train=parts.train, validation=parts.validation, settings=settings)

    state = run(return_state=True)
    result = state.result()
    assert isinstance(result, TrainResult)
    assert len(result.history) == 2
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        flow_run = LogFilterFlowRunId(any_=[state.state_details.flow_run_id])
        logs = [log.message for log in client.read_logs(LogFilter(flow_run_id=flow_run))]
    assert any(m.startswith("Ray dashboard: http://127.0.0.1:") for m in logs), logs
    assert [m.split(":")[0] for m in logs if m.startswith("epoch ")] == ["epoch 1", "epoch 2"]
    table = Artifact.get("churn-learning-curve")
    chart = Artifact.get("churn-learning-curve-chart")
    # Called from sync code, `Artifact.get` returns the artifact (typed as maybe a coroutine).
    assert json.loads(str(getattr(table, "data", "null")))[1]["epoch"] == 2
    assert "data:image/svg+xml;base64," in str(getattr(chart, "data", ""))


@pytest.mark.integration
def test_a_crash_beyond_max_failures_fails_the_prefect_task_with_a_one_line_reason(
    prefect_server: None, ray_local: None, parts: Splits, tmp_path: Path
) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    settings = make_settings(tmp_path, max_failures=0)
    fault = FaultInjection(epoch=1, rank=1, marker=str(tmp_path / "fired"))

    @flow(name="train-task-failure-test")
    def run() -> TrainResult:
        return train_task(train=parts.train, validation=parts.validation, settings=settings,
                          fault=fault)  # fmt: skip

    flow_state = run(return_state=True)
    assert flow_state.is_failed()
    with get_client(sync_client=True) as client:
        ids = FlowRunFilterId(any_=[flow_state.state_details.flow_run_id])
        (task_run,) = client.read_task_runs(flow_run_filter=FlowRunFilter(id=ids))
    assert task_run.state is not None
    assert task_run.state.is_failed()
    message = str(task_run.state.message)  # what the Prefect UI shows for the task run
    assert "\n" not in message
    assert "TrainingFailed: training run churn-" in message
    assert "failed after 0 restart(s) (training.max_failures=0)" in message
    # the killed rank is named as the cause when Ray has marked it dead by then; Ray may report
    # rank 0's broken all-reduce one poll earlier, and then that is what the one line names
    assert re.search(r"worker rank (1 died \(ActorDiedError|0 failed: )", message), message
    runs = list((tmp_path / "ray").iterdir())
    assert len(runs) == 1
    assert not (runs[0] / "data").exists()  # the encoded data goes on failure too
