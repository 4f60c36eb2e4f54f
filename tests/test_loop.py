"""The per-worker loop without Ray: shards, the step budget, the batch stream, the learning-rate
schedule, every task kind learning, early stopping on the validation loss, resuming exactly.

Ray Train runs these functions in each worker (tests/test_train.py runs them there); with no
process group the all-reduces are no-ops, so one process stands for a world of one.
"""

import itertools
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from tasks.budget import Budget, lr_factor, plan_budget
from tasks.loop import (
    BEST,
    BatchStream,
    EpochRecord,
    LoopConfig,
    LoopTraining,
    _advance,
    _read_checkpoint,
    _State,
    _weights,
    _write_checkpoint,
    best_model_folder,
    count_rows,
    evaluate,
    make_scheduler,
    read_shard,
    run_epoch,
    run_steps,
)
from tasks.model import ModelSpec, Preprocessor, TabularMLP, to_predictions
from tasks.settings import Features, TrainingConfig
from tasks.train import write_encoded

FEATURES = Features(numeric=["row", "charges"], categorical=["contract"])


def make_table(rows: int, *, seed: int = 0) -> pa.Table:
    """`row` is unique per row (to follow rows through shards); the targets follow `charges`."""
    rng = np.random.default_rng(seed)
    charges = rng.normal(50, 10, rows)
    return pa.table(
        {
            "row": np.arange(rows, dtype=np.float64),
            "charges": charges,
            "contract": rng.choice(["monthly", "yearly", "two-year"], rows),
            "band": np.array(["low", "mid", "high"])[np.digitize(charges, [45, 55])],
            "spend": 2.0 * charges + rng.normal(0, 1, rows),
        }
    )


def preprocessor(table: pa.Table, *, target: str) -> Preprocessor:
    if target == "spend":
        return Preprocessor.fit(table, features=FEATURES, target=target, task="regression")
    return Preprocessor.fit(table, features=FEATURES, target=target, task="classification")


@pytest.mark.parametrize(("rows", "shards"), [(1, 1), (3, 3), (7, 2), (7, 3), (1000, 2)])
def test_each_rank_reads_its_own_rows_and_together_every_row_once(
    rows: int, shards: int, tmp_path: Path
) -> None:
    table = make_table(rows)
    pre = preprocessor(make_table(1000), target="band")  # fitted on a split with every class
    path = write_encoded(table, pre, tmp_path / "train.parquet", shards=shards, seed=3)
    parts = [read_shard(path, rank=r, world_size=shards) for r in range(shards)]
    assert all(len(part) > 0 for part in parts)  # every worker has rows to train on
    seen = np.concatenate([part.numeric[:, 0].numpy() for part in parts])
    expected = pre.transform(table).numeric[:, 0]
    assert np.allclose(np.sort(seen), np.sort(expected))  # each row once, none lost or doubled
    assert len(np.unique(seen)) == rows
    # Every rank takes the budget's per-worker batch, whole, at every step: no rank runs short
    # of rows however long the budget (DDP blocks if one rank stops early).
    assert count_rows(path) == rows
    for batch_size in (1, 4, 256):
        budget = plan_budget(
            rows=rows, config=LoopTraining.of(TrainingConfig(batch_size=batch_size))
        )
        per_worker = budget.per_worker_batch(shards)
        assert per_worker <= min(len(part) for part in parts)
        for rank, part in enumerate(parts):
            stream = BatchStream(part, batch=per_worker, seed=0, rank=rank)
            steps = range(0, 3 * stream.per_pass + 1)
            assert all(len(stream.at(step)) == per_worker for step in steps)


