"""Evaluation metrics, robustness and the promotion gate (scikit-learn models, synthetic data)."""

import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression, Ridge

from tasks import evaluate as ev
from tasks import events, registry, synthetic
from tasks.settings import DatasetConfig, EvaluationConfig, Features, GateConfig

NUMERIC = list(synthetic.NUMERIC_FEATURES)
CATEGORICAL = list(synthetic.CATEGORICAL_FEATURES)
GATE = GateConfig(bootstrap_resamples=200)  # 200 resamples keep each gate under 2 s here


class Linear:
    """A scikit-learn linear model behind the evaluation Protocol (one-hot categories, z-scores)."""

    def __init__(
        self,
        table: pa.Table,
        *,
        numeric: list[str],
        categorical: list[str],
        target: str = "churned",
        shuffle_seed: int | None = None,
    ) -> None:
        self.numeric, self.categorical = numeric, categorical
        self.stats = {
            c: (np.nanmean(_floats(table[c])), np.nanstd(_floats(table[c]))) for c in numeric
        }
        self.vocab = {c: sorted(set(_strings(table[c])) - {None}) for c in categorical}
        y = table[target].to_numpy()
        if shuffle_seed is not None:
            y = np.random.default_rng(shuffle_seed).permutation(y)
        regression = target == synthetic.TARGETS["regression"]
        estimator = Ridge() if regression else LogisticRegression(max_iter=2000)
        self.model = estimator.fit(self._x(table), y)

    @property
    def classes(self) -> list[int] | None:
        return [int(c) for c in self.model.classes_] if hasattr(self.model, "classes_") else None

    def predict(self, table: pa.Table) -> np.ndarray:
        x = self._x(table)
        return self.model.predict_proba(x) if self.classes else self.model.predict(x)

    def _x(self, table: pa.Table) -> np.ndarray:
        cols = []
        for c in self.numeric:
            mean, std = self.stats[c]
            v = _floats(table[c])
            cols.append(((np.where(np.isnan(v), mean, v) - mean) / (std or 1.0))[:, None])
        for c in self.categorical:
            v = np.array(_strings(table[c]), dtype=object)
            cols.append(np.stack([v == k for k in self.vocab[c]], axis=1).astype(float))
        return np.hstack(cols)


class Altered:
    """Another predictor's probabilities, changed by `change(table, probs)`."""

    def __init__(self, inner: Linear, change: Callable[[pa.Table, np.ndarray], np.ndarray]) -> None:
        self.inner, self.change = inner, change

    @property
    def classes(self) -> list[int] | None:
        return self.inner.classes

    def predict(self, table: pa.Table) -> np.ndarray:
        return self.change(table, self.inner.predict(table))


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(pc.cast(column, pa.float64()), np.nan).to_numpy()


def _strings(column: pa.ChunkedArray) -> list[Any]:
    return pc.cast(column, pa.string()).to_pylist()


def dataset_config(task: str = "classification") -> DatasetConfig:
    return DatasetConfig(
        name="churn",
        source="data/churn.parquet",
        target=synthetic.TARGETS[task],
        task=task,
        features=Features(numeric=NUMERIC, categorical=CATEGORICAL),
        slices=["contract", "plan"],
    )


@pytest.fixture(scope="module")
def train() -> pa.Table:
    return synthetic.generate(rows=6000, seed=1)


@pytest.fixture(scope="module")
def holdout() -> pa.Table:
    return synthetic.generate(rows=3000, seed=2)


@pytest.fixture(scope="module")
def real(train: pa.Table) -> Linear:
    return Linear(train, numeric=NUMERIC, categorical=CATEGORICAL)


@pytest.fixture(scope="module")
def weak(train: pa.Table) -> Linear:
    """Two numeric features only: a real but clearly weaker model."""
    return Linear(train, numeric=NUMERIC[:2], categorical=[])


def report(model: Any, table: pa.Table, **kwargs: Any) -> ev.EvaluationReport:
    return ev.evaluate(model, table, dataset=dataset_config(), config=EvaluationConfig(), **kwargs)


@pytest.fixture(scope="module")
def real_report(real: Linear, holdout: pa.Table) -> ev.EvaluationReport:
    return report(real, holdout)


@pytest.fixture(scope="module")
def weak_report(weak: Linear, holdout: pa.Table) -> ev.EvaluationReport:
    return report(weak, holdout)


def untrained_champion(home: str, *, train: pa.Table, tmp: Path) -> int:
    """A driftloop network with its initial (random) weights, registered as the champion."""
    from tasks import model
    from tasks.settings import TrainingConfig

    features = Features(numeric=NUMERIC, categorical=CATEGORICAL)
    pre = model.Preprocessor.fit(train, features=features, target="churned", task="classification")
    spec = model.ModelSpec.build(pre, TrainingConfig(hidden_layers=[8]))
    saved = model.save_model(tmp / "m", model=model.TabularMLP(spec), spec=spec,
                             preprocessor=pre)  # fmt: skip
    version = registry.register(root=home, model="churn", model_dir=str(saved), metadata={})
    registry.set_alias(root=home, model="churn", alias="champion", version=version, reason="")
    return version


def failed_rules(decision: ev.GateDecision) -> list[str]:
    return [r.rule for r in decision.failed]


# Metrics ------------------------------------------------------------------------------------------

Y_BIN = np.array([0, 1, 1, 0, 1, 0, 0, 1])
P_BIN = np.array([0.1, 0.8, 0.6, 0.3, 0.4, 0.2, 0.7, 0.9])
Y_MULTI = np.array([0, 1, 2, 2, 1, 0])
P_MULTI = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.2, 0.5, 0.3],
        [0.1, 0.3, 0.6],
        [0.3, 0.4, 0.3],
        [0.1, 0.8, 0.1],
        [0.5, 0.3, 0.2],
    ]
)


