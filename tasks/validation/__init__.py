"""Data validation with Great Expectations (GX 1.x): the first gate of every training run.

    suite = suite_for(table, settings=settings)                   # contract + reference profile
    report = validate(table, suite=suite, settings=settings)      # training data: every check
    report = check_batch(batch, suite=suite, settings=settings)   # production: drift is no error
    validate_task(table, suite=suite, settings=settings, directory=report_location(settings, fp))
    driftloop validate --data PATH                                # validate_path(), from the CLI

Where the profile comes from (`reference_profile`): `validation.reference` when set, else the
champion's `reference.parquet` in the registry, else (a first run) the data being checked itself.
Every report says where its profile came from.

The package, bottom up (each module imports only those above it in this list):
- `profiles`: `ColumnProfile`, `profile()`, `Reference`, `reference_profile`, `known_columns`;
- `suite`: the checks (`CHECKS`), the contract's `roles`, `build_suite` / `suite_for`, saving
  and loading suites, the user's expectations (checked by `tasks.expectations`);
- `results`: `CheckResult`, `ValidationReport`, `ValidationFailed`, GX's results as rows;
- `rows`: the rows that make a batch fail its checks, and outliers (values far outside the
  reference's range), for the rows that join a retraining and the monitor's drift statistics;
- `run`: `validate` (training data) and `check_batch` (production batches) in GX, `to_frame`;
- `reports`: the JSON report, GX's HTML page (Data Docs' validation page), the markdown dataset
  card, the Prefect artifacts and event payloads; `validate_task` wraps it for Prefect (the
  `driftloop.validation.failed` event, and `ValidationFailed` to fail the flow run) and
  `validate_path` for `driftloop validate`.
"""

from __future__ import annotations

from tasks.validation.profiles import (
    MAX_DOMAIN,
    ColumnProfile,
    Reference,
    known_columns,
    profile,
    reference_profile,
)
from tasks.validation.reports import (
    dataset_card,
    failure_payload,
    publish_artifacts,
    render_html,
    report_location,
    report_root,
    unreadable_payload,
    validate_path,
    validate_task,
    write_reports,
)
from tasks.validation.results import (
    CheckResult,
    Mode,
    ValidationFailed,
    ValidationReport,
    summary,
)
from tasks.validation.rows import (
    Bounds,
    Outliers,
    RowFailures,
    failing_rows,
    find_outliers,
    outlier_bounds,
)
from tasks.validation.run import check_batch, to_frame, validate
from tasks.validation.suite import (
    CHECKS,
    CLASS_COUNT,
    COLUMNS,
    DOMAINS,
    KINDS,
    LEAKAGE,
    NULLS,
    PER_COLUMN,
    RANGES,
    ROW_COUNT,
    UNIQUE,
    Check,
    Role,
    Scope,
    build_suite,
    check_user_expectations,
    load_suite,
    roles,
    save_suite,
    suite_configs,
    suite_for,
)

__all__ = [
    "CHECKS",
    "CLASS_COUNT",
    "COLUMNS",
    "DOMAINS",
    "KINDS",
    "LEAKAGE",
    "MAX_DOMAIN",
    "NULLS",
    "PER_COLUMN",
    "RANGES",
    "ROW_COUNT",
    "UNIQUE",
    "Bounds",
    "Check",
    "CheckResult",
    "ColumnProfile",
    "Mode",
    "Outliers",
    "Reference",
    "Role",
    "RowFailures",
    "Scope",
    "ValidationFailed",
    "ValidationReport",
    "build_suite",
    "check_batch",
    "check_user_expectations",
    "dataset_card",
    "failing_rows",
    "failure_payload",
    "find_outliers",
    "known_columns",
    "load_suite",
    "outlier_bounds",
    "profile",
    "publish_artifacts",
    "reference_profile",
    "render_html",
    "report_location",
    "report_root",
    "roles",
    "save_suite",
    "suite_configs",
    "suite_for",
    "summary",
    "to_frame",
    "unreadable_payload",
    "validate",
    "validate_path",
    "validate_task",
    "write_reports",
]
