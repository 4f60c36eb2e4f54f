"""Data access through pyarrow: files, folders and URIs; the split; the fingerprint."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from tasks import data, files
from tasks.settings import DatasetConfig, SplitConfig


def make_table(rows: int = 3000, *, seed: int = 0, repeat_ids: bool = False) -> pa.Table:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, rows // 4, rows) if repeat_ids else np.arange(rows)
    return pa.table(
        {
            "customer_id": pa.array([f"c{i}" for i in ids]),
            "region": pa.array(rng.choice(["north", "south", "east"], rows)),
            "amount": rng.normal(50, 10, rows),
            "churned": (rng.random(rows) < 0.1).astype(np.int64),
        }
    )


def config(*, task: str = "classification", id: str | None = "customer_id") -> DatasetConfig:
    target = "churned" if task == "classification" else "amount"
    return DatasetConfig(name="t", source="unused", target=target, task=task, id=id)


# Reading -----------------------------------------------------------------------------------------


def test_a_file_a_hive_folder_and_a_file_uri_read_the_same_rows(tmp_path: Path) -> None:
    table = make_table(500)
    pq.write_table(table, tmp_path / "one.parquet")
    pads.write_dataset(
        table,
        tmp_path / "parts",
        format="parquet",
        partitioning=["region"],
        partitioning_flavor="hive",
    )
    from_file = data.read_table(str(tmp_path / "one.parquet"))
    from_uri = data.read_table((tmp_path / "one.parquet").as_uri())
    from_folder = data.read_table(str(tmp_path / "parts"))
    assert from_file.equals(table)
    assert from_uri.equals(table)
    assert from_folder.num_rows == table.num_rows
    assert "region" in from_folder.column_names  # the partition key comes back as a column
    assert data.fingerprint(from_folder.select(table.column_names).cast(table.schema)) == (
        data.fingerprint(table)
    )


def test_read_schema_reads_only_the_footer_of_each_file(tmp_path: Path) -> None:
    pq.write_table(make_table(10), tmp_path / "t.parquet")
    assert data.read_schema(str(tmp_path / "t.parquet")).names == [
        "customer_id",
        "region",
        "amount",
        "churned",
    ]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "the file is empty (0 bytes)"),
        (b"customer_id,churned\n1,0\n", "not Parquet (no Parquet magic bytes"),
        (b"id,y\n", "not Parquet (no Parquet magic bytes"),
    ],
)
def test_unreadable_files_give_one_line_naming_the_file(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(content)
    with pytest.raises(data.DataError) as caught:
        data.read_table(str(path))
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_truncated_file_gives_one_line_naming_the_file(tmp_path: Path) -> None:
    whole = tmp_path / "whole.parquet"
    pq.write_table(make_table(2000), whole)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(data.DataError, match=r"cut.parquet: .*truncated or corrupt") as caught:
        data.read_table(str(cut))
    assert "\n" not in str(caught.value)


def test_a_missing_path_and_an_empty_folder_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(data.DataError, match="no such file or directory"):
        data.read_table(str(tmp_path / "nope.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match="holds no Parquet files"):
        data.read_table(str(tmp_path / "empty"))


def test_an_unknown_uri_scheme_is_a_clear_error() -> None:
    with pytest.raises(data.DataError, match="cannot open this URI"):
        data.read_table("nosuchfs://bucket/data.parquet")


def test_feature_kinds_are_inferred_from_arrow_types() -> None:
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("n", pa.int32()),
            ("x", pa.float64()),
            ("flag", pa.bool_()),
            ("cat", pa.dictionary(pa.int8(), pa.string())),
            ("when", pa.timestamp("us")),
            ("tags", pa.list_(pa.string())),
            ("y", pa.int64()),
        ]
    )
    numeric, categorical = data.infer_features(schema, exclude={"id", "y"})
    assert numeric == ["n", "x"]
    assert categorical == ["flag", "cat"]


# Fingerprint -------------------------------------------------------------------------------------


def test_the_fingerprint_is_stable_across_rereads_and_row_order(tmp_path: Path) -> None:
    table = make_table(1000)
    pq.write_table(table, tmp_path / "t.parquet")
    shuffled = table.take(np.random.default_rng(1).permutation(table.num_rows))
    assert data.fingerprint(data.read_table(str(tmp_path / "t.parquet"))) == data.fingerprint(table)
    assert data.fingerprint(shuffled) == data.fingerprint(table)


def test_the_fingerprint_changes_when_any_row_changes() -> None:
    table = make_table(1000)
    amounts = table["amount"].to_numpy().copy()
    amounts[517] += 0.001
    edited = table.set_column(2, "amount", pa.array(amounts))
    assert data.fingerprint(edited) != data.fingerprint(table)
    assert data.fingerprint(table.slice(0, 999)) != data.fingerprint(table)
    assert data.fingerprint(table.cast(table.schema.set(2, pa.field("amount", pa.float32())))) != (
        data.fingerprint(table)
    )


def test_the_fingerprint_tells_apart_values_a_pandas_conversion_would_merge() -> None:
    def one_row(column: pa.Array) -> str:
        return data.fingerprint(pa.table({"x": column}))

    big = pa.array([2**53, None], pa.int64())  # nullable: pandas would make it float64
    assert one_row(big) != one_row(pa.array([2**53 + 1, None], pa.int64()))
    assert one_row(pa.array([float("nan")])) != one_row(pa.array([None], pa.float64()))
    assert one_row(pa.array(["None"])) != one_row(pa.array([None], pa.string()))
    assert one_row(pa.array([0.0])) != one_row(pa.array([None], pa.float64()))


def nested_table(rows: int = 500) -> pa.Table:
    rng = np.random.default_rng(3)
    return pa.table(
        {
            "customer_id": pa.array([f"c{i}" for i in range(rows)]),
            "tags": pa.array([[f"t{j}" for j in range(i % 3)] or None for i in range(rows)]),
            "address": pa.array([{"zip": int(z), "city": f"city{z % 7}"} for z in range(rows)]),
            "visits": pa.array([2**53 + int(i) if i % 5 else None for i in range(rows)]),
            "churned": (rng.random(rows) < 0.2).astype(np.int64),
        }
    )


def test_list_and_struct_columns_get_a_stable_fingerprint_that_sees_each_element(
    tmp_path: Path,
) -> None:
    table = nested_table()
    pq.write_table(table, tmp_path / "nested.parquet")
    reread = data.read_table(str(tmp_path / "nested.parquet"))
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    assert data.fingerprint(reread) == data.fingerprint(table)
    assert data.fingerprint(shuffled) == data.fingerprint(table)

    tags = table["tags"].to_pylist()
    tags[2] = list(reversed(tags[2]))  # the same elements in another order
    reordered = table.set_column(1, "tags", pa.array(tags))
    visits = table["visits"].to_pylist()
    visits[1] += 1  # 2**53 + 2: a float64 round trip would not see it
    bumped = table.set_column(3, "visits", pa.array(visits))
    prints = {data.fingerprint(t) for t in (table, reordered, bumped)}
    assert len(prints) == 3


def test_a_table_with_nested_columns_splits_by_row_or_by_id() -> None:
    table = nested_table(2000)
    for id_column in (None, "customer_id"):
        parts = data.split(table, dataset=config(id=id_column), config=SplitConfig())
        assert sum(p.num_rows for p in parts) == table.num_rows
        assert all(p.num_rows > 200 for p in parts)


# Split -------------------------------------------------------------------------------------------


def test_split_sizes_follow_the_configured_fractions() -> None:
    parts = data.split(make_table(10_000), dataset=config(), config=SplitConfig())
    sizes = [p.num_rows for p in parts]
    assert sum(sizes) == 10_000
    assert sizes[1] == pytest.approx(1500, abs=5)
    assert sizes[2] == pytest.approx(1500, abs=5)


def test_classification_splits_keep_the_class_balance() -> None:
    table = make_table(10_000)
    overall = pc.mean(table["churned"]).as_py()
    for part in data.split(table, dataset=config(), config=SplitConfig()):
        assert pc.mean(part["churned"]).as_py() == pytest.approx(overall, abs=0.005)


def test_regression_splits_cover_the_whole_target_range() -> None:
    table = make_table(10_000)
    parts = data.split(table, dataset=config(task="regression"), config=SplitConfig())
    quantiles = [np.quantile(p["amount"].to_numpy(), [0.1, 0.5, 0.9]) for p in parts]
    for q in quantiles[1:]:
        np.testing.assert_allclose(q, quantiles[0], rtol=0.03)


def test_no_id_appears_in_two_splits_when_ids_repeat() -> None:
    table = make_table(6000, repeat_ids=True)
    ids = [
        set(p["customer_id"].to_pylist())
        for p in data.split(table, dataset=config(), config=SplitConfig())
    ]
    assert not ids[0] & ids[1]
    assert not ids[0] & ids[2]
    assert not ids[1] & ids[2]
    assert all(ids)


def test_the_split_is_deterministic_and_independent_of_row_order() -> None:
    table = make_table(3000)
    shuffled = table.take(np.random.default_rng(7).permutation(table.num_rows))
    first = data.split(table, dataset=config(), config=SplitConfig())
    again = data.split(table, dataset=config(), config=SplitConfig())
    reordered = data.split(shuffled, dataset=config(), config=SplitConfig())
    for a, b, c in zip(first, again, reordered, strict=True):
        assert a.equals(b)
        assert sorted(a["customer_id"].to_pylist()) == sorted(c["customer_id"].to_pylist())


def test_another_seed_gives_another_split() -> None:
    table = make_table(3000)
    one = data.split(table, dataset=config(), config=SplitConfig(seed=1)).holdout
    two = data.split(table, dataset=config(), config=SplitConfig(seed=2)).holdout
    assert set(one["customer_id"].to_pylist()) != set(two["customer_id"].to_pylist())


def test_duplicate_rows_never_straddle_two_splits() -> None:
    table = make_table(2000)
    doubled = pa.concat_tables([table, table])
    parts = data.split(doubled, dataset=config(id=None), config=SplitConfig())
    ids = [set(p["customer_id"].to_pylist()) for p in parts]
    assert not ids[0] & ids[1]
    assert not ids[0] & ids[2]
    assert not ids[1] & ids[2]


def test_row_hashes_computed_once_give_the_same_fingerprint_and_split() -> None:
    table = make_table(3000)
    ids = table["customer_id"].to_pylist()
    some_null = pa.array([None if i % 7 else v for i, v in enumerate(ids)])
    table = table.set_column(0, "customer_id", some_null)
    hashes = data.row_hashes(table)
    assert data.fingerprint(table, hashes=hashes) == data.fingerprint(table)
    for dataset in (config(), config(id=None)):  # null ids fall back on the row's own hash
        given = data.split(table, dataset=dataset, config=SplitConfig(), hashes=hashes)
        computed = data.split(table, dataset=dataset, config=SplitConfig())
        assert all(a.equals(b) for a, b in zip(given, computed, strict=True))
    for wrong in (hashes[:-1], hashes.astype(np.int64)):
        with pytest.raises(ValueError, match="hashes must be the table's row_hashes: 3000 uint64"):
            data.fingerprint(table, hashes=wrong)
        with pytest.raises(ValueError, match="hashes must be the table's row_hashes"):
            data.split(table, dataset=config(id=None), config=SplitConfig(), hashes=wrong)


def test_a_split_that_would_leave_a_part_empty_is_refused_with_the_counts() -> None:
    table = make_table(200).set_column(
        0, "customer_id", pa.array([f"c{i % 4}" for i in range(200)])
    )  # 200 rows, 4 customers: a part would get no customer
    with pytest.raises(data.DataError) as caught:
        data.split(table, dataset=config(), config=SplitConfig())
    message = str(caught.value)
    assert "200 rows with 4 distinct 'customer_id' values" in message
    assert "holdout 0" in message
    assert "\n" not in message


def test_rows_with_a_null_id_are_each_their_own_unit() -> None:
    table = make_table(1000)
    ids = table["customer_id"].to_pylist()
    ids[:300] = [None] * 300
    table = table.set_column(0, "customer_id", pa.array(ids, pa.string()))
    parts = data.split(table, dataset=config(), config=SplitConfig())
    nulls = [p["customer_id"].null_count for p in parts]
    assert sum(nulls) == 300
    assert nulls[1] == pytest.approx(45, abs=15)  # about 15% of them, like every other row
    assert nulls[2] == pytest.approx(45, abs=15)


def test_join_puts_parts_under_a_path_or_a_uri_and_keeps_the_uris_options_last() -> None:
    assert files.join("/srv/home/", "ray", "run") == "/srv/home/ray/run"
    assert files.join("file:///srv/home", "ray") == "file:///srv/home/ray"
    assert (
        files.join("s3://bucket/home?endpoint_override=127.0.0.1:9000&scheme=http", "ray", "x")
        == "s3://bucket/home/ray/x?endpoint_override=127.0.0.1:9000&scheme=http"
    )


def test_with_a_timestamp_the_holdout_is_the_newest_rows_and_no_id_straddles_it() -> None:
    table = make_table(3000, repeat_ids=True)
    stamps = np.datetime64("2026-01-01T00:00", "us") + np.arange(3000) * np.timedelta64(1, "h")
    table = table.append_column("at", pa.array(np.random.default_rng(1).permutation(stamps)))
    dated = DatasetConfig(name="t", source="unused", target="churned", id="customer_id",
                          timestamp="at")  # fmt: skip
    parts = data.split(table, dataset=dated, config=SplitConfig(validation=0.15, holdout=0.15))
    newest_elsewhere = max(pc.max(p["at"]).as_py() for p in (parts.train, parts.validation))
    assert pc.min(parts.holdout["at"]).as_py() < newest_elsewhere  # an id's older rows go along
    by_id: dict[str, str] = {}
    for name, part in zip(("train", "validation", "holdout"), parts, strict=True):
        for customer in set(part["customer_id"].to_pylist()):
            assert by_id.setdefault(customer, name) == name  # no id in two splits
    holdout_ids = set(parts.holdout["customer_id"].to_pylist())
    newest = table.group_by("customer_id").aggregate([("at", "max")])
    ranked = sorted(zip(newest["at_max"].to_pylist(), newest["customer_id"].to_pylist(),
                        strict=True))  # fmt: skip
    assert holdout_ids == {c for _, c in ranked[-len(holdout_ids) :]}  # the newest ids
    assert 0.12 < len(holdout_ids) / len(ranked) < 0.18
    assert 0.6 < parts.train.num_rows / 3000 < 0.8


def test_a_weighted_sample_draws_by_weight_and_no_more_rows_than_they_are_worth() -> None:
    table = pa.table({"i": np.arange(10_000)})
    weights = np.where(np.arange(10_000) < 1_000, 1.0, 0.0)
    weights[1_000:1_100] = 0.001  # rows worth almost nothing
    drawn = pq.read_table(pa.BufferReader(data.sample_parquet(table, rows=5_000,
                                                              weights=weights)))  # fmt: skip
    picked = np.asarray(drawn["i"])
    assert 900 <= len(picked) <= 1_001  # the weights are worth ~1,000 rows, not 5,000
    assert (picked < 1_100).all()  # a row of weight 0 is never drawn
    assert (picked >= 1_000).sum() < 20
    assert list(picked) == sorted(picked)  # in their order
    plain = pq.read_table(pa.BufferReader(data.sample_parquet(table, rows=5_000)))
    assert plain.num_rows == 5_000