def test_binary_metrics_match_scikit_learn_on_a_fixed_example() -> None:
    probs = np.c_[1 - P_BIN, P_BIN]
    got = ev.classification_metrics(Y_BIN, probs, bins=10)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(Y_BIN, P_BIN > 0.5))
    assert got["f1"] == pytest.approx(skm.f1_score(Y_BIN, P_BIN > 0.5))
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(Y_BIN, P_BIN))
    assert got["pr_auc"] == pytest.approx(skm.average_precision_score(Y_BIN, P_BIN))
    assert got["log_loss"] == pytest.approx(
        -np.mean(np.log(np.where(Y_BIN == 1, P_BIN, 1 - P_BIN)))
    )
    assert got["brier"] == pytest.approx(np.mean((P_BIN - Y_BIN) ** 2))
    # by hand: the negative at 0.7 outranks the positives at 0.6 and 0.4: 14 of 16 pairs right
    assert got["roc_auc"] == pytest.approx(14 / 16)


def test_multiclass_metrics_use_macro_f1_and_one_vs_rest_macro_aucs() -> None:
    got = ev.classification_metrics(Y_MULTI, P_MULTI)
    onehot = np.eye(3)[Y_MULTI]
    assert got["accuracy"] == pytest.approx(5 / 6)
    assert got["f1"] == pytest.approx(skm.f1_score(Y_MULTI, P_MULTI.argmax(1), average="macro"))
    assert got["roc_auc"] == pytest.approx(
        skm.roc_auc_score(Y_MULTI, P_MULTI, multi_class="ovr", average="macro")
    )
    assert got["pr_auc"] == pytest.approx(
        skm.average_precision_score(onehot, P_MULTI, average="macro")
    )
    assert got["log_loss"] == pytest.approx(-np.mean(np.log(P_MULTI[np.arange(6), Y_MULTI])))
    assert got["brier"] == pytest.approx(np.mean(((P_MULTI - onehot) ** 2).sum(axis=1)))


def test_regression_metrics_match_hand_computation() -> None:
    y = np.array([3.0, -0.5, 2.0, 7.0])
    pred = np.array([2.5, 0.0, 2.0, 8.0])
    got = ev.regression_metrics(y, pred)
    assert got["rmse"] == pytest.approx(np.sqrt((0.25 + 0.25 + 0 + 1) / 4))
    assert got["mae"] == pytest.approx((0.5 + 0.5 + 0 + 1) / 4)
    assert got["r2"] == pytest.approx(1 - 1.5 / np.sum((y - y.mean()) ** 2))


def test_expected_calibration_error_matches_a_hand_computation() -> None:
    # binary, 10 bins, one row per bin: (|0-.1| + |1-.4| + |1-.8| + |1-.9|) / 4
    probs = np.array([0.1, 0.4, 0.8, 0.9])
    y = np.array([0, 1, 1, 1])
    assert ev.expected_calibration_error(y, np.c_[1 - probs, probs], bins=10) == pytest.approx(0.25)
    # multiclass, top label: confidences .7 (right), .5 (wrong), .6 (right) in three bins
    probs3 = np.array([[0.7, 0.2, 0.1], [0.3, 0.5, 0.2], [0.2, 0.2, 0.6]])
    assert ev.expected_calibration_error(np.array([0, 0, 2]), probs3, bins=10) == pytest.approx(
        (0.3 + 0.5 + 0.4) / 3
    )


def test_a_calibrated_predictor_has_a_small_ece_and_a_miscalibrated_one_a_large_ece() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(50_000)
    y = (rng.random(p.size) < p).astype(int)
    calibrated = ev.expected_calibration_error(y, np.c_[1 - p, p])
    overconfident = np.clip(0.5 + 2 * (p - 0.5), 0, 1)
    miscalibrated = ev.expected_calibration_error(y, np.c_[1 - overconfident, overconfident])
    assert calibrated < 0.01
    assert miscalibrated > 0.1


def test_a_metric_undefined_on_the_rows_is_nan_not_an_error() -> None:
    probs = np.c_[1 - P_BIN, P_BIN]
    assert np.isnan(ev.metric("roc_auc", np.ones(8, dtype=int), probs))
    assert np.isnan(ev.metric("r2", np.ones(3), np.ones(3)))


# Evaluation of a model ----------------------------------------------------------------------------


def test_slice_metrics_are_the_metrics_of_each_slice_values_rows(
    real: Linear, holdout: pa.Table, real_report: ev.EvaluationReport
) -> None:
    contract = np.array(_strings(holdout["contract"]))
    assert {s.value for s in real_report.slices if s.column == "contract"} == set(contract)
    for s in real_report.slices:
        if s.column != "contract":
            continue
        rows = holdout.filter(pa.array(contract == s.value))
        assert s.rows == rows.num_rows
        alone = ev.classification_metrics(rows["churned"].to_numpy(), real.predict(rows))
        assert s.metrics == pytest.approx(alone, nan_ok=True)
    assert sum(s.rows for s in real_report.slices if s.column == "plan") == holdout.num_rows


def test_a_report_carries_clean_and_perturbed_metrics_and_says_which_rows(
    real: Linear, holdout: pa.Table
) -> None:
    production = synthetic.generate(rows=800, seed=9, scenario="covariate_shift")
    production = production.set_column(  # a quarter of the recent rows are not labelled yet
        production.column_names.index("churned"),
        "churned",
        pa.array(
            [None if i % 4 == 0 else v for i, v in enumerate(production["churned"].to_pylist())],
            pa.int64(),
        ),
    )
    recent = report(real, production, on="production")
    assert (recent.on, recent.rows) == ("production", 600)
    assert 0.6 < recent.metrics["roc_auc"] < 1
    got = report(real, holdout)
    assert got.on == "holdout"
    assert set(got.robustness) == {"noise", "missing", "unseen"}
    for metrics in got.robustness.values():
        assert metrics["roc_auc"] <= got.metrics["roc_auc"] + 0.01
    summary = got.to_dict()
    json.dumps(summary, allow_nan=False)
    assert (summary["rows"], summary["on"]) == (holdout.num_rows, "holdout")
    assert "y_true" not in summary


