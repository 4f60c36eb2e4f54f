"""The synthetic churn generator: its clean data, and that each drift scenario shifts what it names.

Shifts are measured, not assumed: PSI per column against a clean reference, a model fitted on the
reference scored on each batch, and per-class feature means.
"""

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from tasks.synthetic import (
    CATEGORICAL_FEATURES,
    CATEGORIES,
    FEATURES,
    NULL_SHARES,
    NUMERIC_FEATURES,
    SCENARIOS,
    SCHEMA_BREAKS,
    UNSEEN_VALUES,
    Task,
    example_dataset_config,
    generate,
    write_parquet,
)

ROWS = 30_000
# PSI below 0.02 is "no shift" at this sample size (sampling noise alone is about 0.001-0.003);
# above 0.2 is the usual "significant shift" line.
NO_SHIFT, SHIFT = 0.02, 0.2


def psi(reference: pd.Series, current: pd.Series) -> float:
    """Population stability index: decile bins of the reference (numeric) or categories + null."""
    if pd.api.types.is_numeric_dtype(reference):
        edges = np.unique(np.nanquantile(reference, np.linspace(0, 1, 11))[1:-1])
        bins = [-np.inf, *edges, np.inf]
        ref = pd.cut(reference, bins, right=False).astype(str)
        cur = pd.cut(current, bins, right=False).astype(str)
    else:
        ref, cur = reference.astype(str), current.astype(str)
    keys = sorted(set(ref) | set(cur))
    p = ref.value_counts(normalize=True).reindex(keys, fill_value=0).to_numpy() + 1e-4
    q = cur.value_counts(normalize=True).reindex(keys, fill_value=0).to_numpy() + 1e-4
    return float(np.sum((q - p) * np.log(q / p)))


def fit_reference_model(frame: pd.DataFrame, target: str) -> Pipeline:
    """A plain linear model on the reference: the test's stand-in for the champion."""
    prep = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(), StandardScaler()), list(NUMERIC_FEATURES)),
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value="missing"),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                list(CATEGORICAL_FEATURES),
            ),
        ]
    )
    model = LogisticRegression(max_iter=1000) if target == "churned" else Ridge()
    return make_pipeline(prep, model).fit(frame[list(FEATURES)], frame[target])


def auc(model: Pipeline, frame: pd.DataFrame) -> float:
    return float(roc_auc_score(frame["churned"], model.predict_proba(frame[list(FEATURES)])[:, 1]))


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return generate(rows=ROWS, seed=0).to_pandas()


@pytest.fixture(scope="module")
def reference_model(reference: pd.DataFrame) -> Pipeline:
    return fit_reference_model(reference, "churned")


def batch(scenario: str, **kwargs: object) -> pd.DataFrame:
    return generate(rows=ROWS, seed=1, scenario=scenario, **kwargs).to_pandas()  # type: ignore[arg-type]


# The clean data


def test_the_same_seed_gives_an_identical_table_and_another_seed_a_different_one() -> None:
    first = generate(rows=5_000, seed=7)
    assert first.equals(generate(rows=5_000, seed=7))
    other = generate(rows=5_000, seed=8)
    assert not first.equals(other)
    assert not np.array_equal(first["monthly_charges"], other["monthly_charges"])


def test_a_clean_batch_has_the_documented_columns_and_types() -> None:
    table = generate(rows=1_000, seed=0)
    assert table.num_rows == 1_000
    expected = {
        "customer_id": pa.string(),
        "event_time": pa.timestamp("us", tz="UTC"),
        "tenure_months": pa.int64(),
        "monthly_charges": pa.float64(),
        "total_charges": pa.float64(),
        "age": pa.int64(),
        "support_calls": pa.int64(),
        "data_usage_gb": pa.float64(),
        "discount_pct": pa.float64(),
        **dict.fromkeys(CATEGORICAL_FEATURES, pa.string()),
        "churned": pa.int64(),
    }
    assert dict(zip(table.schema.names, table.schema.types, strict=True)) == expected


