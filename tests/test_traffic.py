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


def test_labels_of_one_id_at_one_microsecond_resolve_by_arrival_for_every_reader(
    home: str,
) -> None:
    traffic.append(home=home, model=MODEL, kind="predictions", rows=served(["a", "b"]))
    at = T0 + timedelta(hours=1)
    for label in (1, 0, 1, 0):  # four arrivals, one microsecond: the last one wins
        traffic.append(home=home, model=MODEL, kind="feedback", rows=labels({"a": label}, at=at))
    found = traffic.labelled(home=home, model=MODEL, target=TARGET, limit=10)
    assert found is not None
    assert found[TARGET].to_pylist() == [0]
    # compacted into one file, the same label still wins
    later = (at + timedelta(days=3)).date()
    assert traffic.compact(home=home, model=MODEL, kind="feedback", before=later) == 1
    again = traffic.labelled(home=home, model=MODEL, target=TARGET, limit=10)
    assert again is not None
    assert again[TARGET].to_pylist() == [0]


def test_a_compacted_day_is_one_file_read_as_the_same_rows_and_a_lookup_finds_each_id(
    tmp_path: Path,
) -> None:
    home = str(tmp_path / "home")
    now = datetime.now(timezone.utc).replace(hour=0, minute=0)
    ids = []
    for _ in range(10):  # ten files of one day, as ten segments would write them
        batch = [traffic.new_request_ids(1)[0] for _ in range(30)]  # ids say when: about now
        ids += batch
        traffic.append(home=home, model=MODEL, kind="predictions",
                       rows=served(batch, start=datetime.now(timezone.utc)))  # fmt: skip
    before = traffic.read(home=home, model=MODEL, kind="predictions")
    assert before is not None
    assert len(traffic.log_files(home=home, model=MODEL, kind="predictions")) > 1
    today = (now + timedelta(days=30)).date()
    assert traffic.compact(home=home, model=MODEL, kind="predictions", before=now.date()) == 0
    assert traffic.compact(home=home, model=MODEL, kind="predictions", before=today) >= 1
    after = traffic.read(home=home, model=MODEL, kind="predictions")
    assert after is not None
    key = [("request_id", "ascending")]
    assert after.sort_by(key).equals(before.select(after.column_names).sort_by(key))
    days = {f.rsplit("/", 2)[-2] for f in traffic.log_files(home=home, model=MODEL,
                                                            kind="predictions")}  # fmt: skip
    assert len(traffic.log_files(home=home, model=MODEL, kind="predictions")) == len(days)
    wanted = {ids[7], ids[299], "f" * 32}
    assert traffic.logged_ids(home=home, model=MODEL, wanted=wanted) == {ids[7], ids[299]}


def test_a_reader_between_the_compacted_file_and_the_removal_sees_each_row_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = str(tmp_path / "home")
    for part in range(3):
        traffic.append(home=home, model=MODEL, kind="predictions",
                       rows=served([f"p{part}-{i}" for i in range(20)]))  # fmt: skip
    seen: list[int] = []
    remove = traffic.upkeep._remove

    def read_before_removal(location: str) -> None:  # before each removal, a reader reads
        table = traffic.read(home=home, model=MODEL, kind="predictions")
        seen.append(0 if table is None else table.num_rows)
        remove(location)

    monkeypatch.setattr("tasks.traffic.upkeep._remove", read_before_removal)
    later = (T0 + timedelta(days=2)).date()
    traffic.compact(home=home, model=MODEL, kind="predictions", before=later)
    assert seen  # readers ran while the old files were still there
    assert set(seen) == {60}


def test_retention_removes_old_days_and_reports_and_usage_counts_what_is_left(
    tmp_path: Path,
) -> None:
    home = str(tmp_path / "home")
    for days_ago in (100, 10, 0):
        at = T0 - timedelta(days=days_ago)
        traffic.append(home=home, model=MODEL, kind="predictions",
                       rows=served([f"r{days_ago}"], start=at))  # fmt: skip
        traffic.append(home=home, model=MODEL, kind="feedback",
                       rows=labels({f"r{days_ago}": 1}, at=at))  # fmt: skip
        report = Path(home) / "reports" / MODEL / "monitor" / at.strftime("%Y%m%dT%H%M%S%fZ")
        report.mkdir(parents=True)
        (report / "drift.html").write_text("<html></html>")
    assert traffic.usage(home=home, model=MODEL).files == 6
    removed = traffic.retire(home=home, model=MODEL, days=90, now=T0)
    assert removed == 3  # a day of predictions, of labels, and a report
    left = traffic.read(home=home, model=MODEL, kind="predictions")
    assert left is not None
    assert sorted(left["request_id"].to_pylist()) == ["r0", "r10"]
    assert len(list((Path(home) / "reports" / MODEL / "monitor").iterdir())) == 2
    found = traffic.usage(home=home, model=MODEL)
    assert (found.files, found.days, found.spool_segments) == (4, 2, 0)
    assert "4 files" in found.describe()