def test_perturbations_change_only_the_features_they_name(holdout: pa.Table) -> None:
    cfg = EvaluationConfig(noise_scale=0.5, missing_share=0.2, unseen_share=0.3)
    features = Features(numeric=NUMERIC, categorical=CATEGORICAL)
    noisy = ev.perturb(holdout, kind="noise", features=features, config=cfg, seed=0)
    tenure = _floats(holdout["tenure_months"])
    moved = _floats(noisy["tenure_months"]) - tenure
    assert np.nanstd(moved) == pytest.approx(0.5 * np.nanstd(tenure), rel=0.1)
    assert noisy["age"].type == holdout["age"].type  # integers stay integers
    assert noisy["contract"].equals(holdout["contract"])
    blank = ev.perturb(holdout, kind="missing", features=features, config=cfg, seed=0)
    for column in [*NUMERIC, *CATEGORICAL]:
        added = blank[column].null_count - holdout[column].null_count
        assert 0.15 < added / holdout.num_rows < 0.25
    swapped = ev.perturb(holdout, kind="unseen", features=features, config=cfg, seed=0)
    values = _strings(swapped["region"])
    assert 0.1 < values.count(ev.UNSEEN) / len(values) < 0.2
    for table in (noisy, blank, swapped):
        assert table["churned"].equals(holdout["churned"])


class Regressor:
    """A model with no classes: what a regression model looks like to evaluation."""

    classes = None

    def predict(self, table: pa.Table) -> np.ndarray:
        return np.zeros(table.num_rows)


def test_bad_inputs_to_evaluation_are_refused_in_one_line_naming_what_was_wrong(
    real: Linear, holdout: pa.Table
) -> None:
    def nan_first(table: pa.Table, probs: np.ndarray) -> np.ndarray:
        out = probs.copy()
        out[0, 1] = np.nan
        return out

    churn, regression = dataset_config(), dataset_config("regression")
    spend = holdout.append_column(regression.target, pa.array(np.zeros(holdout.num_rows)))
    no_labels = holdout.set_column(
        holdout.schema.get_field_index("churned"), "churned", pa.nulls(holdout.num_rows, pa.int64())
    )
    cases: list[tuple[Any, pa.Table, DatasetConfig, str]] = [
        (real, holdout.drop_columns(["churned"]), churn, "holdout: no target column 'churned'"),
        (real, no_labels, churn, "holdout: no rows with a label in 'churned'"),
        (Altered(real, nan_first), holdout, churn, "returned 1 NaN or infinite"),
        (Altered(real, lambda t, p: p[:, :1]), holdout, churn, "predictions of shape"),
        (Regressor(), holdout, churn, "classification task but the model is a regressor"),
        (real, spend, regression, "regression task but the model is a classifier"),
        (real, holdout, churn.model_copy(update={"slices": ["nowhere"]}),
         "slice column 'nowhere' is not in the table"),
    ]  # fmt: skip
    for model, table, dataset, says in cases:
        with pytest.raises(ev.EvaluationError) as refused:
            ev.evaluate(model, table, dataset=dataset, config=EvaluationConfig())
        assert says in str(refused.value), says
        assert "\n" not in str(refused.value)


def test_a_model_that_does_not_know_a_holdout_class_is_refused(
    real: Linear, holdout: pa.Table
) -> None:
    relabelled = holdout.set_column(
        holdout.column_names.index("churned"), "churned", pc.add(holdout["churned"], 5)
    )
    with pytest.raises(ev.EvaluationError, match="classes the model does not know"):
        report(real, relabelled)


def test_regression_models_are_measured_and_gated_on_rmse(train: pa.Table) -> None:
    target = synthetic.TARGETS["regression"]
    reg_train = synthetic.generate(rows=4000, seed=1, task="regression")
    reg_hold = synthetic.generate(rows=2000, seed=2, task="regression")
    good = Linear(reg_train, numeric=NUMERIC, categorical=CATEGORICAL, target=target)
    poor = Linear(reg_train, numeric=NUMERIC[:1], categorical=[], target=target)
    ds = dataset_config("regression")
    cfg = EvaluationConfig()
    good_report = ev.evaluate(good, reg_hold, dataset=ds, config=cfg)
    poor_report = ev.evaluate(poor, reg_hold, dataset=ds, config=cfg)
    assert set(good_report.metrics) == {"rmse", "mae", "r2"}
    assert good_report.metrics["rmse"] < poor_report.metrics["rmse"]
    better = ev.gate(challenger=good_report, champion=poor_report, config=GATE)
    worse = ev.gate(challenger=poor_report, champion=good_report, config=GATE)
    assert better.promote
    assert better.primary_metric == "rmse"
    assert not worse.promote
    assert "rmse: gain is significant" in failed_rules(worse)


# The gate -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_model_trained_on_shuffled_labels_is_never_promoted_over_a_real_one(
    seed: int, train: pa.Table, holdout: pa.Table, real_report: ev.EvaluationReport
) -> None:
    shuffled = Linear(train, numeric=NUMERIC, categorical=CATEGORICAL, shuffle_seed=seed)
    decision = ev.gate(challenger=report(shuffled, holdout), champion=real_report, config=GATE)
    assert not decision.promote
    assert {"roc_auc: gain over champion", "roc_auc: gain is significant"} <= set(
        failed_rules(decision)
    )


def test_a_genuinely_better_model_is_promoted_and_the_worse_one_is_not(
    real_report: ev.EvaluationReport, weak_report: ev.EvaluationReport
) -> None:
    up = ev.gate(challenger=real_report, champion=weak_report, config=GATE)
    down = ev.gate(challenger=weak_report, champion=real_report, config=GATE)
    assert up.promote, ev.gate_table_markdown(up)
    assert up.champion_value == weak_report.metrics["roc_auc"]
    significance = next(r for r in up.rules if r.rule == "roc_auc: gain is significant")
    assert significance.observed is not None
    assert significance.observed > 0
    assert not down.promote


