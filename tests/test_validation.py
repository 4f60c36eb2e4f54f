"""The validation gate: the suite, bad data caught on the right column, reports, Prefect wiring."""

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tasks import data, events, files, leakage, registry, synthetic, validation
from tasks.settings import ConfigError, Settings, ValidationConfig, load_settings
from tasks.validation import COLUMNS, DOMAINS, KINDS, LEAKAGE, NULLS, RANGES, UNIQUE

ROWS = 3000
TARGET = "churned"


@pytest.fixture(autouse=True)
def _no_driftloop_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("DRIFTLOOP_")]:
        monkeypatch.delenv(name)


def project(
    folder: Path,
    table: pa.Table,
    *,
    task: str = "classification",
    extra: str = "",
    home: str | None = None,
    reference: pa.Table | None = None,
) -> Settings:
    """A driftloop.yaml over `table` (written as the source), loaded the way the CLI loads it;
    with `reference`, that table is written too and named as `validation.reference`."""
    pq.write_table(table, folder / "train.parquet")
    target = synthetic.TARGETS[task]
    text = (
        f"home: {home or folder / 'home'}\n"
        f"dataset:\n  name: churn\n  source: train.parquet\n  target: {target}\n"
        f"  task: {task}\n  id: customer_id\n  timestamp: event_time\n{extra}"
    )
    if reference is not None:
        pq.write_table(reference, folder / "reference.parquet")
        text += "validation:\n  reference: reference.parquet\n"
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


def configs_of(suite: Any) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in validation.suite_configs(suite)}


# The suite --------------------------------------------------------------------------------------


def test_the_suite_covers_types_nulls_ranges_domains_target_ids_row_count_and_leakage(
    suite: Any, settings: Settings
) -> None:
    configs = configs_of(suite)
    contract = ["customer_id", "event_time", *settings.features.all, TARGET]
    assert configs[COLUMNS]["kwargs"]["column_set"] == contract
    kinds = configs[KINDS]["kwargs"]["kinds"]
    assert set(kinds) == set(contract)
    assert kinds["age"] == ["integer"]
    assert kinds["contract"] == ["string"]
    ranges = configs[RANGES]["kwargs"]["ranges"]
    assert ranges["age"]["min_value"] < 18 < 90 < ranges["age"]["max_value"]  # 18..90, widened
    assert ranges["age"]["mostly"] == pytest.approx(0.99)
    sets = configs[DOMAINS]["kwargs"]["value_sets"]
    assert sets["contract"]["value_set"] == ["month-to-month", "one-year", "two-year"]
    assert sets["contract"]["mostly"] == pytest.approx(0.99)
    assert sets[TARGET] == {"value_set": [0, 1], "mostly": 1.0}
    shares = configs[NULLS]["kwargs"]["max_shares"]
    assert shares["data_usage_gb"] == pytest.approx(0.03 + 0.05, abs=0.01)
    assert shares[TARGET] == shares["customer_id"] == 0.0
    assert configs[UNIQUE]["kwargs"] == {"column": "customer_id", "min_value": 1.0}
    assert configs["expect_table_row_count_to_be_between"]["kwargs"]["min_value"] == 100
    leakage = configs[LEAKAGE]["kwargs"]
    assert leakage["features"] == settings.features.all
    assert leakage["threshold"] == settings.validation.leakage_threshold == 0.99
    assert len(suite.expectations) <= 10  # each GX expectation costs ~5 ms: one per concern


def test_the_range_and_category_tolerances_are_set_apart(
    reference: pa.Table, settings: Settings
) -> None:
    def tolerances(**validation_config: float) -> tuple[float, float]:
        tuned = settings.model_copy(
            update={"validation": settings.validation.model_copy(update=validation_config)}
        )
        configs = configs_of(validation.build_suite(reference, settings=tuned))
        return (
            configs[RANGES]["kwargs"]["ranges"]["age"]["mostly"],
            configs[DOMAINS]["kwargs"]["value_sets"]["contract"]["mostly"],
        )

    assert tolerances(unseen_category_share=0.2) == pytest.approx((0.99, 0.8))
    assert tolerances(range_share=0.1) == pytest.approx((0.9, 0.99))


