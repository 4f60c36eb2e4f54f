"""The drift monitor and the retrain governor: above the stages, below the flows.

    champion = load_champion(settings)
    window = read_window(home=home, model="churn", features=champion.features.all,
                         target="churned", config=settings.monitoring)
    found = detect_drift(window.table, champion.reference, numeric=..., categorical=...,
                         predictions=champion.output_columns, config=settings.monitoring)
    decision = govern(home=home, model="churn", signals=signals, config=settings.monitoring)

A pass reads a window of the prediction log (pyarrow, only the needed columns, sampled), compares
it with the champion's training sample in Evidently (per-feature drift and the prediction's),
checks its data quality with the validation suite, measures quality on the feedback labels that
arrived (or estimates it from the champion's calibrated probabilities: CBPE), and lets the
governor decide whether to ask for a retraining (`driftloop.retrain.requested`).

The package, bottom up (each module imports only those above it in this list):
- `window`: the window of traffic, its labels, seeded samples, the rows Serve logs;
- `drift`: Evidently's DataDriftPreset and ValueDrift, read back as one row per column;
- `quality`: measured quality with a bootstrap CI, CBPE estimates, the decay rule;
- `requests`: each request's life: the retraining's record (claimed once, ended once), the
  governor's memory on disk (windows judged, requests made, what became of each, read back),
  the lock;
- `governor`: open requests, data quality, min rows, retrain_on, M of N (fresh rows only), after
  an unsuccessful retraining new labels and a back-off, cooldown;
- `checks`: the champion judged, its outputs, the data-quality check, quality on a window;
- `reports`: the pass's result, its reports, Prefect artifacts and events;
- `feedback`: a retraining's labelled production rows, checked, split for training, choosing
  the weighting and the gate;
- `evidence`: a rollout's rows (each model's answers since it began, labelled) and failures;
- `canary`: a rollout's judgement on live traffic (operations, the metric at milestones, slices,
  CBPE);
- `prefect_tasks`: the pass's, the retraining's and a rollout's steps as Prefect tasks (the
  flows wire them).
This module is the face: import from `tasks.monitor`.
"""

from tasks.monitor.checks import (
    Champion,
    MonitorError,
    champion_ref,
    check_data,
    check_rows,
    judge_quality,
    load_champion,
    not_trained_on,
    outlier_bounds,
    window_settings,
    with_outputs,
    without_outliers,
)
from tasks.monitor.drift import ColumnDrift, DriftResult, detect_drift
from tasks.monitor.feedback import LabelledRowsRejected, LabelledTraffic, labelled_traffic
from tasks.monitor.governor import Decision, Signals, decide, govern
from tasks.monitor.prefect_tasks import (
    begin_rollout_task,
    champion_task,
    claim_task,
    conclude_rollout_task,
    data_quality_task,
    drift_task,
    finish_task,
    govern_task,
    judge_rollout_task,
    labelled_traffic_task,
    publish_task,
    quality_task,
    run_is_alive,
    upkeep_task,
    window_task,
)
from tasks.monitor.quality import (
    Quality,
    estimated,
    expected_accuracy,
    expected_roc_auc,
    measured,
)
from tasks.monitor.reports import MonitorResult, latest, publish, verdict, write_reports
from tasks.monitor.requests import State, load_state, mark_sent, reconcile
from tasks.monitor.window import Window, logged_rows, probability_columns, read_window, sample

__all__ = [
    "Champion",
    "ColumnDrift",
    "Decision",
    "DriftResult",
    "LabelledRowsRejected",
    "LabelledTraffic",
    "MonitorError",
    "MonitorResult",
    "Quality",
    "Signals",
    "State",
    "Window",
    "begin_rollout_task",
    "champion_ref",
    "champion_task",
    "check_data",
    "check_rows",
    "claim_task",
    "conclude_rollout_task",
    "data_quality_task",
    "decide",
    "detect_drift",
    "drift_task",
    "estimated",
    "expected_accuracy",
    "expected_roc_auc",
    "finish_task",
    "govern",
    "govern_task",
    "judge_quality",
    "judge_rollout_task",
    "labelled_traffic",
    "labelled_traffic_task",
    "latest",
    "load_champion",
    "load_state",
    "logged_rows",
    "mark_sent",
    "measured",
    "not_trained_on",
    "outlier_bounds",
    "probability_columns",
    "publish",
    "publish_task",
    "quality_task",
    "read_window",
    "reconcile",
    "run_is_alive",
    "sample",
    "upkeep_task",
    "verdict",
    "window_settings",
    "window_task",
    "with_outputs",
    "without_outliers",
    "write_reports",
]