def test_an_equal_model_is_not_promoted_because_its_gain_is_not_significant(
    real_report: ev.EvaluationReport,
) -> None:
    decision = ev.gate(challenger=real_report, champion=real_report, config=GATE)
    assert failed_rules(decision) == ["roc_auc: gain over champion", "roc_auc: gain is significant"]
    no_margin = GATE.model_copy(update={"min_improvement": 0.0})  # significance stands alone
    decision = ev.gate(challenger=real_report, champion=real_report, config=no_margin)
    assert failed_rules(decision) == ["roc_auc: gain is significant"]


def test_a_regression_in_one_slice_alone_blocks_promotion(
    real: Linear, holdout: pa.Table, weak_report: ev.EvaluationReport
) -> None:
    def flatten_two_year(table: pa.Table, probs: np.ndarray) -> np.ndarray:
        """In two-year contracts, every row gets the slice's churn rate: no ranking left there."""
        rows = np.array(_strings(table["contract"])) == "two-year"
        out = probs.copy()
        out[rows] = probs[rows].mean(axis=0)
        return out

    challenger = report(Altered(real, flatten_two_year), holdout)
    decision = ev.gate(challenger=challenger, champion=weak_report, config=GATE)
    assert failed_rules(decision) == ["slice contract=two-year: roc_auc"], ev.gate_table_markdown(
        decision
    )
    assert challenger.metrics["roc_auc"] > weak_report.metrics["roc_auc"]
    # a slice smaller than min_slice_rows is too noisy to judge: skipped, and says so
    two_year = challenger.slice("contract", "two-year")
    assert two_year is not None
    lenient = GATE.model_copy(update={"min_slice_rows": two_year.rows + 1})
    skipped = ev.gate(challenger=challenger, champion=weak_report, config=lenient)
    assert "slice contract=two-year: roc_auc" not in failed_rules(skipped)
    assert all(not r.rule.startswith("slice contract=two-year") or r.passed for r in skipped.rules)


def test_poor_calibration_alone_blocks_promotion(
    real: Linear, holdout: pa.Table, weak_report: ev.EvaluationReport
) -> None:
    def overconfident(table: pa.Table, probs: np.ndarray) -> np.ndarray:
        """Logits times 4: the same ranking (same AUC), far too sure of itself."""
        logit = np.log(probs[:, 1] / probs[:, 0])
        p = 1 / (1 + np.exp(-4 * logit))
        return np.c_[1 - p, p]

    challenger = report(Altered(real, overconfident), holdout)
    decision = ev.gate(challenger=challenger, champion=weak_report, config=GATE)
    assert failed_rules(decision) == ["calibration: ECE"], ev.gate_table_markdown(decision)


def test_a_model_that_breaks_on_missing_values_is_not_promoted(
    real: Linear, holdout: pa.Table, weak_report: ev.EvaluationReport
) -> None:
    def refuse_nulls(table: pa.Table, probs: np.ndarray) -> np.ndarray:
        if table["monthly_charges"].null_count:  # never null in clean data
            raise ValueError("monthly_charges: unexpected null")
        return probs

    challenger = report(Altered(real, refuse_nulls), holdout)
    decision = ev.gate(challenger=challenger, champion=weak_report, config=GATE)
    assert failed_rules(decision) == ["robustness: roc_auc loss"]
    assert "failed under missing: ValueError: monthly_charges" in decision.failed[0].detail


def test_a_model_that_degrades_on_missing_values_is_held_to_the_robustness_bound(
    real: Linear, holdout: pa.Table, weak_report: ev.EvaluationReport
) -> None:
    def guess_on_nulls(table: pa.Table, probs: np.ndarray) -> np.ndarray:
        """Rows with a blanked value get a coin flip: ranking there is lost, not the model."""
        blanked = np.zeros(table.num_rows, dtype=bool)
        for name in ("monthly_charges", "tenure_months"):  # never null in clean data
            blanked |= table[name].is_null().to_numpy(zero_copy_only=False)
        out = probs.copy()
        coin = np.random.default_rng(0).random(int(blanked.sum()))
        out[blanked] = np.stack([1 - coin, coin], axis=1)
        return out

    challenger = report(Altered(real, guess_on_nulls), holdout)
    clean, blanked = challenger.metrics["roc_auc"], challenger.robustness["missing"]["roc_auc"]
    drop = (clean - blanked) / clean
    assert 0 < drop < 0.5  # a graded loss, neither none nor total
    strict = GATE.model_copy(update={"max_robustness_drop": drop / 2})
    lenient = GATE.model_copy(update={"max_robustness_drop": drop * 2})
    assert "robustness: roc_auc loss" in failed_rules(
        ev.gate(challenger=challenger, champion=weak_report, config=strict)
    )
    assert "robustness: roc_auc loss" not in failed_rules(
        ev.gate(challenger=challenger, champion=weak_report, config=lenient)
    )


JUNE = datetime(2026, 6, 1, tzinfo=timezone.utc)


def scrambled(before: bool) -> Callable[[pa.Table, np.ndarray], np.ndarray]:
    """Give the rows before June (or from June on) someone else's score."""

    def change(table: pa.Table, probs: np.ndarray) -> np.ndarray:
        recent = pc.greater_equal(table["event_time"], pa.scalar(JUNE)).to_numpy()
        rows = ~recent if before else recent
        out = probs.copy()
        out[rows] = probs[rows][::-1]
        return out

    return change