def test_a_saved_suite_loads_back_and_replays_identically(
    suite: Any, settings: Settings, tmp_path: Path
) -> None:
    path = validation.save_suite(suite, tmp_path / "suite.json")
    loaded = validation.load_suite(path)
    assert validation.suite_configs(loaded) == validation.suite_configs(suite)
    bad = batch("missing_spike")
    first = validation.validate(bad, suite=suite, settings=settings)
    again = validation.validate(bad, suite=loaded, settings=settings)
    assert first.model_dump(exclude={"checked_at"}) == again.model_dump(exclude={"checked_at"})
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
    ("kind", "expectation"), [("drop", COLUMNS), ("rename", COLUMNS), ("retype", KINDS)]
)
def test_a_schema_break_fails_on_the_broken_column(
    kind: str, expectation: str, suite: Any, settings: Settings
) -> None:
    broken = batch("schema_break", kind=kind, features=["monthly_charges"])
    report = validation.validate(broken, suite=suite, settings=settings)
    assert failed(report) == {(expectation, "monthly_charges")}
    assert report.problems == ["schema_break"]
    skipped = [r for r in report.results if r.success is None]
    assert {r.expectation for r in skipped} >= {NULLS, RANGES}
    assert all(r.column == "monthly_charges" for r in skipped)


def test_a_missing_value_spike_fails_the_null_share_of_each_spiked_column(
    suite: Any, settings: Settings
) -> None:
    spiked = batch("missing_spike", features=["age", "payment_method"])
    report = validation.validate(spiked, suite=suite, settings=settings)
    assert failed(report) == {(NULLS, "age"), (NULLS, "payment_method")}
    age = next(r for r in report.failures if r.column == "age")
    assert age.observed.endswith("% nulls (allowed 5.00%)")
    assert age.arguments == {"max_shares": {"age": 0.05}}


def test_out_of_range_values_fail_the_range_of_that_column(suite: Any, settings: Settings) -> None:
    ages = batch()["age"].to_numpy().copy()
    ages[: ROWS // 20] = 250  # 5% of the rows, far past the reference's 90
    report = validation.validate(with_column(batch(), "age", ages), suite=suite, settings=settings)
    assert failed(report) == {(RANGES, "age")}
    assert report.failures[0].observed.startswith("5.00% of values outside [")
    assert "e.g. 250" in report.failures[0].observed


def test_unseen_categories_beyond_the_tolerance_fail_the_domain_of_that_column(
    suite: Any, settings: Settings
) -> None:
    report = validation.validate(
        batch("unseen_categories", features=["region"]), suite=suite, settings=settings
    )
    assert failed(report) == {(DOMAINS, "region")}
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
    assert failed(report) == {(UNIQUE, "customer_id")}
    assert report.problems == ["duplicate_ids"]


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
    assert failed(report) == {(NULLS, TARGET), (DOMAINS, TARGET)}
    assert report.problems == ["invalid_target"]
    assert "e.g. 7" in next(r.observed for r in report.failures if r.expectation == DOMAINS)


def test_training_data_without_its_target_or_with_a_retyped_one_fails_on_the_target(
    suite: Any, settings: Settings
) -> None:
    gone = validation.validate(batch().drop_columns([TARGET]), suite=suite, settings=settings)
    assert failed(gone) == {(COLUMNS, TARGET)}  # once, on its column; its checks are skipped
    assert gone.problems == ["invalid_target"]  # a missing target is a target problem
    labels = [str(v) for v in batch()[TARGET].to_pylist()]  # "0" / "1": strings now
    retyped = validation.validate(
        with_column(batch(), TARGET, labels), suite=suite, settings=settings
    )
    assert (KINDS, TARGET) in failed(retyped)
    assert retyped.problems == ["invalid_target"]


def test_a_regression_suite_bounds_the_target_and_passes_clean_data(tmp_path: Path) -> None:
    reference = synthetic.generate(rows=ROWS, seed=0, task="regression")
    settings = project(tmp_path, reference, task="regression")
    suite = validation.build_suite(reference, settings=settings)
    target = synthetic.TARGETS["regression"]
    assert target in configs_of(suite)[RANGES]["kwargs"]["ranges"]
    fresh = synthetic.generate(rows=ROWS, seed=1, task="regression")
    assert validation.validate(fresh, suite=suite, settings=settings).success


# Where the profile comes from ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "kwargs", "expectation", "column"),
    [
        ("missing_spike", {"features": ["age"]}, NULLS, "age"),
        ("unseen_categories", {"features": ["region"]}, DOMAINS, "region"),
        (
            "covariate_shift",
            {"features": ["monthly_charges"], "severity": 2.0},
            RANGES,
            "monthly_charges",
        ),
    ],
)
def test_bad_data_fails_validate_path_against_the_configured_reference(
    scenario: str,
    kwargs: dict[str, Any],
    expectation: str,
    column: str,
    reference: pa.Table,
    tmp_path: Path,
) -> None:
    bad = batch(scenario, **kwargs)
    alone = project(tmp_path, bad)  # a first run: the profile is this data itself
    first = validation.validate_path(alone.dataset.source, settings=alone)
    assert first.success
    assert str(first.profile).startswith("the data itself")

    settings = project(tmp_path, bad, reference=reference)
    report = validation.validate_path(settings.dataset.source, settings=settings)
    assert {e for e, _ in failed(report)} == {expectation}
    assert (expectation, column) in failed(report)  # and what derives from it, if anything
    assert report.profile == f"validation.reference: {tmp_path / 'reference.parquet'}"


