"""The validation gate: the suite, bad data caught on the right column, reports, Prefect wiring."""

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tasks import data, events, synthetic, validation
from tasks.settings import ConfigError, Settings, ValidationConfig, load_settings

ROWS = 3000
TARGET = "churned"


@pytest.fixture(autouse=True)
def _no_driftloop_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("DRIFTLOOP_")]:
        monkeypatch.delenv(name)


def project(
    folder: Path, table: pa.Table, *, task: str = "classification", extra: str = ""
) -> Settings:
    """A driftloop.yaml over `table` (written as the source), loaded the way the CLI loads it."""
    pq.write_table(table, folder / "train.parquet")
    target = synthetic.TARGETS[task]
    text = (
        f"home: {folder / 'home'}\n"
        f"dataset:\n  name: churn\n  source: train.parquet\n  target: {target}\n"
        f"  task: {task}\n  id: customer_id\n  timestamp: event_time\n{extra}"
    )
    (folder / "driftloop.yaml").write_text(text)
    return load_settings(folder / "driftloop.yaml")


@pytest.fixture(scope="module")
def reference() -> pa.Table:
    return synthetic.generate(rows=ROWS, seed=0)


@pytest.fixture(scope="module")
def settings(reference: pa.Table, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    with pytest.MonkeyPatch.context() as env:
        for name in [n for n in os.environ if n.startswith("DRIFTLOOP_")]:
            env.delenv(name)
        return project(tmp_path_factory.mktemp("project"), reference)


@pytest.fixture(scope="module")
def suite(reference: pa.Table, settings: Settings) -> Any:
    return validation.build_suite(reference, settings=settings)


def batch(scenario: str = "clean", **kwargs: Any) -> pa.Table:
    return synthetic.generate(rows=ROWS, seed=1, scenario=scenario, **kwargs)


def failed(report: validation.ValidationReport) -> set[tuple[str, str | None]]:
    return {(r.expectation, r.column) for r in report.failures}


def with_column(table: pa.Table, name: str, values: Any) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, pa.array(values))
    return table.append_column(name, pa.array(values))


# The suite --------------------------------------------------------------------------------------


def test_the_suite_covers_types_nulls_ranges_domains_target_ids_row_count_and_leakage(
    suite: Any, settings: Settings
) -> None:
    configs = {(c["type"], c["kwargs"].get("column")): c for c in validation.suite_configs(suite)}
    for column in ["customer_id", "event_time", *settings.features.all, TARGET]:
        assert ("expect_column_to_exist", column) in configs
        assert ("expect_column_values_to_be_in_type_list", column) in configs
    age = configs[("expect_column_values_to_be_between", "age")]["kwargs"]
    assert age["min_value"] < 18 < 90 < age["max_value"]  # the reference's 18..90, widened
    contract = configs[("expect_column_values_to_be_in_set", "contract")]["kwargs"]
    assert contract["value_set"] == ["month-to-month", "one-year", "two-year"]
    assert contract["mostly"] == pytest.approx(0.99)
    assert configs[("expect_column_values_to_be_in_set", TARGET)]["kwargs"]["value_set"] == [0, 1]
    assert ("expect_column_values_to_be_unique", "customer_id") in configs
    assert ("expect_table_row_count_to_be_between", None) in configs
    leakage = configs[(validation.LEAKAGE, None)]["kwargs"]
    assert leakage["features"] == settings.features.all
    assert leakage["threshold"] == 0.98
    nulls = configs[("expect_column_proportion_of_non_null_values_to_be_between", "data_usage_gb")]
    assert nulls["kwargs"]["min_value"] == pytest.approx(1 - 0.03 - 0.05, abs=0.01)


def test_a_saved_suite_loads_back_and_replays_identically(
    suite: Any, settings: Settings, tmp_path: Path
) -> None:
    path = validation.save_suite(suite, tmp_path / "suite.json")
    loaded = validation.load_suite(path)
    assert validation.suite_configs(loaded) == validation.suite_configs(suite)
    bad = batch("missing_spike")
    first = validation.validate(bad, suite=suite, settings=settings)
    again = validation.validate(bad, suite=loaded, settings=settings)
    strip = ("checked_at",)
    assert first.model_dump(exclude=set(strip)) == again.model_dump(exclude=set(strip))
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file


# Clean and bad batches --------------------------------------------------------------------------


def test_clean_data_passes_every_expectation(suite: Any, settings: Settings) -> None:
    report = validation.validate(batch(), suite=suite, settings=settings)
    assert report.success, report.summary()
    assert report.failures == []
    assert all(r.success for r in report.results)
    assert report.rows == ROWS
    assert report.fingerprint == data.fingerprint(batch())