def test_labelled_production_rows_decide_and_the_holdout_is_a_no_regression_check(
    real: Linear, weak: Linear, holdout: pa.Table
) -> None:
    production = synthetic.generate(rows=1500, seed=5, start=JUNE, window_days=30)
    on_weak = report(weak, production, on="production"), report(weak, holdout)

    gain_only = GATE.model_copy(update={"max_slice_regression": 1.0})  # slices have their tests

    def decide(model: Any, *, weight: float = 1.0) -> ev.GateDecision:
        check = ev.HoldoutCheck(report(model, holdout), on_weak[1], weight=weight)
        return ev.gate(challenger=report(model, production, on="production"),
                       champion=on_weak[0], config=gain_only, holdout=check)  # fmt: skip

    # better on the holdout, worse on the present: rejected on the rows that decide
    stale = decide(Altered(real, scrambled(before=False)))
    assert (stale.decided_on, stale.rows) == ("production", 1500)
    gain = {"roc_auc: gain over champion", "roc_auc: gain is significant", "floor: roc_auc"}
    assert gain <= set(failed_rules(stale))
    assert "holdout: roc_auc" not in failed_rules(stale)
    # better on the present, far worse on the holdout: the no-regression check stops it...
    forgetful = Altered(real, scrambled(before=True))
    assert failed_rules(decide(forgetful)) == ["holdout: roc_auc"]
    # ...unless the recency weighting says the source no longer describes the present
    moved_on = decide(forgetful, weight=0.01)
    assert moved_on.promote, ev.gate_table_markdown(moved_on)
    rule = next(r for r in moved_on.rules if r.rule == "holdout: roc_auc")
    assert rule.skipped
    assert "weigh 0.01 on average" in rule.detail
    assert "no longer describes the present" in rule.detail
    assert moved_on.summary().startswith("promote: beats the champion on 1,500 labelled")


def test_judge_decides_on_recent_rows_once_there_are_enough_and_rejects_what_cannot_score_them(
    tmp_path: Path, train: pa.Table, holdout: pa.Table, real: Linear
) -> None:
    home = str(tmp_path / "home")
    untrained_champion(home, train=train, tmp=tmp_path)
    production = synthetic.generate(rows=600, seed=6, start=JUNE, window_days=30)

    gate = GATE.model_copy(update={"max_calibration_error": None})  # Linear's are not calibrated

    def judge(rows: pa.Table) -> ev.Judgement:
        return ev.judge(
            real, holdout=holdout, production=rows, root=home, dataset=dataset_config(),
            evaluation=EvaluationConfig(), config=gate,
        )  # fmt: skip

    few = judge(production.slice(0, 150))
    assert (few.decision.decided_on, few.report.on) == ("holdout", "holdout")
    assert "150 labelled production rows neither model trained on (< gate.min_production_rows" \
        in few.decision.basis  # fmt: skip
    enough = judge(production)
    assert (enough.decision.decided_on, enough.decision.rows) == ("production", 600)
    assert (enough.report.on, enough.holdout.on) == ("production", "holdout")
    assert enough.decision.promote, ev.gate_table_markdown(enough.decision)  # vs random weights
    assert any(r.rule == "holdout: roc_auc" for r in enough.decision.rules)
    lacking = judge(production.drop_columns(["monthly_charges"]))  # logged before it existed
    assert "production rows: challenger can score them" in failed_rules(lacking.decision)
    assert not lacking.decision.promote


def test_the_first_model_is_judged_against_the_floors(
    train: pa.Table, holdout: pa.Table, real_report: ev.EvaluationReport
) -> None:
    first = ev.gate(challenger=real_report, champion=None, config=GATE)
    assert first.promote
    assert not first.has_champion
    assert first.summary().startswith("promote: first model")
    shuffled = report(
        Linear(train, numeric=NUMERIC, categorical=CATEGORICAL, shuffle_seed=0), holdout
    )
    noise = ev.gate(challenger=shuffled, champion=None, config=GATE)
    assert failed_rules(noise) == ["floor: roc_auc"]
    strict = ev.gate(
        challenger=real_report, champion=None, config=GateConfig(floors={"roc_auc": 0.95})
    )
    assert failed_rules(strict) == ["floor: roc_auc"]


def test_a_champion_that_cannot_score_the_new_rows_blocks_promotion_instead_of_waving_it_through(
    real_report: ev.EvaluationReport,
) -> None:
    error = "ModelError: column 'tenure_months' is missing"
    decision = ev.gate(
        challenger=real_report, champion=None, config=GATE, champion_version=3,
        champion_error=error,
    )  # fmt: skip
    assert not decision.promote  # the floors pass; it is not judged as a first model
    assert failed_rules(decision) == ["champion: measured on the same rows"]
    assert "champion v3 could not score" in decision.summary()
    assert "driftloop deploy --version" in decision.summary()
    assert "**FAIL**" in ev.gate_table_markdown(decision)


def test_a_champion_that_cannot_score_the_new_rows_is_reported_not_raised(
    tmp_path: Path, train: pa.Table, holdout: pa.Table
) -> None:
    home = str(tmp_path / "home")
    version = untrained_champion(home, train=train, tmp=tmp_path)
    without = holdout.drop_columns([NUMERIC[0]])  # the new data no longer has a column it needs
    champion = ev.measure_champion(
        without, root=home, dataset=dataset_config(), config=EvaluationConfig()
    )
    assert (champion.version, champion.report) == (version, None)
    assert champion.error is not None
    assert NUMERIC[0] in champion.error
    measured = ev.measure_champion(
        holdout, root=home, dataset=dataset_config(), config=EvaluationConfig()
    )
    assert measured.report is not None
    assert measured.report.rows == holdout.num_rows
    none_yet = ev.measure_champion(
        holdout, root=str(tmp_path / "empty"), dataset=dataset_config(), config=EvaluationConfig()
    )
    assert none_yet == ev.Champion(version=None, report=None)


def test_the_gate_refuses_to_compare_reports_on_different_rows(
    real: Linear, holdout: pa.Table, real_report: ev.EvaluationReport
) -> None:
    other = report(real, holdout.slice(0, 2000))
    with pytest.raises(ev.EvaluationError, match="different rows"):
        ev.gate(challenger=other, champion=real_report, config=GATE)


def test_a_primary_metric_of_the_other_task_is_refused(real_report: ev.EvaluationReport) -> None:
    with pytest.raises(ev.EvaluationError, match="'rmse' does not fit a classification task"):
        ev.gate(challenger=real_report, champion=None, config=GateConfig(primary_metric="rmse"))