def test_the_champions_training_sample_is_the_profile_when_no_reference_is_configured(
    reference: pa.Table, tmp_path: Path
) -> None:
    settings = project(tmp_path, batch("missing_spike", features=["age"]))
    assert validation.reference_profile(settings).table is None
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in registry.MODEL_FILES:
        (model_dir / name).write_bytes(b"{}")
    sample = synthetic.write_parquet(reference, tmp_path / "sample.parquet")
    version = registry.register(
        root=settings.home,
        model="churn",
        model_dir=model_dir,
        metadata={},
        extra_files={files.REFERENCE: str(sample)},
    )
    registry.set_alias(
        root=settings.home, model="churn", alias="champion", version=version, reason="test"
    )

    found = validation.reference_profile(settings)
    assert found.table is not None
    assert found.table.equals(reference)
    assert found.source.startswith(f"champion churn v{version}: ")
    report = validation.validate_path(settings.dataset.source, settings=settings)
    assert failed(report) == {(NULLS, "age")}
    assert report.profile == found.source

    configured = settings.model_copy(
        update={"validation": settings.validation.model_copy(update={"reference": str(sample)})}
    )
    first = validation.reference_profile(configured)  # the configured reference comes first
    assert first.source == f"validation.reference: {sample}"


def test_an_unreadable_configured_reference_fails_with_one_line_naming_it(
    settings: Settings, tmp_path: Path
) -> None:
    missing = str(tmp_path / "nowhere.parquet")
    wrong = settings.model_copy(
        update={"validation": settings.validation.model_copy(update={"reference": missing})}
    )
    with pytest.raises(data.DataError, match=f"^validation.reference: {missing}: no such file"):
        validation.reference_profile(wrong)


def test_an_unreadable_champion_sample_fails_with_one_line_naming_the_champion(
    tmp_path: Path,
) -> None:
    settings = project(tmp_path, batch())
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in registry.MODEL_FILES:
        (model_dir / name).write_bytes(b"{}")
    version = registry.register(
        root=settings.home, model="churn", model_dir=model_dir, metadata={},
        extra_files={files.REFERENCE: b"PAR1 not a parquet file"},
    )  # fmt: skip
    registry.set_alias(
        root=settings.home, model="churn", alias="champion", version=version, reason="test"
    )
    with pytest.raises(data.DataError) as refused:
        validation.reference_profile(settings)
    message = str(refused.value)
    assert message.startswith(f"the champion's (churn v{version}) sample: ")
    assert files.REFERENCE in message
    assert "\n" not in message


def test_a_leaked_target_is_caught_when_the_reference_predates_that_column(
    reference: pa.Table, tmp_path: Path
) -> None:
    new = batch()
    leaky = new.append_column("churn_flag", new[TARGET])  # new data, the target smuggled in
    settings = project(tmp_path, leaky, reference=reference)  # the reference has no churn_flag
    assert "churn_flag" in settings.features.all
    report = validation.validate_path(settings.dataset.source, settings=settings)
    assert failed(report) == {(LEAKAGE, "churn_flag")}
    kinds = configs_of(validation.suite_for(leaky, settings=settings))[KINDS]["kwargs"]["kinds"]
    # the contract's check: a numeric feature (settings.ROLE_KINDS, sorted)
    assert kinds["churn_flag"] == ["boolean", "float", "integer"]