def test_null_shares_fall_within_the_documented_bands(reference: pd.DataFrame) -> None:
    shares = reference.isna().mean()
    for column, share in shares.items():
        assert share == pytest.approx(NULL_SHARES.get(str(column), 0.0), abs=0.006), column


def test_about_one_customer_in_five_churns(reference: pd.DataFrame) -> None:
    assert 0.18 <= reference["churned"].mean() <= 0.22
    assert set(reference["churned"].unique()) == {0, 1}


def test_customer_ids_are_unique_and_event_times_lie_in_the_window() -> None:
    start = datetime(2026, 3, 1, tzinfo=timezone.utc)
    frame = generate(rows=ROWS, seed=3, start=start, window_days=7).to_pandas()
    assert frame["customer_id"].is_unique
    assert frame["customer_id"].str.fullmatch(r"C\d{9}").all()
    times = frame["event_time"]
    assert times.is_monotonic_increasing
    assert times.min() >= pd.Timestamp(start)
    assert times.max() < pd.Timestamp(start) + pd.Timedelta(days=7)
    assert times.max() - times.min() > pd.Timedelta(days=6.9)


def test_features_have_realistic_ranges_and_dependencies(reference: pd.DataFrame) -> None:
    f = reference
    assert f["tenure_months"].between(1, 72).all()
    assert f["age"].between(18, 90).all()
    assert (f["monthly_charges"] > 0).all()
    assert (f["data_usage_gb"].dropna() > 0).all()
    expected_total = f["tenure_months"] * f["monthly_charges"] * (1 - f["discount_pct"] / 100)
    assert np.corrcoef(f["total_charges"][f["discount_pct"].notna()], expected_total.dropna())[
        0, 1
    ] == pytest.approx(1.0, abs=0.01)
    by_plan = f.groupby("plan")["monthly_charges"].mean()
    assert by_plan["basic"] < by_plan["standard"] < by_plan["premium"]
    by_contract = f.groupby("contract")["churned"].mean()
    assert by_contract["month-to-month"] > 5 * by_contract["two-year"]


def test_a_clean_batch_from_another_seed_shows_no_shift_on_any_column(
    reference: pd.DataFrame, reference_model: Pipeline
) -> None:
    current = batch("clean")
    for column in [*FEATURES, "churned"]:
        assert psi(reference[column], current[column]) < NO_SHIFT, column
    assert auc(reference_model, current) == pytest.approx(auc(reference_model, reference), abs=0.02)


# Scenarios


def test_covariate_shift_moves_the_chosen_features_and_keeps_the_features_to_target_relation(
    reference: pd.DataFrame, reference_model: Pipeline
) -> None:
    current = batch("covariate_shift")
    same_seed = batch("clean")
    untouched = ["customer_id", "event_time", "age", "region", "plan", "contract", "payment_method"]
    assert current[untouched].equals(same_seed[untouched])
    for column in ("tenure_months", "monthly_charges"):
        assert psi(reference[column], current[column]) > SHIFT, column
    for column in ("age", "contract", "plan", "region", "payment_method"):
        assert psi(reference[column], current[column]) < NO_SHIFT, column
    assert abs(auc(reference_model, current) - auc(reference_model, reference)) < 0.05


def test_covariate_shift_on_a_categorical_feature_moves_its_category_shares(
    reference: pd.DataFrame,
) -> None:
    current = batch("covariate_shift", features=["contract"], severity=1.0)
    # half the mass moves to the reversed order: 55/24/21% becomes 38/24/38%
    shares = current["contract"].value_counts(normalize=True)
    assert shares["month-to-month"] == pytest.approx(0.38, abs=0.015)
    assert shares["two-year"] == pytest.approx(0.38, abs=0.015)
    assert psi(reference["contract"], current["contract"]) > 0.1


def test_covariate_shift_grows_with_severity(reference: pd.DataFrame) -> None:
    moved = [
        psi(reference["age"], batch("covariate_shift", features=["age"], severity=s)["age"])
        for s in (0.25, 0.5, 1.0)
    ]
    assert moved == sorted(moved)
    assert moved[0] > NO_SHIFT