def test_the_gate_table_lists_every_rule_with_both_values_and_the_outcome(
    real_report: ev.EvaluationReport, weak_report: ev.EvaluationReport
) -> None:
    decision = ev.gate(challenger=weak_report, champion=real_report, config=GATE)
    table = ev.gate_table_markdown(decision)
    lines = table.splitlines()
    assert lines[0].startswith("❌ reject: ")
    assert lines[2] == f"Decided on: {decision.basis}"
    assert decision.basis == f"{real_report.rows:,} holdout rows"
    assert lines[4] == "| rule | champion | challenger | threshold | result | detail |"
    assert len(lines) == 6 + len(decision.rules)
    gain = next(line for line in lines if line.startswith("| roc_auc: gain over champion"))
    assert f"{real_report.metrics['roc_auc']:.4f}" in gain
    assert "**FAIL**" in gain
    assert "| floor: roc_auc | " in table
    assert "| pass |" in table


def test_the_model_card_has_use_data_metrics_slices_gate_and_limitations(
    real_report: ev.EvaluationReport, weak_report: ev.EvaluationReport
) -> None:
    decision = ev.gate(challenger=real_report, champion=weak_report, config=GATE)
    card = ev.model_card(
        dataset=dataset_config(), report=real_report, decision=decision,
        data_fingerprint="abc123", version=3, params={"epochs": 5},
    )  # fmt: skip
    assert card.startswith("# Model card: churn v3\n")
    for heading in ("Intended use", "Data", "Metrics (holdout)", "Parameters", "Metrics per slice",
                    "Gate decision", "Known limitations"):  # fmt: skip
        assert f"\n## {heading}\n" in card
    assert "`abc123`" in card
    assert "| contract=two-year |" in card
    assert f"| roc_auc | {real_report.metrics['roc_auc']:.4f} |" in card


def test_gate_configuration_is_strict_and_documented() -> None:
    with pytest.raises(ValueError, match="extra"):
        GateConfig(min_improvment=0.01)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="primary_metric"):
        GateConfig(primary_metric="auc")
    assert GateConfig().floors == {"roc_auc": 0.6, "r2": 0.0}


# Prefect: artifacts, events and the registry on a real (temporary) server -------------------------


def fake_model_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    for name in registry.MODEL_FILES:
        (path / name).write_bytes(f"{name} of {path.name}".encode())
    return path


@pytest.mark.integration
def test_the_tasks_promote_a_better_model_reject_a_worse_one_and_tell_prefect(
    prefect_server: None,
    tmp_path: Path,
    real: Linear,
    weak: Linear,
    holdout: pa.Table,
) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.events.filters import EventFilter, EventNameFilter

    home = str(tmp_path / "home")
    ds, cfg = dataset_config(), EvaluationConfig()
    models = {"real": real, "weak": weak}

    @flow(name="gate-under-test")
    def run(challenger: str, champion: str | None) -> ev.Promotion:
        new = ev.evaluate_task(models[challenger], holdout, dataset=ds, config=cfg)
        old = ev.Champion(version=None, report=None)
        if champion is not None:
            now = registry.aliases(root=home, model="churn")["champion"]
            measured = ev.evaluate_task(
                models[champion], holdout, dataset=ds, config=cfg, role="champion"
            )
            old = ev.Champion(version=now, report=measured)
        decision = ev.gate_task(challenger=new, champion=old, config=GATE, model="churn")
        return ev.promote_task(
            decision=decision, report=new, dataset=ds, root=home,
            model_dir=str(fake_model_dir(tmp_path / f"{challenger}-{champion}")),
            metadata={"data_fingerprint": "f00d", "params": {"epochs": 1}},
            extra_files={"suite.json": b"{}"},
        )  # fmt: skip

    outcomes = [run("weak", None), run("real", "weak"), run("weak", "real")]
    assert [(p.version, p.promoted, p.previous) for p in outcomes] == [
        (1, True, None),
        (2, True, 1),
        (3, False, 2),  # rejected, yet kept as a version with its reasons
    ]
    assert registry.aliases(root=home, model="churn") == {"champion": 2}
    meta = registry.get_version(root=home, model="churn", version=2)
    assert meta["data_fingerprint"] == "f00d"
    assert meta["metrics"]["roc_auc"] > 0.8
    assert meta["gate"]["passed"] is True
    assert meta["gate"]["judged_against"] == 1
    assert meta["flow_run_id"]  # the run that made it, to find it in the UI
    rejected_meta = registry.get_version(root=home, model="churn", version=3)
    assert rejected_meta["gate"]["passed"] is False
    assert "gain is significant" in rejected_meta["gate"]["summary"]
    folder = Path(registry.resolve(root=home, model="churn", ref="champion"))
    assert {"model_card.md", "evaluation.json", "gate.json", "suite.json"} <= {
        p.name for p in folder.iterdir()
    }
    with get_client(sync_client=True) as client:
        wanted_keys = ["evaluation-churn-challenger", "evaluation-churn-champion", "gate-churn",
                       "model-card-churn"]  # fmt: skip
        keys = ArtifactFilterKey(any_=wanted_keys)
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=keys))
        assert {a.key for a in found} == set(wanted_keys)
        names = [events.MODEL_PROMOTED, events.MODEL_REJECTED]
        wanted = EventFilter(event=EventNameFilter(name=names))
        for _ in range(60):  # events are persisted asynchronously: poll for up to 30 s
            seen = client.read_events(filter=wanted, limit=50).events
            if len(seen) >= 3:
                break
            time.sleep(0.5)
    by_name: dict[str, list[Any]] = {}
    for event in seen:
        by_name.setdefault(event.event, []).append(event)
    assert len(by_name[events.MODEL_PROMOTED]) == 2
    (rejected,) = by_name[events.MODEL_REJECTED]
    assert rejected.resource.id == "driftloop.model.churn"
    assert rejected.payload["champion"] > rejected.payload["challenger"]
    assert "roc_auc: gain is significant" in [f["rule"] for f in rejected.payload["failed"]]
    assert rejected.payload["version"] == 3
    assert rejected.payload["promote"] is False
    promoted = max(by_name[events.MODEL_PROMOTED], key=lambda e: e.payload["version"])
    assert promoted.payload["previous_champion"] == 1
    assert promoted.payload["version"] == 2