def test_a_contract_column_the_reference_lacks_gets_only_the_contracts_checks(
    reference: pa.Table, settings: Settings
) -> None:
    old = reference.drop_columns(["age", "region"])
    suite = validation.build_suite(old, settings=settings, profile_source="an old sample")
    configs = configs_of(suite)
    assert "age" in configs[COLUMNS]["kwargs"]["column_set"]
    assert configs[KINDS]["kwargs"]["kinds"]["region"] == ["boolean", "integer", "string"]
    assert "age" not in configs[RANGES]["kwargs"]["ranges"]
    assert "region" not in configs[DOMAINS]["kwargs"]["value_sets"]
    assert "age" not in configs[NULLS]["kwargs"]["max_shares"]
    assert configs[LEAKAGE]["kwargs"]["features"] == settings.features.all
    assert suite.meta["profile"] == "an old sample"
    report = validation.validate(batch(), suite=suite, settings=settings)
    assert report.success
    assert report.profile == "an old sample"


# Target leakage ---------------------------------------------------------------------------------


def leaky(column: str, values: Any, *, task: synthetic.Task = "classification") -> pa.Table:
    return with_column(synthetic.generate(rows=ROWS, seed=0, task=task), column, values)


def noise(scale: float) -> np.ndarray:
    return np.random.default_rng(0).normal(0, scale, ROWS)


@pytest.mark.parametrize(
    ("column", "make", "task"),
    [
        ("churned_copy", lambda y: y, "classification"),  # the target under another name
        ("status", lambda y: np.where(y == 1, "left", "active"), "classification"),
        ("churn_score", lambda y: 3.0 * y + noise(0.05), "classification"),
        ("churn_noisy", lambda y: y + noise(0.1), "classification"),  # |r| ~0.97, one threshold
        ("spend_exp", lambda y: np.exp(y / y.std()), "regression"),
        ("spend_cube", lambda y: y**3, "regression"),
        ("spend_log", lambda y: np.log(y - y.min() + 1), "regression"),
    ],
)
def test_a_feature_that_reproduces_the_target_fails_the_leakage_check(
    column: str, make: Any, task: synthetic.Task, tmp_path: Path
) -> None:
    y = synthetic.generate(rows=ROWS, seed=0, task=task)[synthetic.TARGETS[task]].to_numpy()
    settings = project(tmp_path, leaky(column, make(y), task=task), task=task)  # features inferred
    report = validation.validate_path(settings.dataset.source, settings=settings)
    assert failed(report) == {(LEAKAGE, column)}
    assert report.problems == ["target_leakage"]
    assert f"{column}: " in report.failures[0].observed


def test_a_feature_that_merely_predicts_the_target_does_not_count_as_leakage(
    tmp_path: Path,
) -> None:
    y = synthetic.generate(rows=ROWS, seed=0)[TARGET].to_numpy()
    settings = project(tmp_path, leaky("signal", y + noise(1.0)))  # informative, not a copy
    assert validation.validate_path(settings.dataset.source, settings=settings).success


@pytest.mark.parametrize("name", ["load_iris", "load_wine", "load_breast_cancer"])
def test_well_known_data_sets_with_strong_honest_features_are_not_flagged_as_leaking(
    name: str,
) -> None:
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, name)(as_frame=True)
    frame, threshold = bunch.frame, ValidationConfig().leakage_threshold
    target = leakage.Target(frame["target"], task="classification")
    scores = {str(f): target.score(frame[f])[0] for f in bunch.feature_names}
    assert max(scores.values()) < threshold, scores
    # and each data set's target, copied or coded as a number with noise, is caught
    coded = frame["target"] * 3.0 + np.random.default_rng(0).normal(0, 0.1, len(frame))
    assert target.score(frame["target"].astype(float))[0] >= threshold
    assert target.score(coded)[0] >= threshold


@pytest.mark.parametrize(
    ("task", "strongest"), [("classification", "tenure_months"), ("regression", "monthly_charges")]
)
def test_the_strongest_honest_feature_of_the_synthetic_data_scores_below_the_threshold(
    task: synthetic.Task, strongest: str
) -> None:
    frame = validation.to_frame(synthetic.generate(rows=ROWS, seed=0, task=task))
    target = frame[synthetic.TARGETS[task]]
    scores = {f: leakage.leakage_score(frame[f], target, task=task)[0] for f in synthetic.FEATURES}
    assert max(scores, key=lambda f: scores[f]) == strongest
    assert 0.7 < scores[strongest] < 0.98  # a real signal, far enough from a copy


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


