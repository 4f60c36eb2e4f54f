"""Per-feature and prediction drift with Evidently 0.7 (`DataDriftPreset` plus `ValueDrift`).

    found = detect_drift(current, reference, numeric=num, categorical=cat,
                         predictions=["probability_1"], config=settings.monitoring)
    found.drift, found.drifted_features, found.share, found.columns[0].score

The tests default to effect sizes (normed Wasserstein for numbers, Jensen-Shannon for
categories, drift above 0.1), Evidently's own choice above 1,000 reference rows, pinned so a small
reference does not switch to p-values: on a large window a p-value flags shifts too small to
matter. The window is drift when at least `drift_share` of the features it could compare
drifted (Evidently's dataset-drift rule); the prediction's drift is reported beside it. Evidently
recomputes every column from the rows it is handed, so callers hand it samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pandas as pd
import pyarrow as pa

from tasks import data
from tasks.settings import MonitoringConfig
from tasks.validation import to_frame

Role = Literal["feature", "prediction"]


@dataclass(frozen=True)
class ColumnDrift:
    """One column's drift test: Evidently's score against its threshold."""

    column: str
    role: Role
    test: str  # Evidently's stat test, e.g. "wasserstein"
    score: float | None  # None: not compared (see `note`)
    threshold: float | None
    drifted: bool
    note: str = ""


@dataclass
class DriftResult:
    """What Evidently found in one window, and its snapshot (for the HTML and JSON reports)."""

    columns: list[ColumnDrift]
    drift_share: float  # the share of compared features that makes a window drift
    snapshot: Any = field(default=None, repr=False)  # evidently's Snapshot

    @property
    def features(self) -> list[ColumnDrift]:
        return [c for c in self.columns if c.role == "feature" and c.score is not None]

    @property
    def drifted_features(self) -> list[str]:
        return [c.column for c in self.features if c.drifted]

    @property
    def share(self) -> float:
        """Drifted features over compared features (0 when none could be compared)."""
        return len(self.drifted_features) / len(self.features) if self.features else 0.0

    @property
    def drift(self) -> bool:
        return bool(self.features) and self.share >= self.drift_share

    @property
    def prediction_drift(self) -> bool:
        return any(c.drifted for c in self.columns if c.role == "prediction")

    def scores(self) -> dict[str, float]:
        """Column -> score, for the drifted features (what the event carries)."""
        return {c.column: float(c.score or 0.0) for c in self.features if c.drifted}

    def to_dict(self) -> dict[str, Any]:
        return {
            "drift": self.drift,
            "share": self.share,
            "drift_share": self.drift_share,
            "drifted_features": self.drifted_features,
            "prediction_drift": self.prediction_drift,
            "columns": [asdict(c) for c in self.columns],
        }


def detect_drift(
    current: pa.Table,
    reference: pa.Table,
    *,
    numeric: Sequence[str],
    categorical: Sequence[str],
    predictions: Sequence[str],
    config: MonitoringConfig,
) -> DriftResult:
    """Compare `current` (a window's sample) with `reference` (the champion's training sample)
    column by column. A column that one side lacks, holds another kind of value in, or has no
    values in is not compared, and says why (the data-quality check reports it as broken)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    skipped: list[ColumnDrift] = []
    num = _comparable(current, reference, numeric, "feature", config, skipped)
    cat = _comparable(current, reference, categorical, "feature", config, skipped, numeric=False)
    preds = _comparable(current, reference, predictions, "prediction", config, skipped)
    if not num and not cat:
        return DriftResult(columns=skipped, drift_share=config.drift_share)
    definition = DataDefinition(numerical_columns=[*num, *preds], categorical_columns=cat)
    metrics: list[Any] = [
        DataDriftPreset(
            columns=[*num, *cat],
            drift_share=config.drift_share,
            num_method=config.num_method,
            cat_method=config.cat_method,
            num_threshold=config.num_threshold,
            cat_threshold=config.cat_threshold,
            per_column_method=dict(config.per_column_method) or None,
            per_column_threshold=dict(config.per_column_threshold) or None,
        ),
        *(
            ValueDrift(
                column=p,
                method=config.per_column_method.get(p, config.num_method),
                threshold=config.per_column_threshold.get(p, config.num_threshold),
            )
            for p in preds
        ),
    ]
    keep = [*num, *cat, *preds]
    snapshot = Report(metrics, include_tests=True).run(
        Dataset.from_pandas(_frame(current, keep), data_definition=definition),
        Dataset.from_pandas(_frame(reference, keep), data_definition=definition),
    )  # Evidently takes the CURRENT data first
    roles: dict[str, Role] = {
        **dict.fromkeys([*num, *cat], "feature"),
        **dict.fromkeys(preds, "prediction"),
    }
    found = _read_snapshot(snapshot.dict(), roles=roles)
    ordered = {c: i for i, c in enumerate([*numeric, *categorical, *predictions])}
    columns = sorted([*found, *skipped], key=lambda c: ordered.get(c.column, len(ordered)))
    return DriftResult(columns=columns, drift_share=config.drift_share, snapshot=snapshot)


def _comparable(
    current: pa.Table,
    reference: pa.Table,
    columns: Sequence[str],
    role: Role,
    config: MonitoringConfig,
    skipped: list[ColumnDrift],
    *,
    numeric: bool = True,
) -> list[str]:
    """The columns both sides have with one kind of values; the rest go to `skipped`."""
    kept = []
    for name in columns:
        test = config.per_column_method.get(
            name, config.num_method if numeric else config.cat_method
        )
        note = _why_not(current, reference, name)
        if note is None:
            kept.append(name)
        else:
            skipped.append(
                ColumnDrift(
                    column=name,
                    role=role,
                    test=test,
                    score=None,
                    threshold=None,
                    drifted=False,
                    note=note,
                )
            )
    return kept


def _why_not(current: pa.Table, reference: pa.Table, name: str) -> str | None:
    if name not in reference.column_names:
        return "not compared: not in the reference"
    if name not in current.column_names:
        return "not compared: missing from the window"
    now, then = (data.column_kind(t.schema.field(name).type) for t in (current, reference))
    numeric = {"integer", "float", "boolean"}
    if (now in numeric) != (then in numeric):
        return f"not compared: the window holds {now} values, the reference {then}"
    if current[name].null_count == current.num_rows:
        return "not compared: no values in the window"
    return None


def _frame(table: pa.Table, columns: list[str]) -> pd.DataFrame:
    return to_frame(table.select(columns))


def _read_snapshot(snap: dict[str, Any], *, roles: dict[str, Role]) -> list[ColumnDrift]:
    """Evidently's ValueDrift metrics (score, test, threshold) and their tests (drifted: FAIL)."""
    failed = {
        t["metric_config"]["metric_id"]
        for t in snap.get("tests", [])
        if t.get("status") == "FAIL" and t["metric_config"]["params"].get("column")
    }
    out: dict[str, ColumnDrift] = {}
    for metric in snap["metrics"]:
        config = metric["config"]
        if not str(config.get("type", "")).endswith(":ValueDrift"):
            continue
        column = config["column"]
        score = float(metric["value"])
        out[column] = ColumnDrift(
            column=column,
            role=roles.get(column, "feature"),
            test=str(config.get("method")),
            score=score if math.isfinite(score) else None,
            threshold=config.get("threshold"),
            drifted=metric["id"] in failed,
        )
    return list(out.values())