@pytest.mark.parametrize("target", ["band", "spend"])
def test_the_loop_learns_multiclass_and_regression_and_reports_the_metric_in_its_units(
    target: str, tmp_path: Path
) -> None:
    train, held = make_table(2000, seed=1), make_table(500, seed=2)
    pre = preprocessor(train, target=target)
    assert pre.kind == ("multiclass" if target == "band" else "regression")
    shard = read_shard(write_encoded(train, pre, tmp_path / "t.parquet", shards=1), rank=0,
                       world_size=1)  # fmt: skip
    check = read_shard(write_encoded(held, pre, tmp_path / "v.parquet", shards=1), rank=0,
                       world_size=1)  # fmt: skip
    torch.manual_seed(0)
    model = TabularMLP(ModelSpec.build(pre, TrainingConfig(hidden_layers=[32])))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _, before = evaluate(model, check, kind=pre.kind, target_std=pre.target_std)
    for epoch in range(1, 16):
        run_epoch(model, optimizer, shard, kind=pre.kind, steps=16, batch=128, seed=(0, epoch, 0))
    loss, after = evaluate(model, check, kind=pre.kind, target_std=pre.target_std)

    with torch.no_grad():
        predicted = to_predictions(model(check.numeric, check.categorical), kind=pre.kind)
    if pre.kind == "multiclass":  # the metric is the accuracy
        labels = check.target.numpy()
        assert after == pytest.approx(float((predicted.argmax(1).numpy() == labels).mean()))
        assert after > max(before, 0.8)  # the bands are a function of one feature
    else:  # the RMSE in the target's own units (the shard's rows are in their shuffled order)
        spend = check.target.numpy() * pre.target_std + pre.target_mean
        assert np.allclose(np.sort(spend), np.sort(np.asarray(held["spend"])))
        values = predicted.numpy() * pre.target_std + pre.target_mean
        assert after == pytest.approx(float(np.sqrt(np.mean((values - spend) ** 2))), rel=1e-3)
        assert after < 0.5 * before
        assert after < 0.25 * float(np.std(spend))
    print(f"{pre.kind}: metric {before:.3f} -> {after:.3f}")
    assert np.isfinite(loss)


def test_the_best_round_follows_the_metric_direction_and_early_stopping_the_loss() -> None:
    state = _State()
    for epoch, rmse in enumerate([5.0, 4.0, 4.5, 3.0, 3.0], start=1):  # lower is better
        _advance(state, EpochRecord(epoch, 1.0, rmse**2, rmse, 0.1), mode="min")
    assert (state.best_metric, state.best_epoch, state.bad_epochs) == (3.0, 4, 1)
    state = _State()
    losses = [0.6, 0.5, 0.55, 0.52]  # the loss stops improving at round 2 ...
    for epoch, (auc, loss) in enumerate(zip([0.7, 0.8, 0.75, 0.81], losses, strict=False), start=1):
        _advance(state, EpochRecord(epoch, 1.0, loss, auc, 0.1), mode="max")
    # ... so patience counts rounds 3 and 4, while the best round is the best metric's
    assert (state.best_metric, state.best_epoch, state.bad_epochs) == (0.81, 4, 2)
    assert state.lowest_loss == 0.5
    assert [h["epoch"] for h in state.history] == [1, 2, 3, 4]


def test_a_tie_on_the_metric_goes_to_the_round_with_the_lower_validation_loss() -> None:
    state = _State()
    for epoch, (accuracy, loss) in enumerate([(0.9, 0.4), (1.0, 0.3), (1.0, 0.1), (1.0, 0.2)], 1):
        _advance(state, EpochRecord(epoch, 1.0, loss, accuracy, 0.1), mode="max")
    assert (state.best_epoch, state.best_loss) == (3, 0.1)


# The step budget ---------------------------------------------------------------------------------


def budget_for(rows: int, **training: object) -> Budget:
    return plan_budget(rows=rows, config=LoopTraining.of(TrainingConfig(**training)))