def test_concept_drift_keeps_every_feature_and_breaks_the_reference_model(
    reference_model: Pipeline,
) -> None:
    clean = generate(rows=ROWS, seed=1)
    drifted = generate(rows=ROWS, seed=1, scenario="concept_drift")
    assert drifted.drop_columns(["churned"]).equals(clean.drop_columns(["churned"]))
    assert not drifted["churned"].equals(clean["churned"])
    clean_auc, drifted_auc = (
        auc(reference_model, clean.to_pandas()),
        auc(reference_model, drifted.to_pandas()),
    )
    assert clean_auc > 0.75
    assert drifted_auc < clean_auc - 0.25


def mean_gap(a: pd.Series, b: pd.Series) -> float:
    """Difference of means in standard errors (Welch): beyond 4 is no sampling accident."""
    return float(abs(a.mean() - b.mean()) / np.sqrt(a.var() / a.count() + b.var() / b.count()))


def test_prior_shift_raises_the_positive_rate_and_keeps_the_features_within_each_class() -> None:
    # a larger reference, so that its own sampling noise does not eat the test's margin
    reference = generate(rows=100_000, seed=2).to_pandas()
    current = batch("prior_shift")
    assert 0.47 <= current["churned"].mean() <= 0.53
    assert current["customer_id"].is_unique
    for label in (0, 1):
        ref, cur = reference[reference["churned"] == label], current[current["churned"] == label]
        for column in NUMERIC_FEATURES:
            assert mean_gap(ref[column], cur[column]) < 4, (label, column)
    # whereas the pooled features move, because the class mix moved
    assert mean_gap(reference["tenure_months"], current["tenure_months"]) > 15
    assert psi(reference["contract"], current["contract"]) > 0.05


def test_prior_shift_with_negative_severity_lowers_the_positive_rate() -> None:
    assert batch("prior_shift", severity=-1.0)["churned"].mean() < 0.09


def test_unseen_categories_appear_only_in_that_scenario(reference: pd.DataFrame) -> None:
    for column in CATEGORICAL_FEATURES:
        assert set(reference[column].dropna()) == set(CATEGORIES[column])
    current = batch("unseen_categories")
    for column in ("contract", "payment_method"):
        share = (current[column] == UNSEEN_VALUES[column]).mean()
        assert share == pytest.approx(0.10, abs=0.01), column
    for column in ("region", "plan"):
        assert set(current[column]) == set(CATEGORIES[column]), column


def test_missing_spike_raises_the_null_share_of_the_chosen_columns_only() -> None:
    current = batch("missing_spike", features=["monthly_charges", "region"], severity=1.0)
    shares = current.isna().mean()
    assert shares["monthly_charges"] == pytest.approx(0.40, abs=0.015)
    assert shares["region"] == pytest.approx(0.40, abs=0.015)
    assert shares["data_usage_gb"] == pytest.approx(NULL_SHARES["data_usage_gb"], abs=0.006)
    assert shares["tenure_months"] == 0


def test_a_missing_spike_keeps_the_clean_batchs_nulls() -> None:
    clean = generate(rows=ROWS, seed=1)["data_usage_gb"].is_null().to_numpy(zero_copy_only=False)
    spiked = batch("missing_spike", features=["data_usage_gb"])["data_usage_gb"].isna()
    assert spiked[clean].all()
    assert spiked.mean() == pytest.approx(0.40, abs=0.015)


@pytest.mark.parametrize("kind", SCHEMA_BREAKS)
def test_each_schema_break_kind_makes_the_change_it_names(kind: str) -> None:
    clean = generate(rows=1_000, seed=1)
    broken = generate(rows=1_000, seed=1, scenario="schema_break", kind=kind, features=["age"])
    if kind == "drop":
        assert broken.column_names == [c for c in clean.column_names if c != "age"]
    elif kind == "rename":
        assert broken.column_names == ["age_v2" if c == "age" else c for c in clean.column_names]
        assert broken["age_v2"].equals(clean["age"])
    else:
        assert broken.column_names == clean.column_names
        assert broken.schema.field("age").type == pa.string()
        assert broken["age"].to_pylist()[:3] == [str(v) for v in clean["age"].to_pylist()[:3]]
    assert broken.drop_columns([c for c in ("age", "age_v2") if c in broken.column_names]).equals(
        clean.drop_columns(["age"])
    )


