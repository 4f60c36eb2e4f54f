"""How a retraining weights its rows by age, and chooses how fast the old ones fade, in-process
(no Ray: the quick fits run in the driver; tests/test_retraining.py trains on Ray)."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tasks import synthetic
from tasks.settings import RetrainingConfig, Settings, load_settings
from tasks.train import ages_in_days, choose_half_life, recency_weights

DAY = 86_400 * 1_000_000


def settings(tmp_path: Path, **retraining: object) -> Settings:
    source = tmp_path / "data" / "churn.parquet"
    synthetic.write_parquet(synthetic.generate(rows=500, seed=1), source)
    (tmp_path / "driftloop.yaml").write_text(
        "dataset:\n  name: churn\n  source: data/churn.parquet\n  target: churned\n"
        "  id: customer_id\n  timestamp: event_time\n"
    )
    found = load_settings(tmp_path / "driftloop.yaml")
    return found.model_copy(update={"retraining": RetrainingConfig(**retraining)})


def test_ages_count_back_from_the_newest_row_and_a_row_without_a_time_counts_as_old() -> None:
    times = np.array([10 * DAY, 9 * DAY, np.nan, 4 * DAY])
    assert list(ages_in_days(times, untimed_days=3)) == [0, 1, 6, 6]  # the oldest: 6 days
    assert list(ages_in_days(times, untimed_days=30)) == [0, 1, 30, 6]  # at least 30
    assert list(ages_in_days(np.full(2, np.nan), untimed_days=30)) == [30, 30]
    ages = np.array([0.0, 7.0, 14.0])
    assert list(recency_weights(ages, 7.0)) == [1.0, 0.5, 0.25]
    assert list(recency_weights(ages, None)) == [1.0, 1.0, 1.0]


def test_after_a_concept_drift_the_choice_fades_the_old_source_and_says_why(
    tmp_path: Path,
) -> None:
    config = settings(tmp_path)
    old = synthetic.generate(rows=6_000, seed=1)  # event_time: the first 90 days of 2026
    new = synthetic.generate(rows=1_500, seed=2, scenario="concept_drift")
    pool, select = pa.concat_tables([old, new.slice(0, 1_100)]), new.slice(1_100)
    times = pc.cast(old["event_time"], pa.timestamp("us", tz="UTC")).cast(pa.int64())
    now = float(np.asarray(times).max()) + 200 * DAY  # the traffic: 200 days after the source
    ages = ages_in_days(np.r_[np.asarray(times, dtype=float), np.full(1_100, now)],
                        untimed_days=30)  # fmt: skip
    chosen = choose_half_life(pool, ages, select=select, settings=config)
    scores = {c.half_life_days: c.metric for c in chosen.candidates}
    assert list(scores) == [None, 90.0, 30.0, 7.0]
    assert chosen.half_life_days in (30.0, 7.0), chosen.reason
    assert scores[chosen.half_life_days] - scores[None] > 0.3  # the old world is in the way
    assert chosen.metric_name == "val_auc"
    assert chosen.reason.startswith(f"half-life {chosen.half_life_days:g} d: best val_auc on 400")
    assert next(c for c in chosen.candidates if c.half_life_days == 7.0).rows == 1_100  # pruned
    # the same world, no drift: keeping the old rows does not hurt
    same = synthetic.generate(rows=1_500, seed=3)
    stable = choose_half_life(pa.concat_tables([old, same.slice(0, 1_100)]), ages,
                              select=same.slice(1_100), settings=config)  # fmt: skip
    kept = {c.half_life_days: c.metric for c in stable.candidates}
    assert kept[None] >= max(kept.values()) - 0.03, stable.reason


def test_too_few_recent_rows_to_choose_on_keep_the_first_candidate_and_say_so(
    tmp_path: Path,
) -> None:
    config = settings(tmp_path, half_lives_days=[30.0, 7.0], min_selection_rows=100)
    table = synthetic.generate(rows=600, seed=1)
    chosen = choose_half_life(table, np.zeros(600), select=table.slice(0, 40), settings=config)
    assert (chosen.half_life_days, chosen.candidates) == (30.0, [])
    assert "only 40 recent labelled rows to choose on (< retraining.min_selection_rows 100)" \
        in chosen.reason  # fmt: skip


def test_the_retraining_settings_refuse_what_cannot_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="half_lives_days: each is a number of days > 0"):
        RetrainingConfig(half_lives_days=[None, 0.0])
    (tmp_path / "data").mkdir()
    synthetic.write_parquet(synthetic.generate(rows=200, seed=1), tmp_path / "data" / "c.parquet")
    (tmp_path / "driftloop.yaml").write_text(
        "dataset:\n  name: churn\n  source: data/c.parquet\n  target: churned\n"
        "retraining:\n  source_window_days: 30\n"
    )
    with pytest.raises(ValueError, match=r"source_window_days needs dataset\.timestamp"):
        load_settings(tmp_path / "driftloop.yaml")
    (tmp_path / "driftloop.yaml").write_text(
        "dataset:\n  name: churn\n  source: data/c.parquet\n  target: churned\n"
        "monitoring:\n  feedback_days: 30\n"
    )
    with pytest.raises(ValueError, match=r"monitoring\.feedback_days moved to retraining"):
        load_settings(tmp_path / "driftloop.yaml")