def test_a_parquet_file_with_no_rows_fails_the_row_count_alone(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "no_rows.parquet"
    pq.write_table(batch().slice(0, 0), path)  # a valid file, the contract's schema, no rows
    report = validation.validate_path(path, settings=settings, reports_dir=tmp_path / "reports")
    assert failed(report) == {("expect_table_row_count_to_be_between", None)}
    assert report.problems == ["too_few_rows"]
    assert report.failures[0].observed == "0 rows (expected at least 100)"


# User expectations ------------------------------------------------------------------------------


def test_user_expectations_join_the_suite_and_are_applied(
    reference: pa.Table, settings: Settings
) -> None:
    older = {
        "type": "expect_column_values_to_be_between",
        "kwargs": {"column": "age", "min_value": 30},
    }
    regions = "^(?:north|south|east|west|central)$"
    named = {
        "type": "expect_column_values_to_match_regex",
        "kwargs": {"column": "region", "regex": regions},
    }
    present = {"type": "expect_column_to_exist", "kwargs": {"column": "region"}}
    rules = [older, named, present]
    strict = settings.model_copy(update={"validation": ValidationConfig(expectations=rules)})
    validation.check_user_expectations(strict.validation)
    suite = validation.build_suite(reference, settings=strict)
    report = validation.validate(batch(), suite=suite, settings=strict)
    assert failed(report) == {("expect_column_values_to_be_between", "age")}
    assert report.problems == ["user_expectation"]
    regex = next(r for r in report.results if r.expectation.endswith("match_regex"))
    assert regex.success  # GX's string checks run on the pyarrow-backed string columns
    without = validation.validate(batch().drop_columns(["region"]), suite=suite, settings=strict)
    assert ("expect_column_to_exist", "region") in failed(without)  # fails, is not skipped


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
        ({"kwargs": {"column": "age"}}, ".type: required: the name of a GX expectation"),
        (
            {"type": "expect_column_to_exist", "kwargs": ["age"]},
            "(expect_column_to_exist): kwargs and meta must be mappings",
        ),
        (
            {
                "type": "expect_column_values_to_match_regex",
                "kwargs": {"column": "region", "regex": "^(north|south"},
            },
            "kwargs.regex: '^(north|south' is not a valid regular expression",
        ),
        (
            {
                "type": "expect_column_values_to_match_regex_list",
                "kwargs": {"column": "region", "regex_list": ["^n", "[a-"]},
            },
            "kwargs.regex_list[1]: '[a-' is not a valid regular expression",
        ),
        (
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "age", "min_value": 90, "max_value": 18},
            },
            "kwargs.min_value (90) is above kwargs.max_value (18)",
        ),
    ],
)
def test_a_bad_user_expectation_is_rejected_at_load_time_naming_it(
    entry: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        validation.check_user_expectations(ValidationConfig(expectations=[entry]))
    assert "validation.expectations[0]" in str(caught.value)
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)


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


def test_a_customer_scored_twice_in_a_production_batch_is_no_data_problem(
    suite: Any, settings: Settings
) -> None:
    ids = batch()["customer_id"].to_pylist()
    ids[1] = ids[0]  # the same customer, scored again
    again = with_column(batch(), "customer_id", ids)
    report = validation.check_batch(again, suite=suite, settings=settings)
    assert report.success
    assert all(r.check != "duplicate_ids" for r in report.results)
    assert failed(validation.validate(again, suite=suite, settings=settings)) == {
        (UNIQUE, "customer_id")
    }  # in training data, a repeated id still fails


def half_labelled(table: pa.Table) -> pa.Table:
    """Feedback not in yet: every other label is still missing."""
    labels = table[TARGET].to_pylist()
    return with_column(table, TARGET, [v if i % 2 else None for i, v in enumerate(labels)])


@pytest.mark.parametrize("scenario", ["covariate_shift", "prior_shift", "concept_drift"])
@pytest.mark.parametrize("labels", ["all", "half", "none"])
def test_drift_in_a_production_batch_is_not_a_data_quality_failure(
    scenario: str, labels: str, suite: Any, settings: Settings
) -> None:
    drifted = batch(scenario)
    drifted = {"all": drifted, "half": half_labelled(drifted)}.get(labels) or drifted.drop_columns(
        [TARGET]
    )
    report = validation.check_batch(drifted, suite=suite, settings=settings)
    assert report.success, validation.summary(report)