@pytest.mark.integration
def test_a_challenger_that_passes_its_gate_but_loses_the_promotion_race_stays_a_plain_version(
    prefect_server: None,
    tmp_path: Path,
    real_report: ev.EvaluationReport,
    weak_report: ev.EvaluationReport,
) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    home, model = str(tmp_path / "home"), "churn-race"  # its own events on the module's server
    ds = dataset_config().model_copy(update={"name": model})
    judged = registry.register(root=home, model=model, metadata={},
                               model_dir=str(fake_model_dir(tmp_path / "judged")))  # fmt: skip
    registry.set_alias(root=home, model=model, alias="champion", version=judged, reason="first")
    decision = ev.gate(challenger=real_report, champion=weak_report, config=GATE,
                       champion_version=judged)  # fmt: skip
    assert decision.promote, ev.gate_table_markdown(decision)
    # Another run promotes its model between this run's gate and its promotion
    other = registry.register(root=home, model=model, metadata={},
                              model_dir=str(fake_model_dir(tmp_path / "other")))  # fmt: skip
    registry.set_alias(root=home, model=model, alias="champion", version=other, reason="other",
                       expect=judged)  # fmt: skip
    export = fake_model_dir(tmp_path / "export" / "model")  # a temporary export, as on a bucket
    training = ev.Training(data_fingerprint="f00d", params={"epochs": 1}, train_rows=6000,
                           best_epoch=3, metric_name="val_auc", best_metric=0.9)  # fmt: skip

    @flow(name="promotion-race-under-test")
    def run() -> ev.Promotion:
        return ev.promote_task(
            decision=decision, report=real_report, dataset=ds, root=home, model_dir=str(export),
            training=training, model_dir_is_temporary=True,
        )  # fmt: skip

    promotion = run()
    assert (promotion.version, promotion.promoted, promotion.previous) == (3, False, judged)
    assert promotion.reason.startswith("reject: ")
    assert f"points at v{other} now, not v{judged}" in promotion.reason
    assert "is not moved in" in promotion.reason
    assert registry.aliases(root=home, model=model) == {"champion": other}
    assert registry.list_versions(root=home, model=model) == [1, 2, 3]
    meta = registry.get_version(root=home, model=model, version=3)
    assert meta["gate"] == {"passed": True, "summary": decision.summary(), "judged_against": 1}
    assert meta["validation_metric"] == {"val_auc": 0.9}
    assert (meta["data_fingerprint"], meta["train_rows"], meta["best_epoch"]) == ("f00d", 6000, 3)
    assert not export.parent.exists()  # the temporary export is gone once registered
    wanted = EventFilter(
        event=EventNameFilter(name=[events.MODEL_PROMOTED, events.MODEL_REJECTED]),
        resource=EventResourceFilter(id=[f"driftloop.model.{model}"]),
    )
    with get_client(sync_client=True) as client:
        for _ in range(60):  # events are persisted asynchronously: poll for up to 30 s
            seen = client.read_events(filter=wanted, limit=10).events
            if seen:
                break
            time.sleep(0.5)
    assert [e.event for e in seen] == [events.MODEL_REJECTED]
    (rejected,) = seen
    assert rejected.payload["promote"] is False
    assert rejected.payload["version"] == 3
    assert rejected.payload["previous_champion"] == judged
    assert rejected.payload["reason"] == promotion.reason
    assert rejected.payload["failed"] == []  # the gate passed: the race, not a rule, rejected it


def test_a_driftloop_model_directory_is_a_predictor_evaluation_accepts(
    tmp_path: Path, train: pa.Table, holdout: pa.Table
) -> None:
    from tasks import model
    from tasks.settings import TrainingConfig

    features = Features(numeric=NUMERIC, categorical=CATEGORICAL)
    pre = model.Preprocessor.fit(train, features=features, target="churned", task="classification")
    spec = model.ModelSpec.build(pre, TrainingConfig(hidden_layers=[8]))
    saved = model.save_model(tmp_path / "m", model=model.TabularMLP(spec), spec=spec,
                             preprocessor=pre)  # fmt: skip
    predictor: ev.Predictor = model.load_model(saved)
    got = report(predictor, holdout)
    assert got.classes == [0, 1]
    assert set(got.robustness) == set(ev.PERTURBATIONS)
    assert got.robustness_errors == {}


# A first model against the trivial baseline; calibration judged by what the rows can tell --------


class Constant:
    """The trivial model: the training prior (or mean) for every row, whatever its features."""

    def __init__(self, table: pa.Table, *, target: str = "churned", regression: bool = False):
        y = table[target].to_numpy()
        self.regression = regression
        self.value = float(np.mean(y))

    @property
    def classes(self) -> list[int] | None:
        return None if self.regression else [0, 1]

    def predict(self, table: pa.Table) -> np.ndarray:
        n = table.num_rows
        if self.regression:
            return np.full(n, self.value)
        return np.tile([1 - self.value, self.value], (n, 1))