@pytest.mark.parametrize(
    ("kind", "expectation"),
    [
        ("drop", "expect_column_to_exist"),
        ("rename", "expect_column_to_exist"),
        ("retype", "expect_column_values_to_be_in_type_list"),
    ],
)
def test_a_schema_break_fails_on_the_broken_column(
    kind: str, expectation: str, suite: Any, settings: Settings
) -> None:
    broken = batch("schema_break", kind=kind, features=["monthly_charges"])
    report = validation.validate(broken, suite=suite, settings=settings)
    assert failed(report) == {(expectation, "monthly_charges")}
    assert report.problems == ["schema_break"]
    skipped = [r for r in report.results if r.success is None]
    assert skipped
    assert all(r.column == "monthly_charges" for r in skipped)


def test_a_missing_value_spike_fails_the_non_null_share_of_each_spiked_column(
    suite: Any, settings: Settings
) -> None:
    spiked = batch("missing_spike", features=["age", "payment_method"])
    report = validation.validate(spiked, suite=suite, settings=settings)
    expectation = "expect_column_proportion_of_non_null_values_to_be_between"
    assert failed(report) == {(expectation, "age"), (expectation, "payment_method")}
    assert "nulls (allowed" in report.failures[0].observed


def test_out_of_range_values_fail_the_range_of_that_column(suite: Any, settings: Settings) -> None:
    ages = batch()["age"].to_numpy().copy()
    ages[: ROWS // 20] = 250  # 5% of the rows, far past the reference's 90
    report = validation.validate(with_column(batch(), "age", ages), suite=suite, settings=settings)
    assert failed(report) == {("expect_column_values_to_be_between", "age")}
    assert "250" in report.failures[0].observed


def test_unseen_categories_beyond_the_tolerance_fail_the_domain_of_that_column(
    suite: Any, settings: Settings
) -> None:
    report = validation.validate(
        batch("unseen_categories", features=["region"]), suite=suite, settings=settings
    )
    assert failed(report) == {("expect_column_values_to_be_in_set", "region")}
    assert "'offshore'" in report.failures[0].observed


def test_a_few_unseen_categories_within_the_tolerance_pass(suite: Any, settings: Settings) -> None:
    few = batch("unseen_categories", features=["region"], severity=0.05)  # 0.5% < 1% allowed
    assert pc.sum(pc.equal(few["region"], "offshore")).as_py() > 0
    assert validation.validate(few, suite=suite, settings=settings).success


def test_duplicate_ids_fail_uniqueness_of_the_id(suite: Any, settings: Settings) -> None:
    ids = batch()["customer_id"].to_pylist()
    ids[1] = ids[0]
    report = validation.validate(
        with_column(batch(), "customer_id", ids), suite=suite, settings=settings
    )
    assert failed(report) == {("expect_column_values_to_be_unique", "customer_id")}


def test_too_few_rows_fail_the_row_count(suite: Any, settings: Settings) -> None:
    report = validation.validate(batch().drop_null().slice(0, 40), suite=suite, settings=settings)
    assert failed(report) == {("expect_table_row_count_to_be_between", None)}
    assert report.failures[0].observed == "40 rows (expected at least 100)"


def test_nulls_or_unknown_classes_in_the_target_fail_the_target_checks(
    suite: Any, settings: Settings
) -> None:
    labels = batch()[TARGET].to_pylist()
    labels[0], labels[1] = None, 7
    report = validation.validate(
        with_column(batch(), TARGET, labels), suite=suite, settings=settings
    )
    assert failed(report) == {
        ("expect_column_proportion_of_non_null_values_to_be_between", TARGET),
        ("expect_column_values_to_be_in_set", TARGET),
    }
    assert report.problems == ["invalid_target"]


def test_a_regression_suite_bounds_the_target_and_passes_clean_data(tmp_path: Path) -> None:
    reference = synthetic.generate(rows=ROWS, seed=0, task="regression")
    settings = project(tmp_path, reference, task="regression")
    suite = validation.build_suite(reference, settings=settings)
    target = synthetic.TARGETS["regression"]
    kinds = {
        c["type"] for c in validation.suite_configs(suite) if c["kwargs"].get("column") == target
    }
    assert "expect_column_values_to_be_between" in kinds
    fresh = synthetic.generate(rows=ROWS, seed=1, task="regression")
    assert validation.validate(fresh, suite=suite, settings=settings).success


# Target leakage ---------------------------------------------------------------------------------


def leaky(column: str, values: Any) -> pa.Table:
    return with_column(synthetic.generate(rows=ROWS, seed=0), column, values)


@pytest.mark.parametrize(
    ("column", "make"),
    [
        ("churned_copy", lambda y: y),  # the target under another name
        ("status", lambda y: np.where(y == 1, "left", "active")),  # a categorical that encodes it
        ("churn_score", lambda y: 3.0 * y + np.random.default_rng(0).normal(0, 0.05, len(y))),
    ],
)
def test_a_feature_that_reproduces_the_target_fails_the_leakage_check(
    column: str, make: Any, tmp_path: Path
) -> None:
    y = synthetic.generate(rows=ROWS, seed=0)[TARGET].to_numpy()
    settings = project(tmp_path, leaky(column, make(y)))  # features inferred: the leak is one
    report = validation.validate_path(settings.dataset.source, settings=settings)
    assert failed(report) == {(validation.LEAKAGE, column)}
    assert report.problems == ["target_leakage"]
    assert f"{column}: " in report.failures[0].observed


def test_a_feature_that_merely_predicts_the_target_does_not_count_as_leakage(
    tmp_path: Path,
) -> None:
    y = synthetic.generate(rows=ROWS, seed=0)[TARGET].to_numpy()
    noisy = y + np.random.default_rng(1).normal(0, 1.0, len(y))  # informative, not a copy
    settings = project(tmp_path, leaky("signal", noisy))
    assert validation.validate_path(settings.dataset.source, settings=settings).success


# Unreadable files -------------------------------------------------------------------------------


def _truncated(path: Path, good: bytes) -> None:
    path.write_bytes(good[: len(good) // 2])


@pytest.mark.parametrize(
    ("name", "write", "says"),
    [
        ("empty.parquet", lambda p, g: p.write_bytes(b""), "empty"),
        ("truncated.parquet", _truncated, "not a readable Parquet file"),
        ("table.parquet", lambda p, g: p.write_text("a,b\n1,2\n"), "no Parquet magic bytes"),
        ("garbage.parquet", lambda p, g: p.write_bytes(b"PAR1" + b"\x07" * 500), "Parquet"),
    ],
)
def test_an_unreadable_file_fails_with_one_line_naming_it(
    name: str, write: Any, says: str, settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / name
    write(path, Path(settings.dataset.source).read_bytes())
    with pytest.raises(data.DataError) as caught:
        validation.validate_path(path, settings=settings, reports_dir=tmp_path / "reports")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    assert says in message


# User expectations ------------------------------------------------------------------------------


def test_user_expectations_join_the_suite_and_are_applied(
    reference: pa.Table, settings: Settings
) -> None:
    rule = {
        "type": "expect_column_values_to_be_between",
        "kwargs": {"column": "age", "min_value": 30},
    }
    strict = settings.model_copy(update={"validation": ValidationConfig(expectations=[rule])})
    validation.check_user_expectations(strict.validation)
    suite = validation.build_suite(reference, settings=strict)
    report = validation.validate(batch(), suite=suite, settings=strict)
    assert failed(report) == {("expect_column_values_to_be_between", "age")}
    assert report.problems == ["user_expectation"]


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        (
            {"type": "expect_column_values_to_be_betwen", "kwargs": {"column": "age"}},
            "unknown expectation 'expect_column_values_to_be_betwen' "
            "(did you mean 'expect_column_values_to_be_between'?)",
        ),
        (
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "age", "minimum": 1},
            },
            "kwargs.minimum: unknown argument (did you mean 'min_value'?)",
        ),
        (
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "age", "min_value": "x"},
            },
            "kwargs.min_value: value is not a valid float",
        ),
        ({"kind": "expect_column_to_exist"}, "unknown key 'kind'"),
    ],
)
def test_a_bad_user_expectation_is_rejected_at_load_time_naming_it(
    entry: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        validation.check_user_expectations(ValidationConfig(expectations=[entry]))
    assert "validation.expectations[0]" in str(caught.value)
    assert says in str(caught.value)


def test_a_user_expectation_on_an_unknown_column_is_rejected_when_the_suite_is_built(
    reference: pa.Table, settings: Settings
) -> None:
    rule = {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "agee"}}
    wrong = settings.model_copy(update={"validation": ValidationConfig(expectations=[rule])})
    with pytest.raises(ConfigError, match=r"column 'agee' is not in the data .did you mean 'age'"):
        validation.build_suite(reference, settings=wrong)