def test_a_batch_range_allows_a_configurable_share_outside_it(
    suite: Any, settings: Settings
) -> None:
    shifted = batch("covariate_shift")  # ~4.5% of monthly_charges past the widened range
    assert validation.check_batch(shifted, suite=suite, settings=settings).success
    strict = validation.check_batch(shifted, suite=suite, settings=settings, range_share=0.01)
    assert failed(strict) == {(RANGES, "monthly_charges")}
    assert "(allowed 1.00%)" in strict.failures[0].observed
    configured = settings.model_copy(
        update={"validation": settings.validation.model_copy(update={"batch_range_share": 0.01})}
    )  # validation.batch_range_share in driftloop.yaml
    from_config = validation.check_batch(shifted, suite=suite, settings=configured)
    assert failed(from_config) == {(RANGES, "monthly_charges")}


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_a_batch_range_share_outside_zero_to_one_is_refused_in_one_line(
    share: float, suite: Any, settings: Settings
) -> None:
    with pytest.raises(ValueError, match=rf"^range_share must lie in \[0, 1\], got {share}$"):
        validation.check_batch(batch(), suite=suite, settings=settings, range_share=share)


@pytest.mark.parametrize(
    ("scenario", "kwargs", "problem", "expectation"),
    [
        ("missing_spike", {}, "missing_values", NULLS),
        ("unseen_categories", {}, "unseen_categories", DOMAINS),
        ("schema_break", {"kind": "retype"}, "schema_break", KINDS),
        ("schema_break", {"kind": "drop"}, "schema_break", COLUMNS),
    ],
)
@pytest.mark.parametrize("labelled", [True, False])
def test_a_production_batch_names_its_data_quality_problem(
    scenario: str,
    kwargs: dict[str, Any],
    problem: str,
    expectation: str,
    labelled: bool,
    suite: Any,
    settings: Settings,
) -> None:
    bad = batch(scenario, **kwargs)
    bad = half_labelled(bad) if labelled else bad.drop_columns([TARGET])
    report = validation.check_batch(bad, suite=suite, settings=settings)
    assert not report.success
    assert report.problems == [problem]
    assert {r.expectation for r in report.failures} == {expectation}


# Reports ----------------------------------------------------------------------------------------


def test_validate_path_writes_the_suite_the_reports_and_the_dataset_card(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "batch.parquet"
    pq.write_table(batch("missing_spike", features=["age"]), path)
    report = validation.validate_path(path, settings=settings, reports_dir=tmp_path / "reports")
    folder = tmp_path / "reports" / report.fingerprint
    assert (folder / files.SUITE).is_file()
    saved = validation.ValidationReport.model_validate_json(
        (folder / "validation.json").read_text()
    )
    assert saved.model_dump() == report.model_dump()
    assert not saved.success
    assert saved.profile == f"dataset.source: {settings.dataset.source}"
    page = (folder / "validation.html").read_text()  # GX's own validation page
    assert "Great Expectations" in page
    assert NULLS in page
    assert re.search(r"age: \d+\.\d+% nulls \(allowed 5\.00%\)", page)  # column, observed
    assert settings.dataset.source in page  # the profile's origin, in the info panel
    card = (folder / "dataset_card.md").read_text()
    assert report.fingerprint in card
    assert f"learned from): dataset.source: {settings.dataset.source}" in card
    assert "## Class balance" in card
    assert "| `age` |" in card
    assert not list(folder.glob(".*.tmp"))


def test_the_dataset_card_shows_every_class_of_a_many_class_target(
    reference: pa.Table, settings: Settings
) -> None:
    classes = np.arange(ROWS) % 8  # 8 classes, 375 rows each
    table = with_column(reference, TARGET, classes)
    report = validation.validate(table, suite=validation.suite_for(table, settings=settings),
                                 settings=settings)  # fmt: skip
    card = validation.dataset_card(table, dataset=settings.dataset, report=report)
    balance = card.split("## Class balance", 1)[1].split("##", 1)[0]
    assert [line.split("|")[1].strip() for line in balance.splitlines() if "375" in line] == [
        str(c) for c in range(8)
    ]


def test_reports_go_under_a_file_uri_home(reference: pa.Table, tmp_path: Path) -> None:
    settings = project(tmp_path, batch("missing_spike"), home=f"file://{tmp_path}/home")
    assert settings.home.startswith("file://")
    report = validation.validate_path(settings.dataset.source, settings=settings)
    assert report.directory == f"file://{tmp_path}/home/reports/churn/{report.fingerprint}"
    folder = tmp_path / "home" / "reports" / "churn" / report.fingerprint
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [
            files.SUITE,
            files.VALIDATION_JSON,
            files.VALIDATION_HTML,
            files.DATASET_CARD,
        ]
    )
    assert json.loads((folder / files.VALIDATION_JSON).read_text())["directory"] == (
        report.directory
    )
    assert validation.load_suite(f"{report.directory}/{files.SUITE}").expectations
    assert validation.report_root(settings) == tmp_path / "home" / "reports" / "churn"


