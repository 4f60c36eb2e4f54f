"""What people read of an evaluation: the gate table, the model card, and the Prefect artifacts
they are published as.

    print(gate_table_markdown(decision))
    card = model_card(dataset=ds, report=report, decision=decision, version=3)
    publish_metrics(report, model="churn", role="champion")   # artifact evaluation-churn-champion

The artifact keys are `artifacts.key(...)` of the model (and role): evaluation-<model>-<role>,
gate-<model> and model-card-<model>; Prefect is imported only when one is published.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tasks import artifacts, events
from tasks.evaluate.gating import GateDecision, RuleResult
from tasks.evaluate.measure import EvaluationReport, dataset_features, fmt, relative_loss

if TYPE_CHECKING:
    from tasks.settings import DatasetConfig


# Markdown -----------------------------------------------------------------------------------------


def gate_table_markdown(decision: GateDecision) -> str:
    """The gate as a markdown table: rule | champion | challenger | threshold | result | detail."""
    lines = [
        ("✅ " if decision.promote else "❌ ") + artifacts.md(decision.summary()),
        "",
        f"Decided on: {artifacts.md(decision.basis)}" if decision.basis else "",
        "",
        "| rule | champion | challenger | threshold | result | detail |",
        "|---|---|---|---|---|---|",
    ]
    for r in decision.rules:
        threshold = f"{r.op} {_fmt_threshold(r)}" if r.threshold is not None else "–"
        result = "pass" if r.passed else "**FAIL**"
        if r.threshold is None and r.passed:
            result = "skipped" if r.skipped else "n/a"
        cells = [r.rule, fmt(r.champion), fmt(r.challenger), threshold, result, r.detail]
        lines.append("| " + " | ".join(artifacts.md(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt_threshold(r: RuleResult) -> str:
    assert r.threshold is not None
    return f"{r.threshold:.2%}" if r.relative else fmt(r.threshold)


def model_card(
    *,
    dataset: DatasetConfig,
    report: EvaluationReport,
    decision: GateDecision,
    data_fingerprint: str | None = None,
    version: int | None = None,
    params: Mapping[str, Any] | None = None,
    intended_use: str | None = None,
    holdout: EvaluationReport | None = None,
    recency: Mapping[str, Any] | None = None,
) -> str:
    """A markdown model card: intended use, data, metrics overall and per slice, gate, limits.
    `report`: on the rows that decided; `holdout`: on the source's holdout when those were
    labelled production rows; `recency`: a retraining's choice of weighting."""
    features = dataset_features(dataset)
    title = f"# Model card: {dataset.name}" + (f" v{version}" if version is not None else "")
    use = intended_use or (
        f"Predicts `{dataset.target}` ({dataset.task}) for rows shaped like `{dataset.source}`, "
        "to rank or score them for a human or a downstream rule. Not for decisions about people "
        "without review, nor for rows unlike the training data (the drift monitor watches this)."
    )
    lines = [
        title, "", "## Intended use", "", use, "",
        "## Data", "",
        f"- source: `{dataset.source}`; target `{dataset.target}`",
        f"- numeric features: {', '.join(features.numeric) or 'none'}",
        f"- categorical features: {', '.join(features.categorical) or 'none'}",
        f"- training data fingerprint: `{data_fingerprint or 'unknown'}`",
        f"- judged on: {_rows(report)} (fingerprint `{report.fingerprint}`)"
        + (f"; the source holdout: {holdout.rows} rows" if holdout is not None else ""),
        *([f"- recency weighting: {recency['reason']}"] if recency else []),
        "", f"## Metrics ({_label(report)})", "", _metrics_table(report, holdout=holdout), "",
    ]  # fmt: skip
    if report.task == "classification":
        lines += ["## Calibration", "", *_calibration_lines(report), ""]
    if params:
        lines += ["## Parameters", "", "```json", json.dumps(events.jsonable(params), indent=1),
                  "```", ""]  # fmt: skip
    if report.slices:
        lines += ["## Metrics per slice", "", _slice_table(report), ""]
    lines += ["## Gate decision", "", gate_table_markdown(decision), "## Known limitations", ""]
    lines += [f"- {text}" for text in _limitations(report, primary=decision.primary_metric)]
    return "\n".join(lines) + "\n"