# Production batches -----------------------------------------------------------------------------


def test_a_production_batch_without_labels_skips_the_target_checks_and_passes(
    suite: Any, settings: Settings
) -> None:
    unlabelled = batch().drop_columns([TARGET]).slice(0, 50)  # few rows: no row-count check
    report = validation.check_batch(unlabelled, suite=suite, settings=settings)
    assert report.success
    assert report.mode == "batch"
    skipped = {r.column for r in report.results if r.success is None}
    assert skipped == {TARGET}
    assert all(r.check not in ("target_leakage", "too_few_rows") for r in report.results)


@pytest.mark.parametrize(
    ("scenario", "kwargs", "problem"),
    [
        ("missing_spike", {}, "missing_values"),
        ("unseen_categories", {}, "unseen_categories"),
        ("schema_break", {"kind": "retype"}, "schema_break"),
    ],
)
def test_a_production_batch_names_its_data_quality_problem(
    scenario: str, kwargs: dict[str, Any], problem: str, suite: Any, settings: Settings
) -> None:
    bad = batch(scenario, **kwargs).drop_columns([TARGET])
    report = validation.check_batch(bad, suite=suite, settings=settings)
    assert not report.success
    assert report.problems == [problem]


# Reports ----------------------------------------------------------------------------------------


def test_validate_path_writes_the_suite_the_reports_and_the_dataset_card(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "batch.parquet"
    pq.write_table(batch("missing_spike", features=["age"]), path)
    report = validation.validate_path(path, settings=settings, reports_dir=tmp_path / "reports")
    reference_fp = data.fingerprint(data.read_table(settings.dataset.source))
    assert (tmp_path / "reports" / reference_fp / validation.SUITE_FILE).is_file()
    folder = tmp_path / "reports" / report.fingerprint
    saved = validation.ValidationReport.model_validate_json(
        (folder / "validation.json").read_text()
    )
    assert saved == report
    assert not saved.success
    page = (folder / "validation.html").read_text()
    assert '<tr class="failed"><td>failed</td>' in page
    assert "age" in page
    card = (folder / "dataset_card.md").read_text()
    assert report.fingerprint in card
    assert "## Class balance" in card
    assert "| `age` |" in card
    assert not list(folder.glob(".*.tmp"))


def test_validation_failed_lists_each_failed_expectation_on_its_own_line(
    suite: Any, settings: Settings
) -> None:
    report = validation.validate(
        batch("missing_spike", features=["age", "region"]), suite=suite, settings=settings
    )
    lines = str(validation.ValidationFailed(report)).splitlines()
    assert lines[0] == report.summary()
    assert sorted(lines[1:]) == sorted(
        f"  expect_column_proportion_of_non_null_values_to_be_between on {c}: "
        + next(r.observed for r in report.failures if r.column == c)
        for c in ("age", "region")
    )


# Prefect: artifacts and the validation.failed event on a real (temporary) server ---------------


def run_in_flow(table: pa.Table, *, suite: Any, settings: Settings, directory: Path) -> Any:
    from prefect import flow

    @flow(name="validation-under-test")
    def check() -> validation.ValidationReport:
        return validation.validate_task(table, suite=suite, settings=settings, directory=directory)

    return check()


@pytest.mark.integration
def test_the_task_publishes_the_report_and_card_as_artifacts_when_data_passes(
    prefect_server: None, suite: Any, settings: Settings, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    report = run_in_flow(batch(), suite=suite, settings=settings, directory=tmp_path)
    assert report.success
    assert {p.name for p in tmp_path.iterdir()} == {
        "suite.json",
        "validation.json",
        "validation.html",
        "dataset_card.md",
    }
    with get_client(sync_client=True) as client:
        keys = ArtifactFilterKey(any_=["validation-churn", "dataset-card-churn"])
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=keys))
    assert {a.key: a.type for a in found} == {
        "validation-churn": "table",
        "dataset-card-churn": "markdown",
    }


@pytest.mark.integration
def test_failing_data_fails_the_flow_run_and_its_event_reaches_the_server(
    prefect_server: None, suite: Any, settings: Settings, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    with pytest.raises(validation.ValidationFailed, match="on region: "):
        run_in_flow(
            batch("unseen_categories", features=["region"]),
            suite=suite,
            settings=settings,
            directory=tmp_path,
        )
    wanted = EventFilter(event=EventNameFilter(name=[events.VALIDATION_FAILED]))
    with get_client(sync_client=True) as client:
        for _ in range(60):  # events are persisted asynchronously: poll for up to 30 s
            page = client.read_events(filter=wanted, limit=50)
            if page.events:
                break
            time.sleep(0.5)
    assert len(page.events) == 1
    event = page.events[0]
    assert event.resource.id == "driftloop.model.churn"
    assert event.payload["problems"] == ["unseen_categories"]
    assert [(f["expectation"], f["column"]) for f in event.payload["failed"]] == [
        ("expect_column_values_to_be_in_set", "region")
    ]
    assert json.loads((tmp_path / "validation.json").read_text())["success"] is False
