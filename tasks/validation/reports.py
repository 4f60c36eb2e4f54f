"""What a validation leaves behind: the JSON report, GX's HTML page, the dataset card, the Prefect
artifacts and the `driftloop.validation.failed` event; and the two entry points that check data
and write all of it (`validate_task` for the training flow, `validate_path` for the CLI).

Every file goes through `tasks.files` (a local folder or a URI home), atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import artifacts, data, events, expectations, files
from tasks.settings import DatasetConfig, Settings
from tasks.validation.profiles import (
    MAX_DOMAIN,
    ColumnProfile,
    Reference,
    profile,
    reference_profile,
)
from tasks.validation.results import ValidationFailed, ValidationReport, status
from tasks.validation.run import validate
from tasks.validation.suite import build_suite, roles, save_suite

if TYPE_CHECKING:
    from great_expectations.core.expectation_suite import ExpectationSuite


# Reports and the dataset card ---------------------------------------------------------------------


def write_reports(
    report: ValidationReport, *, directory: str | os.PathLike[str], card: str | None = None
) -> list[str]:
    """Write the report as JSON, GX's HTML page (and the dataset card) into `directory` (a path
    or a URI), each atomically. Records the folder on the report first, so the JSON says where
    it lies. The HTML page needs GX's result: a report read back from JSON gets none."""
    folder = os.fspath(directory)
    report.directory = folder
    json_file = files.join(folder, files.VALIDATION_JSON)
    written = [files.write_atomic(json_file, report.model_dump_json(indent=2))]
    if report._gx_result is not None:
        html_file = files.join(folder, files.VALIDATION_HTML)
        written.append(files.write_atomic(html_file, render_html(report)))
    if card is not None:
        written.append(files.write_atomic(files.join(folder, files.DATASET_CARD), card))
    return written


def render_html(report: ValidationReport) -> str:
    """GX's own validation page (as in Data Docs) for the expectations GX ran; the run's name,
    time, source, fingerprint and profile show in its info panel."""
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.render.renderer.page_renderer import ValidationResultsPageRenderer
    from great_expectations.render.view.view import DefaultJinjaPageView

    result = report._gx_result
    if result is None:
        raise ValueError(f"{report.dataset}: no GX result to render (a report read from JSON)")
    result.meta["run_id"] = RunIdentifier(
        run_name=f"{report.dataset} {report.mode} validation", run_time=report.checked_at
    )
    result.meta["batch_parameters"] = {
        "dataset": report.dataset,
        "source": report.source or "",
        "rows": report.rows,
        "fingerprint": report.fingerprint,
        "profile": report.profile or "",
        "verdict": report.summary(),
    }
    with expectations.GX_LOCK:
        page = ValidationResultsPageRenderer().render(result)
        return str(DefaultJinjaPageView().render(page))


def dataset_card(table: pa.Table, *, dataset: DatasetConfig, report: ValidationReport) -> str:
    """A markdown card for the data: where it came from, its schema and profile, its checks."""
    ds, md = dataset, artifacts.md
    contract = roles(ds)
    profiles = profile(table)
    if ds.target in table.column_names:  # every class, not the top 5
        target = profile(table, columns=[ds.target], top=MAX_DOMAIN)[0]
        profiles = [target if p.name == ds.target else p for p in profiles]
    lines = [
        f"# Dataset card: {ds.name}",
        "",
        f"- source: `{report.source or ds.source}`",
        f"- fingerprint: `{report.fingerprint}`",
        f"- rows: {table.num_rows:,}; columns: {table.num_columns}",
        f"- task: {ds.task}; target: `{ds.target}`",
        f"- validation: {'passed' if report.success else 'FAILED'} "
        f"({report.checked_at:%Y-%m-%d %H:%M} UTC)",
        f"- profile (ranges, null shares, domains learned from): {md(report.profile or '')}",
        "",
        "## Schema and profile",
        "",
        "| column | type | role | nulls | profile |",
        "|---|---|---|---|---|",
        *(
            f"| `{p.name}` | {table.schema.field(p.name).type} | {contract.get(p.name, 'unused')} "
            f"| {p.nulls:.1%} | {md(_describe_profile(p))} |"
            for p in profiles
        ),
        "",
        *_target_section(next((p for p in profiles if p.name == ds.target), None), task=ds.task),
        "## Expectations",
        "",
        "| result | expectation | column | observed |",
        "|---|---|---|---|",
        *(
            f"| {status(r)} | `{r.expectation}` | {md(r.column or '')} | {md(r.observed)} |"
            for r in report.results
        ),
        "",
    ]
    return "\n".join(lines)


def _describe_profile(p: ColumnProfile) -> str:
    if p.kind in ("integer", "float") and p.min is not None and not p.top:
        return f"min {p.min:.4g}, max {p.max:.4g}, mean {p.mean:.4g}"
    if p.kind == "timestamp" and p.min is not None:
        return f"{p.min} to {p.max}"
    if p.distinct is not None and p.distinct == p.count and p.count > len(p.top):
        return f"{p.distinct:,} distinct (all unique)"
    if p.top:
        shown = ", ".join(f"{v} ({c / max(p.count, 1):.1%})" for v, c in p.top[:5])
        return f"{p.distinct} distinct; top: {shown}"
    return f"{p.distinct} distinct" if p.distinct is not None else ""


