"""The per-worker loop without Ray: shards, steps, every task kind learning, early stopping.

Ray Train runs these functions in each worker (tests/test_train.py runs them there); with no
process group the all-reduces are no-ops, so one process stands for a world of one.
"""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from tasks.loop import (
    EpochRecord,
    _advance,
    _State,
    _steps_per_epoch,
    evaluate,
    read_shard,
    run_epoch,
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
    # the same step count on every rank (DDP blocks otherwise), and no rank runs out of rows
    for batch_size in (1, 4, 256):
        steps = _steps_per_epoch(path, world_size=shards, batch_size=batch_size)
        per_worker = max(1, batch_size // shards)
        assert steps >= 1
        assert all((steps - 1) * per_worker < len(part) for part in parts)
        assert steps * per_worker >= min(len(part) for part in parts)  # the smallest is covered


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


def test_early_stopping_follows_the_metric_direction() -> None:
    state = _State()
    for epoch, rmse in enumerate([5.0, 4.0, 4.5, 3.0, 3.0], start=1):  # lower is better
        _advance(state, EpochRecord(epoch, 1.0, 1.0, rmse, 0.1), mode="min")
    assert (state.best_metric, state.best_epoch, state.bad_epochs) == (3.0, 4, 1)
    state = _State()
    for epoch, auc in enumerate([0.7, 0.8, 0.75, 0.79], start=1):  # higher is better
        _advance(state, EpochRecord(epoch, 1.0, 1.0, auc, 0.1), mode="max")
    assert (state.best_metric, state.best_epoch, state.bad_epochs) == (0.8, 2, 2)
    assert [h["epoch"] for h in state.history] == [1, 2, 3, 4]