def test_a_first_model_no_better_than_the_prior_is_refused_with_that_reason(
    train: pa.Table, holdout: pa.Table, real_report: ev.EvaluationReport
) -> None:
    no_floors = GATE.model_copy(update={"floors": {}})  # the baseline rule alone decides
    prior = ev.gate(challenger=report(Constant(train), holdout), champion=None, config=no_floors)
    assert failed_rules(prior) == ["roc_auc: beats the baseline"], ev.gate_table_markdown(prior)
    rule = prior.failed[0]
    assert rule.champion == pytest.approx(0.5)  # the prior's ROC-AUC on the same rows
    assert "class prior" in rule.detail
    assert "roc_auc: beats the baseline" in prior.summary()
    advice = prior.advice(7)
    assert advice is not None
    assert "first model was refused (roc_auc: beats the baseline)" in advice
    assert "`driftloop deploy --version 7`" in advice
    # a real model beats the prior, and a model judged against a champion is not held to it
    assert ev.gate(challenger=real_report, champion=None, config=no_floors).promote
    against = ev.gate(challenger=real_report, champion=real_report, config=no_floors)
    assert not any(r.rule.endswith("beats the baseline") for r in against.rules)
    assert against.advice(7) is None  # a champion serves: nothing to advise


def test_a_first_regression_model_must_beat_the_mean() -> None:
    target = synthetic.TARGETS["regression"]
    reg_train = synthetic.generate(rows=3000, seed=1, task="regression")
    reg_hold = synthetic.generate(rows=1000, seed=2, task="regression")
    ds, cfg = dataset_config("regression"), EvaluationConfig()
    no_floors = GATE.model_copy(update={"floors": {}})
    mean = ev.evaluate(Constant(reg_train, target=target, regression=True), reg_hold,
                       dataset=ds, config=cfg)  # fmt: skip
    assert failed_rules(ev.gate(challenger=mean, champion=None, config=no_floors)) == [
        "rmse: beats the baseline"
    ]
    good = Linear(reg_train, numeric=NUMERIC, categorical=CATEGORICAL, target=target)
    judged = ev.gate(challenger=ev.evaluate(good, reg_hold, dataset=ds, config=cfg),
                     champion=None, config=no_floors)  # fmt: skip
    assert "rmse: beats the baseline" not in failed_rules(judged)


def test_calibration_on_too_few_rows_is_reported_as_not_enough_rows_not_as_a_failure(
    real: Linear, holdout: pa.Table
) -> None:
    def overconfident(table: pa.Table, probs: np.ndarray) -> np.ndarray:
        p = np.where(probs[:, 1] > 0.5, 0.999, 0.001)
        return np.c_[1 - p, p]

    few = report(Altered(real, overconfident), holdout.slice(0, 20))
    decision = ev.gate(challenger=few, champion=None, config=GATE.model_copy(
        update={"floors": {}, "min_calibration_rows": 30}))  # fmt: skip
    rule = next(r for r in decision.rules if r.rule == "calibration: ECE")
    assert rule.passed
    assert rule.skipped
    assert rule.detail == "not enough rows: 20 holdout rows < gate.min_calibration_rows=30"
    assert "| calibration: ECE | – | – | – | skipped | not enough rows: 20 holdout rows" in (
        ev.gate_table_markdown(decision)
    )
    # with the rows to judge it, the same over-confidence fails: the interval's low end is out
    many = report(Altered(real, overconfident), holdout)
    judged = ev.gate(challenger=many, champion=None, config=GATE)
    rule = next(r for r in judged.rules if r.rule == "calibration: ECE")
    assert not rule.passed
    assert not rule.skipped
    assert rule.observed is not None
    assert rule.observed > GATE.max_calibration_error  # type: ignore[operator]
    assert "equal-mass bins" in rule.detail


def test_a_small_holdout_is_judged_on_fewer_bins_and_passes_when_its_interval_allows(
    real: Linear, holdout: pa.Table
) -> None:
    small = report(real, holdout.slice(0, 120))  # a calibrated model on 120 rows
    rule = next(r for r in ev.gate(challenger=small, champion=None, config=GATE).rules
                if r.rule == "calibration: ECE")  # fmt: skip
    assert rule.passed
    assert "over 2 equal-mass bins of 120 rows" in rule.detail


def test_the_card_of_a_calibrated_model_reports_the_ece_before_and_after_its_temperature(
    tmp_path: Path, train: pa.Table, holdout: pa.Table
) -> None:
    from tasks import model
    from tasks.calibration import calibrate
    from tasks.settings import TrainingConfig

    features = Features(numeric=NUMERIC, categorical=CATEGORICAL)
    pre = model.Preprocessor.fit(train, features=features, target="churned", task="classification")
    spec = model.ModelSpec.build(pre, TrainingConfig(hidden_layers=[8]))
    torch_model = model.TabularMLP(spec)
    raw = model.Predictor(model=torch_model, spec=spec, preprocessor=pre)
    validation = holdout.slice(0, 1000)
    fitted = calibrate(raw.logits(validation), pre.encode_target(validation), kind="binary",
                       bins=15)  # fmt: skip
    saved = model.save_model(tmp_path / "m", model=torch_model, spec=spec, preprocessor=pre,
                             calibration=fitted)  # fmt: skip
    got = report(model.load_model(saved), holdout.slice(1000))
    assert got.calibration is not None
    assert got.calibration["temperature"] == pytest.approx(fitted.temperature)
    assert got.calibration["holdout_rows"] == 2000
    decision = ev.gate(challenger=got, champion=None, config=GATE)
    card = ev.model_card(dataset=dataset_config(), report=got, decision=decision)
    assert "\n## Calibration\n" in card
    assert f"T = {fitted.temperature:.3f}, fitted on 1000 validation rows" in card
    assert f"before {fitted.ece_before:.4f}, after {fitted.ece_after:.4f}" in card
    cal = got.calibration
    before, after = cal["holdout_ece_before"], cal["holdout_ece_after"]
    holdout_line = (f"ECE on the holdout ({cal['holdout_bins']} equal-mass bins, 2000 rows): "
                    f"before {before:.4f}, after {after:.4f}")  # fmt: skip
    assert holdout_line in card
    assert got.to_dict()["calibration"]["temperature"] == pytest.approx(fitted.temperature)
    # an uncalibrated classifier's card says so
    plain = report(Constant(train), holdout)
    assert "- not calibrated" in ev.model_card(dataset=dataset_config(), report=plain,
                                               decision=decision)  # fmt: skip