def _target_section(p: ColumnProfile | None, *, task: str) -> list[str]:
    if p is None:
        return ["## Target", "", "No target column in this data.", ""]
    if task == "classification" and p.top:
        head = ["## Class balance", "", "| class | rows | share |", "|---|---|---|"]
        return [*head, *(f"| {v} | {c:,} | {c / max(p.count, 1):.1%} |" for v, c in p.top), ""]
    return ["## Target", "", _describe_profile(p), ""]


def report_location(settings: Settings, *parts: str) -> str:
    """Where a data set's reports live: `<home>/reports/<dataset>[/<parts>]`, a path or a URI."""
    return settings.location("reports", settings.dataset.name, *parts)


def report_root(settings: Settings) -> Path:
    """`report_location` as a local `Path` (for a local or file:// home).

    Raises:
        data.DataError: the home is an object store; use `report_location` there.
    """
    fs, path = files.resolve(report_location(settings))
    if not isinstance(fs, pafs.LocalFileSystem):
        raise data.DataError(f"{settings.home}: not a local home; use report_location()")
    return Path(path)


# Prefect artifacts and events ---------------------------------------------------------------------


def publish_artifacts(report: ValidationReport, *, card: str | None = None) -> None:
    """The report as a Prefect table artifact (and the card as a markdown one)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    table = [
        {
            "result": status(r),
            "expectation": r.expectation,
            "column": r.column or "",
            "check": r.check,
            "observed": r.observed,
        }
        for r in report.results
    ]
    create_table_artifact(
        table=table,
        key=artifacts.key("validation", report.dataset),
        description=f"{report.summary()}. Profile: {report.profile or 'the reference table'}",
    )
    if card is not None:
        create_markdown_artifact(
            markdown=card,
            key=artifacts.key("dataset-card", report.dataset),
            description=f"Dataset card of {report.dataset}",
        )


def failure_payload(report: ValidationReport) -> dict[str, Any]:
    """The figures that explain a failed validation, for the event's payload."""
    failed = [
        {"expectation": r.expectation, "column": r.column, "check": r.check, "observed": r.observed}
        for r in report.failures
    ]
    return {
        "dataset": report.dataset,
        "fingerprint": report.fingerprint,
        "rows": report.rows,
        "mode": report.mode,
        "profile": report.profile,
        "problems": report.problems,
        "failed": failed,
    }


def unreadable_payload(dataset: str, source: str, error: Exception) -> dict[str, Any]:
    """The `driftloop.validation.failed` payload for data that could not even be read."""
    failed = [{"expectation": None, "column": None, "check": "unreadable_file",
               "observed": str(error)}]  # fmt: skip
    return {"dataset": dataset, "source": source, "fingerprint": None, "rows": None,
            "mode": "training", "profile": None, "problems": ["unreadable_file"],
            "failed": failed}  # fmt: skip


# Check, write, publish ----------------------------------------------------------------------------


@task(name="validate-data", cache_policy=NO_CACHE)
def validate_task(
    table: pa.Table,
    *,
    suite: ExpectationSuite,
    settings: Settings,
    directory: str | os.PathLike[str],
    source: str | None = None,
    fingerprint: str | None = None,
) -> ValidationReport:
    """Validate training data, publish the report, fail the run when the data breaks its contract.

    Writes the suite, the JSON report, GX's HTML page and the dataset card into `directory` (the
    data's `report_location(settings, fingerprint)`, a path or a URI), publishes a table artifact
    (`validation-<dataset>`) and the card (`dataset-card-<dataset>`); on failure emits
    `driftloop.validation.failed` with the failed checks and raises `ValidationFailed`.
    """
    report = validate(table, suite=suite, settings=settings, fingerprint=fingerprint, source=source)
    card = dataset_card(table, dataset=settings.dataset, report=report)
    folder = os.fspath(directory)
    save_suite(suite, files.join(folder, files.SUITE))
    write_reports(report, directory=folder, card=card)
    publish_artifacts(report, card=card)
    if not report.success:
        events.emit(
            events.VALIDATION_FAILED, model=settings.dataset.name, payload=failure_payload(report)
        )
        raise ValidationFailed(report)
    return report


def validate_path(
    path: str | os.PathLike[str],
    *,
    settings: Settings,
    reports_dir: str | os.PathLike[str] | None = None,
) -> ValidationReport:
    """`driftloop validate --data PATH`: check PATH against the current contract.

    The profile comes from `reference_profile` (the configured reference, else the champion's
    sample); with neither, from `dataset.source` when PATH is another data set, else from PATH
    itself. Writes the suite, the JSON and HTML report and the dataset card under
    `<reports>/<data fingerprint>/`, where `<reports>` defaults to `<home>/reports/<dataset>`.
    Raises `data.DataError` (one line) when a file cannot be read.
    """
    location = os.fspath(path)
    table = data.read_table(location)
    reference = reference_profile(settings)
    source = settings.dataset.source
    if reference.table is None and not _same_path(location, source):
        reference = Reference(data.read_table(source), f"dataset.source: {source}")
    learned = reference.table if reference.table is not None else table
    suite = build_suite(learned, settings=settings, profile_source=reference.source)
    fingerprint = data.fingerprint(table)
    root = os.fspath(reports_dir) if reports_dir is not None else report_location(settings)
    folder = files.join(root, fingerprint)
    save_suite(suite, files.join(folder, files.SUITE))
    report = validate(
        table, suite=suite, settings=settings, fingerprint=fingerprint, source=location
    )
    card = dataset_card(table, dataset=settings.dataset, report=report)
    write_reports(report, directory=folder, card=card)
    return report


def _same_path(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a == b
    return Path(a).resolve() == Path(b).resolve()
