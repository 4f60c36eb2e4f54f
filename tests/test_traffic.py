"""The prediction log and feedback labels: real Parquet files under a home (a folder or file://)."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import synthetic, traffic

MODEL, TARGET = "churn", "churned"
T0 = datetime(2026, 11, 30, 12, tzinfo=timezone.utc)


def served(ids: list[str], *, start: datetime = T0, seed: int = 0) -> pa.Table:
    """Rows as serving logs them: request ids, a time each, the features, the model version."""
    rows = synthetic.generate(rows=len(ids), seed=seed).drop_columns([TARGET])
    times = pa.array([start + timedelta(minutes=i) for i in range(len(ids))],
                     pa.timestamp("us", tz="UTC"))  # fmt: skip
    return (
        rows.append_column(traffic.REQUEST_ID, pa.array(ids))
        .append_column(traffic.PREDICTED_AT, times)
        .append_column("model_version", pa.array([1] * len(ids)))
    )


def labels(pairs: dict[str, int | None], *, at: datetime) -> pa.Table:
    return pa.table({
        traffic.REQUEST_ID: list(pairs),
        TARGET: pa.array(list(pairs.values()), pa.int64()),
        traffic.RECEIVED_AT: pa.array([at] * len(pairs), pa.timestamp("us", tz="UTC")),
    })  # fmt: skip


@pytest.fixture(params=["path", "uri"])
def home(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    folder = tmp_path / "home"
    return str(folder) if request.param == "path" else folder.as_uri()


def test_the_newest_labelled_predictions_come_back_with_their_features_and_label(
    home: str,
) -> None:
    ids = [f"r{i}" for i in range(10)]
    traffic.append(home=home, model=MODEL, kind="predictions", rows=served(ids[:6]))
    later = served(ids[6:], start=T0 + timedelta(days=1), seed=1)
    traffic.append(home=home, model=MODEL, kind="predictions", rows=later)
    traffic.append(home=home, model=MODEL, kind="feedback",
                   rows=labels({"r1": 1, "r2": 0, "r7": 1, "r8": None}, at=T0))  # fmt: skip

    got = traffic.labelled(home=home, model=MODEL, target=TARGET, limit=100)
    assert got is not None
    assert got[traffic.REQUEST_ID].to_pylist() == ["r7", "r2", "r1"]  # newest first; r8 unlabelled
    assert got[TARGET].to_pylist() == [1, 0, 1]
    assert set(synthetic.NUMERIC_FEATURES) <= set(got.column_names)
    original = later.filter(pa.compute.equal(later[traffic.REQUEST_ID], "r7"))
    assert got.slice(0, 1)["tenure_months"].to_pylist() == original["tenure_months"].to_pylist()
    limited = traffic.labelled(home=home, model=MODEL, target=TARGET, limit=2)
    assert limited is not None
    assert limited[traffic.REQUEST_ID].to_pylist() == ["r7", "r2"]


def test_a_label_sent_again_later_replaces_the_first_one(home: str) -> None:
    traffic.append(home=home, model=MODEL, kind="predictions", rows=served(["a", "b"]))
    traffic.append(home=home, model=MODEL, kind="feedback", rows=labels({"a": 0, "b": 0}, at=T0))
    fixed = labels({"a": 1}, at=T0 + timedelta(hours=1))
    traffic.append(home=home, model=MODEL, kind="feedback", rows=fixed)
    got = traffic.labelled(home=home, model=MODEL, target=TARGET, limit=10)
    assert got is not None
    assert dict(zip(got[traffic.REQUEST_ID].to_pylist(), got[TARGET].to_pylist(), strict=True)) == {
        "a": 1,
        "b": 0,
    }


def test_the_log_is_partitioned_by_day_and_holds_only_whole_files(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    written = traffic.append(home=home, model=MODEL, kind="predictions", rows=served(["x", "y"]))
    assert written is not None
    assert Path(written).parent.name == "date=2026-11-30"
    assert pq.read_table(written).num_rows == 2
    assert not list((tmp_path / "home").rglob("*.tmp"))


def test_no_log_or_no_labels_yet_means_no_production_rows(home: str) -> None:
    assert traffic.labelled(home=home, model=MODEL, target=TARGET, limit=10) is None
    traffic.append(home=home, model=MODEL, kind="predictions", rows=served(["a"]))
    assert traffic.labelled(home=home, model=MODEL, target=TARGET, limit=10) is None
    traffic.append(home=home, model=MODEL, kind="feedback", rows=labels({"zz": 1}, at=T0))
    assert traffic.labelled(home=home, model=MODEL, target=TARGET, limit=10) is None


def test_a_missing_time_is_stamped_on_arrival(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    rows = pa.table({traffic.REQUEST_ID: ["a"], TARGET: [1]})
    traffic.append(home=home, model=MODEL, kind="feedback", rows=rows)
    stored = traffic.read(home=home, model=MODEL, kind="feedback")
    assert stored is not None
    assert stored[traffic.RECEIVED_AT][0].as_py() > T0


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (pa.table({"id": ["a"], TARGET: [1]}), "no 'request_id' column; columns: id, churned"),
        (pa.table({traffic.REQUEST_ID: ["a", None], TARGET: [1, 0]}), "1 row.* have no request_id"),
        (
            pa.table({traffic.REQUEST_ID: ["a"], TARGET: [1], traffic.RECEIVED_AT: ["today"]}),
            "received_at: must be a timestamp, not string",
        ),
    ],
)
def test_rows_that_cannot_join_the_log_are_refused_and_nothing_is_written(
    tmp_path: Path, rows: pa.Table, message: str
) -> None:
    home = tmp_path / "home"
    with pytest.raises(traffic.TrafficError, match=message):
        traffic.append(home=str(home), model=MODEL, kind="feedback", rows=rows)
    assert not home.exists()


def test_labels_without_the_target_column_are_named_as_the_problem(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    traffic.append(home=home, model=MODEL, kind="predictions", rows=served(["a"]))
    wrong = pa.table({traffic.REQUEST_ID: ["a"], "label": [1]})
    traffic.append(home=home, model=MODEL, kind="feedback", rows=wrong)
    with pytest.raises(traffic.TrafficError, match="no 'churned' column"):
        traffic.labelled(home=home, model=MODEL, target=TARGET, limit=10)
