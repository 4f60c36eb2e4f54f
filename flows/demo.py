"""The closed loop so far, end to end on synthetic data: train and gate, then check traffic.

    driftloop demo            # writes driftloop.yaml + data/churn.parquet first if missing

Grows with the stages: today it runs the training pipeline (validate, split, Ray Train, gate,
registry) and checks a production batch with a missing-value spike against the champion's suite.
"""

import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.training import training_pipeline
from tasks import registry, synthetic, validation
from tasks.settings import load_settings


@flow(name="demo")
def demo(config: str = "driftloop.yaml") -> dict[str, Any]:
    """Train and promote a champion, then show that a broken production batch is caught."""
    logger = get_run_logger()
    settings = load_settings(Path(config))

    # Train, evaluate, gate ------------------------------------------------------------------------
    outcome = training_pipeline(config=config)
    logger.info("training pipeline: %s", outcome)

    # Traffic with a data-quality problem, checked against what the champion was trained on -------
    root, model = settings.home, settings.dataset.name
    batch = synthetic.generate(rows=5_000, seed=99, task=settings.dataset.task,
                               scenario="missing_spike")  # fmt: skip
    report = validation.check_batch(
        batch, suite=validation.suite_for(batch, settings=settings), settings=settings
    )
    logger.info("production batch: %s", report.summary())
    champion = registry.champion(root=root, model=model)
    return {
        "training": outcome,
        "champion_version": champion.version if champion else None,
        "production_batch_ok": report.success,
        "production_problems": report.problems,
    }


if __name__ == "__main__":
    print(demo(config=sys.argv[1] if len(sys.argv) > 1 else "driftloop.yaml"))
