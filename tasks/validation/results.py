"""What a validation found: one `CheckResult` per expectation and column, the `ValidationReport`
around them, and GX's results turned into those rows (one line a person reads per row)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, PrivateAttr

from tasks import events, expectations, files
from tasks.errors import DriftloopError
from tasks.validation.suite import CLASS_COUNT, COLUMNS, LEAKAGE, PER_COLUMN, ROW_COUNT, UNIQUE

Mode = Literal["training", "batch"]


class CheckResult(BaseModel):
    """One expectation's outcome on one column (or the table); `success` is None where it was
    skipped (`observed` says why)."""

    expectation: str
    column: str | None
    check: str
    success: bool | None
    observed: str  # one line a person reads
    arguments: dict[str, Any] = {}  # the expectation's kwargs (for this column)
    details: dict[str, Any] = {}  # GX's result, JSON-safe


class ValidationReport(BaseModel):
    """What one validation found: the verdict, every expectation's row, and which data it was."""

    dataset: str
    mode: Mode
    success: bool
    rows: int
    fingerprint: str
    suite: str
    checked_at: datetime
    results: list[CheckResult]
    source: str | None = None
    profile: str | None = None  # where the ranges, null shares and domains were learned from
    directory: str | None = None  # where the JSON/HTML report and the card were written
    _gx_result: Any = PrivateAttr(default=None)  # GX's own result, for its HTML page

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.success is False]

    @property
    def failed_count(self) -> int:
        return len(self.failures)

    @property
    def problems(self) -> list[str]:
        """The kinds of problem found (`CHECKS`), e.g. `missing_values`, `schema_break`."""
        return sorted({r.check for r in self.failures})

    def summary(self) -> str:
        """One line: the verdict and the counts."""
        ran = [r for r in self.results if r.success is not None]
        verdict = "passed" if self.success else "FAILED"
        return (
            f"validation of {self.dataset} ({self.rows:,} rows, {self.fingerprint}) {verdict}: "
            f"{len(ran) - len(self.failures)} of {len(ran)} checks met"
            + (f"; problems: {', '.join(self.problems)}" if self.failures else "")
        )


def summary(report: ValidationReport) -> str:
    """For people: the verdict, one line per failed check, the profile's origin, the report."""
    lines = [report.summary()]
    lines += [f"  {r.expectation} on {r.column or 'table'}: {r.observed}" for r in report.failures]
    if report.profile is not None:
        lines.append(f"  profile: {report.profile}")
    if report.directory is not None:
        lines.append(f"  report: {files.join(report.directory, files.VALIDATION_HTML)}")
    return "\n".join(lines)


class ValidationFailed(DriftloopError):
    """The data broke its contract. The first line of the message is the verdict, then one line
    per failed check (expectation, column, what was observed)."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        super().__init__(summary(report))


def status(r: CheckResult) -> str:
    """skipped, passed or failed."""
    return "skipped" if r.success is None else "passed" if r.success else "failed"


# GX's results as rows -----------------------------------------------------------------------------


def result_row(
    config: Mapping[str, Any],
    *,
    success: bool | None,
    observed: str,
    column: str | None = None,
    target: str | None = None,
    details: dict[str, Any] | None = None,
) -> CheckResult:
    """One row; `column` picks one column of a table-level check (its own arguments only)."""
    kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
    check = config["meta"].get("check", "user_expectation")
    if column is not None and config["type"] in (COLUMNS, *PER_COLUMN):
        key = PER_COLUMN.get(config["type"])
        kwargs = {key: {column: kwargs[key][column]}} if key else {"column": column}
        check = "invalid_target" if column == target else check
    elif column is None:
        column = kwargs.get("column") or ", ".join(expectations.columns_of(kwargs)) or None
    return CheckResult(
        expectation=config["type"],
        column=column,
        check=check,
        success=success,
        observed=observed,
        arguments=events.jsonable(kwargs),
        details=details or {},
    )


def gx_rows(config: Mapping[str, Any], result: Any, *, target: str) -> list[CheckResult]:
    """GX's result as report rows: one per column for the table-level checks, else one."""
    info = result.exception_info or {}
    if info.get("raised_exception"):
        message = str(info.get("exception_message") or "error").strip().splitlines()[0]
        return [result_row(config, success=False, observed=f"error: {message}")]
    found = events.jsonable(result.result or {})
    type_, kw = config["type"], config["kwargs"]
    if type_ == COLUMNS:
        present = set(found.get("observed_value") or [])
        return [
            result_row(
                config,
                column=c,
                target=target,
                success=c in present,
                observed="present" if c in present else "column is missing",
            )
            for c in kw["column_set"]
        ]
    if type_ in PER_COLUMN:
        verdicts = (found.get("details") or {}).get("columns") or {}
        return [
            result_row(
                config,
                column=c,
                target=target,
                success=v["success"],
                observed=v["observed"],
                details=v,
            )
            for c, v in verdicts.items()
        ]
    success = bool(result.success)
    row = result_row(
        config, success=success, observed=_observed(config, found, success=success), details=found
    )
    if type_ == LEAKAGE:  # name the leaking features, not every feature
        leaking = list((found.get("details") or {}).get("leaking") or {})
        row.column = ", ".join(leaking) or None
    return [row]


def _observed(config: Mapping[str, Any], found: Mapping[str, Any], *, success: bool) -> str:
    """One line saying what GX saw, in the expectation's own terms."""
    type_, kw = config["type"], config["kwargs"]
    allowed = f"allowed {100 * (1 - kw.get('mostly', 1.0)):.2f}%"
    share = f"{found.get('unexpected_percent') or 0:.2f}%"
    examples = expectations.examples(found.get("partial_unexpected_list") or [])
    value = found.get("observed_value")
    if type_ == "expect_column_to_exist":
        return "present" if success else "column is missing"
    if type_ == UNIQUE and kw.get("min_value") == 1.0:
        return "every value distinct" if success else f"only {value:.4%} of the values distinct"
    if type_ == "expect_column_values_to_not_be_null":
        return f"{share} nulls ({allowed})"
    if type_ == "expect_column_values_to_be_between":
        bounds = f"[{kw.get('min_value')}, {kw.get('max_value')}]"
        return f"{share} of values outside {bounds} ({allowed}){examples}"
    if type_ == "expect_column_values_to_be_in_set":
        known = f"the {len(kw['value_set'])} known values"
        return f"{share} of values outside {known} ({allowed}){examples}"
    if type_ == LEAKAGE:
        leaking = (found.get("details") or {}).get("leaking") or {}
        found_ = [f"{f}: {d['method']} {d['score']}" for f, d in leaking.items()]
        worst = "; ".join(found_) or f"highest score {value}"
        return f"{worst} with {kw['target']} (leaks at >= {kw['threshold']})"
    if type_ in (ROW_COUNT, CLASS_COUNT):
        what = "rows" if type_.startswith("expect_table") else "distinct values"
        most = f", at most {kw['max_value']}" if kw.get("max_value") is not None else ""
        return f"{value} {what} (expected at least {kw.get('min_value')}{most})"
    if value is not None:
        return f"observed {value}"
    return f"{share} unexpected values{examples}" if "unexpected_percent" in found else ""