def test_a_small_table_gets_min_steps_of_full_batches_in_rounds_several_passes_long() -> None:
    budget = budget_for(140, batch_size=256, epochs=20, min_steps=1000, max_evaluations=25)
    assert (budget.global_batch, budget.steps_per_epoch) == (140, 1)  # the batch is capped
    assert budget.total_steps == 1000  # not 20 epochs of one step each
    assert (budget.eval_every, budget.rounds) == (40, 25)
    assert budget.warmup_steps == round(0.05 * 1000)
    assert budget.per_worker_batch(2) == 70  # each of 2 workers holds 70 rows or more


def test_a_large_table_trains_its_epochs_and_evaluates_once_an_epoch() -> None:
    budget = budget_for(2_000_000, batch_size=256, epochs=20, min_steps=1000)
    assert budget.steps_per_epoch == math.ceil(2_000_000 / 256)
    assert budget.total_steps == 20 * budget.steps_per_epoch  # min_steps is long exceeded
    assert (budget.eval_every, budget.rounds) == (budget.steps_per_epoch, 20)
    capped = budget_for(2_000_000, batch_size=256, epochs=20, max_steps=10_000)
    assert capped.total_steps == 10_000
    assert capped.eval_every == budget.steps_per_epoch  # a round is never under an epoch


@pytest.mark.parametrize("rows", [1, 7, 140, 1000, 333_333])
def test_the_budget_is_the_same_on_one_worker_and_on_several(rows: int) -> None:
    # The budget depends on the rows and the global batch only: the loop plans it without
    # knowing the world size, and each of N workers takes global // N rows a step.
    budget = budget_for(rows)
    assert budget == plan_budget(rows=rows, config=LoopTraining.of(TrainingConfig(num_workers=4)))
    for world in (1, 2, 3):
        per_worker = budget.per_worker_batch(world)
        assert per_worker * world <= budget.global_batch or per_worker == 1
        assert per_worker <= max(1, rows // world)  # within the smallest shard (tested above)
    assert budget.round_end(budget.rounds) == budget.total_steps


def test_the_learning_rate_warms_up_linearly_then_decays_on_a_cosine_to_its_floor() -> None:
    budget = Budget(rows=100, global_batch=10, steps_per_epoch=10, total_steps=110,
                    eval_every=10, warmup_steps=10)  # fmt: skip
    factors = [lr_factor(step, budget, min_lr_share=0.05) for step in range(110)]
    assert factors[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert factors[10] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(0.05)
    assert factors[60] == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 50 / 99)))
    decay = factors[10:]
    assert all(a >= b for a, b in itertools.pairwise(decay))


# Resuming ----------------------------------------------------------------------------------------