# The regression variant


def test_the_regression_variant_has_a_float_target_and_the_same_features() -> None:
    table = generate(rows=ROWS, seed=0, task="regression")
    classification = generate(rows=ROWS, seed=0)
    assert table.schema.field("next_month_spend").type == pa.float64()
    assert table.drop_columns(["next_month_spend"]).equals(classification.drop_columns(["churned"]))
    spend = table["next_month_spend"].to_numpy()
    assert (spend >= 0).all()
    assert 40 < spend.mean() < 80
    assert spend.std() > 10


def test_regression_concept_drift_breaks_a_reference_model_and_prior_shift_raises_spend() -> None:
    reference = generate(rows=ROWS, seed=0, task="regression").to_pandas()
    model = fit_reference_model(reference, "next_month_spend")

    def r2(frame: pd.DataFrame) -> float:
        return float(r2_score(frame["next_month_spend"], model.predict(frame[list(FEATURES)])))

    clean = batch("clean", task="regression")
    assert r2(clean) > 0.6
    assert r2(batch("concept_drift", task="regression")) < r2(clean) - 0.5
    shifted = batch("prior_shift", task="regression")["next_month_spend"]
    assert (
        shifted.mean()
        > reference["next_month_spend"].mean() + 0.3 * reference["next_month_spend"].std()
    )


# Arguments, config and files


def test_an_unknown_scenario_is_refused_with_the_allowed_names() -> None:
    with pytest.raises(ValueError, match="unknown scenario 'storm'") as error:
        generate(rows=10, scenario="storm")
    assert all(name in str(error.value) for name in SCENARIOS)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scenario": "clean", "kind": "drop"}, "kind applies to scenario 'schema_break' only"),
        ({"scenario": "schema_break", "kind": "explode"}, "unknown schema_break kind"),
        ({"scenario": "schema_break", "kind": "retype", "features": ["plan"]}, "numeric column"),
        ({"scenario": "unseen_categories", "features": ["age"]}, "cannot act on"),
        ({"scenario": "covariate_shift", "features": ["churned"]}, "cannot act on"),
        ({"scenario": "clean", "features": ["age"]}, "features do not apply"),
        ({"scenario": "missing_spike", "severity": 3.0}, "row share"),
        ({"task": "ranking"}, "unknown task"),
        ({"seed": -1}, "seed must be non-negative"),
        ({"rows": -5}, "rows must be between"),
    ],
)
def test_bad_arguments_are_refused_with_a_reason(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"rows": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("task", "name", "target"),
    [("classification", "churn", "churned"), ("regression", "spend", "next_month_spend")],
)
def test_the_example_dataset_config_matches_the_generated_columns(
    task: Task, name: str, target: str
) -> None:
    config = example_dataset_config(task)
    columns = generate(rows=10, task=task).column_names
    assert config == {
        "name": name,
        "source": f"data/{name}.parquet",
        "target": target,
        "task": task,
        "id": "customer_id",
        "timestamp": "event_time",
        "slices": ["contract"],
    }
    assert {target, "customer_id", "event_time", "contract"} <= set(columns)


def test_write_parquet_round_trips_and_leaves_no_temp_file(tmp_path: Path) -> None:
    table = generate(rows=2_000, seed=5, scenario="missing_spike")
    path = write_parquet(table, tmp_path / "data" / "churn.parquet")
    assert path == tmp_path / "data" / "churn.parquet"
    assert pq.read_table(path).equals(table)
    assert [p.name for p in path.parent.iterdir()] == ["churn.parquet"]


def test_a_crash_mid_write_keeps_the_previous_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_parquet(generate(rows=100, seed=0), tmp_path / "churn.parquet")
    before = path.read_bytes()

    def half_write(table: pa.Table, where: str) -> None:
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", half_write)
    with pytest.raises(OSError, match="disk full"):
        write_parquet(generate(rows=100, seed=1), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["churn.parquet"]