def test_a_report_read_back_from_json_has_no_gx_page_to_render(
    suite: Any, settings: Settings, tmp_path: Path
) -> None:
    report = validation.validate(batch().slice(0, 200), suite=suite, settings=settings)
    saved = validation.ValidationReport.model_validate_json(report.model_dump_json())
    with pytest.raises(ValueError, match=r"^churn: no GX result to render \(a report read from"):
        validation.render_html(saved)
    written = validation.write_reports(saved, directory=tmp_path)
    assert [Path(w).name for w in written] == [files.VALIDATION_JSON]  # JSON only, no page


def test_report_root_refuses_an_object_store_home_naming_it(settings: Settings) -> None:
    bucket = settings.model_copy(update={"home": "s3://bucket/home?region=us-east-1"})
    with pytest.raises(data.DataError, match=r"^s3://bucket/home\?region=us-east-1: not a local"):
        validation.report_root(bucket)
    assert validation.report_location(bucket).startswith("s3://bucket/home/reports/churn?")


def test_validation_failed_lists_each_failed_check_on_its_own_line(
    suite: Any, settings: Settings
) -> None:
    report = validation.validate(
        batch("missing_spike", features=["age", "region"]), suite=suite, settings=settings
    )
    lines = str(validation.ValidationFailed(report)).splitlines()
    assert lines[0] == report.summary()
    assert sorted(lines[1:3]) == sorted(
        f"  {NULLS} on {c}: " + next(r.observed for r in report.failures if r.column == c)
        for c in ("age", "region")
    )
    assert lines[3] == "  profile: the reference table"


# Prefect: artifacts and the validation.failed event on a real (temporary) server ---------------


def run_in_flow(table: pa.Table, *, suite: Any, settings: Settings, directory: Path) -> Any:
    from prefect import flow

    @flow(name="validation-under-test")
    def check() -> validation.ValidationReport:
        return validation.validate_task(table, suite=suite, settings=settings, directory=directory)

    return check()


def read_artifacts(key: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    return list(found)


@pytest.mark.integration
def test_the_task_publishes_the_report_and_card_as_artifacts_when_data_passes(
    prefect_server: None, suite: Any, settings: Settings, tmp_path: Path
) -> None:
    report = run_in_flow(batch(), suite=suite, settings=settings, directory=tmp_path)
    assert report.success
    assert {p.name for p in tmp_path.iterdir()} == {
        "suite.json",
        "validation.json",
        "validation.html",
        "dataset_card.md",
    }
    assert [a.type for a in read_artifacts("validation-churn")] == ["table"]
    assert [a.type for a in read_artifacts("dataset-card-churn")] == ["markdown"]


@pytest.mark.integration
def test_failing_data_publishes_its_table_and_an_event_naming_the_column_and_what_was_seen(
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
    assert len({e.id for e in page.events}) == 1  # one event (delivery is at least once)
    event = page.events[0]
    assert event.resource.id == "driftloop.model.churn"
    assert event.payload["problems"] == ["unseen_categories"]
    assert event.payload["profile"] == "the reference table"
    [failure] = event.payload["failed"]
    assert (failure["expectation"], failure["column"]) == (DOMAINS, "region")
    assert re.match(r"(9|10)\.\d\d% of values outside the 5 known values", failure["observed"])
    assert "e.g. 'offshore'" in failure["observed"]

    tables = [a for a in read_artifacts("validation-churn") if "FAILED" in (a.description or "")]
    assert len(tables) == 1
    rows = tables[0].data if isinstance(tables[0].data, list) else json.loads(tables[0].data)
    [row] = [r for r in rows if r["result"] == "failed"]
    assert (row["expectation"], row["column"], row["observed"]) == (
        DOMAINS,
        "region",
        failure["observed"],
    )
    assert json.loads((tmp_path / "validation.json").read_text())["success"] is False