def test_resuming_at_a_checkpoint_continues_the_stream_and_schedule_exactly(
    tmp_path: Path,
) -> None:
    # The stream, the optimizer and the scheduler come back from a checkpoint at step 30 of 80:
    # the resumed weights equal those of a run that never stopped.
    table = make_table(300, seed=4)
    pre = preprocessor(table, target="band")
    shard = read_shard(write_encoded(table, pre, tmp_path / "t.parquet", shards=1), rank=0,
                       world_size=1)  # fmt: skip
    spec = ModelSpec.build(pre, TrainingConfig(hidden_layers=[16]))
    hp = LoopTraining.of(TrainingConfig(batch_size=64, min_steps=80, epochs=1, seed=5))
    budget = plan_budget(rows=len(shard), config=hp)
    assert budget.total_steps == 80  # 80 steps over 4 batches a pass: 20 passes

    def fresh() -> tuple[TabularMLP, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        torch.manual_seed(0)
        model = TabularMLP(spec)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
        return model, optimizer, make_scheduler(optimizer, budget, min_lr_share=0.05)

    def steps(model: TabularMLP, opt: torch.optim.Optimizer, sched: object, a: int, b: int) -> None:
        stream = BatchStream(shard, batch=budget.per_worker_batch(1), seed=hp.seed, rank=0)
        run_steps(model, opt, stream, kind=pre.kind, start=a, stop=b, dropout_seed=(5, a, 0),
                  scheduler=sched)  # type: ignore[arg-type]  # fmt: skip

    straight, opt, sched = fresh()
    steps(straight, opt, sched, 0, 30)
    steps(straight, opt, sched, 30, 80)

    first, opt, sched = fresh()
    steps(first, opt, sched, 0, 30)
    state = _State(epoch=1, step=30, best_epoch=1)
    loop = LoopConfig("unused", "unused", spec, pre, hp, "max", budget=budget)
    _write_checkpoint(tmp_path / "ckpt", first, opt, sched, state, loop, best=None)
    resumed, opt, sched = fresh()  # a new worker: fresh objects, then the checkpoint
    loaded, best, saved = _read_checkpoint(tmp_path / "ckpt", resumed)
    opt.load_state_dict(saved["optimizer"])
    sched.load_state_dict(saved["scheduler"])
    assert loaded.step == 30
    assert sched.last_epoch == 30
    assert all(torch.equal(best[k], v) for k, v in resumed.state_dict().items())
    steps(resumed, opt, sched, loaded.step, 80)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_a_checkpoint_carries_the_best_rounds_weights_when_it_is_not_the_round_itself(
    tmp_path: Path,
) -> None:
    pre = preprocessor(make_table(100), target="band")
    spec = ModelSpec.build(pre, TrainingConfig(hidden_layers=[8]))
    torch.manual_seed(0)
    best_model, now = TabularMLP(spec), TabularMLP(spec)
    optimizer = torch.optim.AdamW(now.parameters())
    budget = budget_for(100)
    scheduler = make_scheduler(optimizer, budget, min_lr_share=0.05)
    loop = LoopConfig("unused", "unused", spec, pre, LoopTraining.of(TrainingConfig()), "max")
    state = _State(epoch=3, step=120, best_epoch=2)
    _write_checkpoint(tmp_path / "c", now, optimizer, scheduler, state, loop,
                      best=_weights(best_model))  # fmt: skip
    assert best_model_folder(tmp_path / "c") == tmp_path / "c" / BEST
    _, best, _ = _read_checkpoint(tmp_path / "c", TabularMLP(spec))
    assert all(torch.equal(best[k], v) for k, v in best_model.state_dict().items())
    _write_checkpoint(tmp_path / "d", now, optimizer, scheduler, state, loop, best=None)
    assert best_model_folder(tmp_path / "d") == tmp_path / "d" / "model"  # the round is best


def test_a_row_of_weight_zero_teaches_nothing_and_counts_nothing_in_validation(
    tmp_path: Path,
) -> None:
    table = make_table(600, seed=4)
    pre = preprocessor(table, target="band")
    weights = np.where(np.arange(600) < 300, 1.0, 0.0)  # the second half weighs nothing
    both = read_shard(write_encoded(table, pre, tmp_path / "w.parquet", shards=1,
                                    weights=weights), rank=0, world_size=1)  # fmt: skip
    alone = read_shard(write_encoded(table.slice(0, 300), pre, tmp_path / "a.parquet", shards=1),
                       rank=0, world_size=1)  # fmt: skip
    assert sorted(both.weight.tolist()) == [0.0] * 300 + [1.0] * 300
    torch.manual_seed(0)
    model = TabularMLP(ModelSpec.build(pre, TrainingConfig(hidden_layers=[16])))
    # validation: the weighted rows alone count, as if the others were not there
    weighted, unweighted = (
        evaluate(model, both, kind=pre.kind),
        evaluate(model, alone, kind=pre.kind),
    )
    assert weighted == pytest.approx(unweighted)
    # training: a step on rows of weight zero leaves the model as it was
    light = both.take(torch.from_numpy(np.flatnonzero(both.weight.numpy() == 0)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stream = BatchStream(light, batch=64, seed=0, rank=0)
    run_steps(model, optimizer, stream, kind=pre.kind, start=0, stop=3, dropout_seed=(0, 1, 0))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