def _calibration_lines(report: EvaluationReport) -> list[str]:
    """The temperature and the ECE before and after it, on the validation split it was fitted
    on and on the holdout (equal-mass bins, as many as the rows support)."""
    cal = report.calibration
    if not cal:
        return [
            "- not calibrated: the model has no temperature (saved before calibration, or "
            "`training.calibrate: false`); its probabilities are the network's own"
        ]
    fitted = f"log loss {fmt(cal['log_loss_before'])} → {fmt(cal['log_loss_after'])}"
    return [
        f"- temperature scaling: T = {cal['temperature']:.3f}, fitted on {cal['rows']} "
        f"validation rows ({fitted})",
        f"- ECE on the validation split ({cal['bins']} equal-mass bins): before "
        f"{fmt(cal['ece_before'])}, after {fmt(cal['ece_after'])}",
        f"- ECE on the holdout ({cal['holdout_bins']} equal-mass bins, {cal['holdout_rows']} "
        f"rows): before {fmt(cal['holdout_ece_before'])}, after {fmt(cal['holdout_ece_after'])}",
    ]


def _label(report: EvaluationReport) -> str:
    return "labelled production rows" if report.on != "holdout" else "holdout"


def _rows(report: EvaluationReport) -> str:
    return f"{report.rows:,} {_label(report)}" + (" rows" if report.on == "holdout" else "")


def _metrics_table(report: EvaluationReport, *, holdout: EvaluationReport | None = None) -> str:
    columns = {report.on: report.metrics, **{f"+{k}": v for k, v in report.robustness.items()}}
    if holdout is not None:
        columns["source holdout"] = holdout.metrics
    header = "| metric | " + " | ".join(columns) + " |"
    rule = "|---" * (len(columns) + 1) + "|"
    rows = [
        f"| {name} | " + " | ".join(fmt(m.get(name)) for m in columns.values()) + " |"
        for name in report.metrics
    ]
    return "\n".join([header, rule, *rows])


def _slice_table(report: EvaluationReport) -> str:
    names = list(report.metrics)
    header = "| slice | rows | " + " | ".join(names) + " |"
    rule = "|---" * (len(names) + 2) + "|"
    rows = [
        f"| {artifacts.md(s.column)}={artifacts.md(s.value)} | {s.rows} | "
        + " | ".join(fmt(s.metrics[n]) for n in names)
        + " |"
        for s in report.slices
    ]
    return "\n".join([header, rule, *rows])


def _limitations(report: EvaluationReport, *, primary: str) -> list[str]:
    notes = [
        "Measured on a holdout drawn from the same data as training: it says nothing about rows "
        "from a different population or period (the drift monitor checks production inputs).",
    ] if report.on == "holdout" else [
        "Measured on recent labelled production rows no model trained on: the present as far as "
        "the feedback labels show it; the drift monitor keeps watching.",
    ]  # fmt: skip
    small = [f"{s.column}={s.value} ({s.rows})" for s in report.slices if s.rows < 200]
    if small:
        notes.append("Slices too small for reliable metrics: " + ", ".join(small) + ".")
    if report.task == "classification":
        notes.append(
            f"Calibration (ECE {fmt(report.metrics['ece'])}) is measured overall; per-slice "
            "probabilities may be less reliable."
        )
    for kind, metrics in report.robustness.items():
        loss = relative_loss(primary, reference=report.metrics[primary], value=metrics[primary])
        notes.append(f"Under `{kind}` inputs, {primary} is {loss:+.1%} worse than on clean rows.")
    notes.append("No fairness audit has been made; check slices that matter for your use.")
    return notes


# Prefect artifacts --------------------------------------------------------------------------------


def publish_metrics(report: EvaluationReport, *, model: str, role: str) -> None:
    """The report's metrics, clean and under each perturbation, as the table artifact
    `evaluation-<model>-<role>`."""
    from prefect.artifacts import create_table_artifact

    rows = [{"metric": k, report.on: v, **{k2: m[k] for k2, m in report.robustness.items()}}
            for k, v in report.metrics.items()]  # fmt: skip
    create_table_artifact(
        table=events.jsonable(rows),
        key=artifacts.key("evaluation", model, role),
        description=f"{model} ({role}): metrics on {_rows(report)}",
    )


def publish_gate(decision: GateDecision, *, model: str) -> None:
    """The gate table as the markdown artifact `gate-<model>`."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        markdown=gate_table_markdown(decision),
        key=artifacts.key("gate", model),
        description=f"{model}: {decision.summary()}"[:500],
    )


def publish_card(card: str, *, model: str, description: str) -> None:
    """A model card as the markdown artifact `model-card-<model>`."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        markdown=card, key=artifacts.key("model-card", model), description=description
    )
