"""Model quality on a small table, on real Ray: a step budget that converges, calibrated
probabilities, a gate that knows what a few rows can tell, and the same steps on 1 and N workers.
"""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tasks import evaluate as ev
from tasks.budget import plan_budget
from tasks.data import Splits, split
from tasks.loop import LoopTraining
from tasks.model import load_model
from tasks.settings import (
    DatasetConfig,
    EvaluationConfig,
    Features,
    GateConfig,
    Settings,
    TrainingConfig,
)
from tasks.train import TrainResult, train_model

pytestmark = pytest.mark.integration
ROWS = 210  # a holdout of 31 rows: enough for the calibration rule (30) to judge


def breast_cancer(rows: int) -> tuple[pa.Table, list[str]]:
    """A seeded sample of `rows` rows of scikit-learn's breast_cancer (shipped, no network)."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
    frame = frame.sample(n=rows, random_state=0)
    return pa.Table.from_pandas(frame, preserve_index=False), list(frame.columns[:-1])


def make_settings(home: Path, numeric: list[str], **training: object) -> Settings:
    return Settings(
        home=str(home),
        dataset=DatasetConfig(
            name="cancer", source="unused", target="target", features=Features(numeric=numeric)
        ),
        training=TrainingConfig(**{"use_gpu": False, "num_workers": 2, **training}),
    )


@pytest.fixture(scope="module")
def small() -> tuple[Splits, list[str]]:
    table, numeric = breast_cancer(ROWS)
    parts = split(table, dataset=make_settings(Path("unused"), numeric).dataset,
                  config=make_settings(Path("unused"), numeric).split)  # fmt: skip
    return parts, numeric


@pytest.fixture(scope="module")
def trained(
    ray_local: None, small: tuple[Splits, list[str]], tmp_path_factory: pytest.TempPathFactory
) -> TrainResult:
    """The defaults on 200 rows and 2 workers."""
    parts, numeric = small
    home = tmp_path_factory.mktemp("small")
    return train_model(train=parts.train, validation=parts.validation,
                       settings=make_settings(home, numeric))  # fmt: skip


def test_a_table_of_about_200_rows_trains_to_a_calibrated_model_the_gate_accepts(
    trained: TrainResult, small: tuple[Splits, list[str]]
) -> None:
    parts, numeric = small
    assert parts.holdout.num_rows >= GateConfig().min_calibration_rows  # judged, not skipped
    # the budget: min_steps of full-batch steps, not 10 epochs of one step each
    budget = trained.budget
    assert budget is not None
    assert budget.global_batch == parts.train.num_rows
    assert budget.total_steps == TrainingConfig().min_steps
    assert trained.steps == trained.history[-1].step
    assert trained.steps > 10 * budget.steps_per_epoch  # more than the 10 epochs alone give
    # the exported model carries the temperature fitted on the validation split
    predictor = load_model(trained.model_dir)
    assert trained.calibration is not None
    assert predictor.temperature == pytest.approx(trained.calibration.temperature)
    assert trained.calibration.rows == parts.validation.num_rows
    settings = make_settings(Path("unused"), numeric)
    report = ev.evaluate(predictor, parts.holdout, dataset=settings.dataset,
                         config=EvaluationConfig())  # fmt: skip
    decision = ev.gate(challenger=report, champion=None, config=GateConfig())
    assert decision.promote, ev.gate_table_markdown(decision)
    rules = {r.rule: r for r in decision.rules}
    calibration = rules["calibration: ECE"]
    assert not calibration.skipped
    assert calibration.challenger is not None
    assert calibration.challenger < GateConfig().max_calibration_error  # type: ignore[operator]
    assert rules["roc_auc: beats the baseline"].passed
    assert report.metrics["roc_auc"] > 0.95
    assert report.calibration is not None  # the card's before/after
    card = ev.model_card(dataset=settings.dataset, report=report, decision=decision)
    assert "ECE on the validation split" in card


def test_one_worker_and_two_take_the_same_optimizer_steps(
    ray_local: None, small: tuple[Splits, list[str]], tmp_path: Path
) -> None:
    parts, numeric = small
    steps = []
    for workers in (1, 2):
        settings = make_settings(tmp_path / str(workers), numeric, num_workers=workers,
                                 min_steps=120, early_stopping_patience=1000)  # fmt: skip
        result = train_model(train=parts.train, validation=parts.validation, settings=settings)
        assert result.budget == plan_budget(rows=parts.train.num_rows,
                                            config=LoopTraining.of(settings.training))  # fmt: skip
        assert len(result.workers) == workers
        steps.append((result.steps, [r.step for r in result.history]))
    assert steps[0] == steps[1]
    assert steps[0][0] == 120
    assert np.all(np.diff(steps[0][1]) > 0)
