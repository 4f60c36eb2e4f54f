"""Evaluation and the promotion gate: only a model that is better, by evidence, reaches production.

    ds, cfg = settings.dataset, settings.evaluation
    report = evaluate(predictor, splits.holdout, dataset=ds, config=cfg)
    old = load_model(registry.champion(root=home, model=ds.name).location)
    champion = evaluate(old, splits.holdout, dataset=ds, config=cfg)
    decision = gate(challenger=report, champion=champion, config=settings.gate)
    print(gate_table_markdown(decision))

A report holds the metrics on the holdout (overall, per slice value, under perturbed inputs, and on
labelled production rows when given) plus the predictions themselves, so the gate can compare two
models on the very same rows with a paired bootstrap.

The package, bottom to top (each module imports only those above it in this list):
- measure: the metrics, `evaluate()` and its `EvaluationReport`, slices, perturbations.
- gating: the gate's rules (listed there), `gate()` and its `GateDecision`, the paired bootstrap.
- reports: the gate table and the model card in markdown, and the Prefect artifacts of both.
- promote: the champion measured on the same rows, which rows decide (`judge`: labelled
  production rows neither model trained on, once there are enough, else the holdout), the
  Prefect tasks, and promotion into the registry (`promote_task`).
This module is the face: import from `tasks.evaluate`, not from its modules.
"""

from tasks.evaluate.gating import (
    GateDecision,
    HoldoutCheck,
    RuleResult,
    gate,
    paired_bootstrap,
    primary_metric,
)
from tasks.evaluate.measure import (
    CANNOT_SCORE,
    CLASSIFICATION_METRICS,
    DEFAULT_PRIMARY,
    HIGHER_IS_BETTER,
    PERTURBATIONS,
    REGRESSION_METRICS,
    UNSEEN,
    EvaluationError,
    EvaluationReport,
    Predictor,
    SliceMetrics,
    Task,
    classification_metrics,
    compute_metrics,
    evaluate,
    expected_calibration_error,
    is_better,
    metric,
    perturb,
    predict_encoded,
    regression_metrics,
    relative_loss,
    robustness,
    rows_fingerprint,
    slice_metrics,
)
from tasks.evaluate.promote import (
    Champion,
    Judgement,
    Promotion,
    Training,
    decision_payload,
    evaluate_task,
    gate_task,
    judge,
    judge_task,
    measure_champion,
    promote_task,
)
from tasks.evaluate.reports import gate_table_markdown, model_card

__all__ = [
    "CANNOT_SCORE",
    "CLASSIFICATION_METRICS",
    "DEFAULT_PRIMARY",
    "HIGHER_IS_BETTER",
    "PERTURBATIONS",
    "REGRESSION_METRICS",
    "UNSEEN",
    "Champion",
    "EvaluationError",
    "EvaluationReport",
    "GateDecision",
    "HoldoutCheck",
    "Judgement",
    "Predictor",
    "Promotion",
    "RuleResult",
    "SliceMetrics",
    "Task",
    "Training",
    "classification_metrics",
    "compute_metrics",
    "decision_payload",
    "evaluate",
    "evaluate_task",
    "expected_calibration_error",
    "gate",
    "gate_table_markdown",
    "gate_task",
    "is_better",
    "judge",
    "judge_task",
    "measure_champion",
    "metric",
    "model_card",
    "paired_bootstrap",
    "perturb",
    "predict_encoded",
    "primary_metric",
    "promote_task",
    "regression_metrics",
    "relative_loss",
    "robustness",
    "rows_fingerprint",
    "slice_metrics",
]
