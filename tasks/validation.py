"""Data validation with Great Expectations (GX 1.x): the first gate of every training run.

    suite = suite_for(table, settings=settings)                   # contract + reference profile
    report = validate(table, suite=suite, settings=settings)      # training data: every check
    report = check_batch(batch, suite=suite, settings=settings)   # production: drift is no error
    validate_task(table, suite=suite, settings=settings, directory=report_location(settings, fp))
    driftloop validate --data PATH                                # validate_path(), from the CLI

Where the profile comes from (`reference_profile`): `validation.reference` when set, else the
champion's `reference.parquet` in the registry, else (a first run) the data being checked itself.
The suite always follows the CURRENT settings (contract columns, features, tolerances, the user's
expectations): only ranges, null shares and domains come from the profile, and a contract column
the reference lacks gets the contract's checks only (present, a type its role allows, no nulls
in the id or the target). Every report says where its profile came from.

The suite is a plain GX `ExpectationSuite`, saved as its JSON configs. Each expectation carries
`meta = {"check": <problem>, "scope": <scope>}`: the problem it detects (`CHECKS`) and where it
applies (`data`: always; `labels`: only where the target column is there; `training`: only in
`validate`, never on production batches). A GX expectation costs about 5 ms however few rows it
sees, so the per-column checks are driftloop's own table-level expectations (tasks/expectations.py)
that cover every column at once (one result row per column in the report):
- `expect_table_columns_to_match_set` (GX): every contract column is there;
- `expect_column_kinds_to_match`: each column has the reference's type kind (integer, float,
  boolean, string, timestamp), or one its role allows where the reference lacks the column;
- `expect_column_null_shares_to_be_at_most`: nulls up to the reference's share +
  `null_tolerance`, none in the target or the id;
- `expect_column_values_to_be_in_ranges`: numeric features (and a regression target) inside the
  reference's [min, max] widened by `range_margin` x span, `range_share` of the values outside
  allowed;
- `expect_column_values_to_be_in_sets`: categorical features inside the reference's domain (up to
  `MAX_DOMAIN` values) and a classification target inside its known classes. Feature domains
  allow `unseen_category_share` of the values outside; unknown classes, none;
- `expect_column_proportion_of_unique_values_to_be_between` (GX): unique ids, where `dataset.id`
  is declared and the reference's ids are unique (repeated ids mean the id groups rows), in
  training data only (traffic scores a customer again);
- `expect_table_row_count_to_be_between` (GX): at least `min_rows` rows;
- `expect_column_unique_value_count_to_be_between` (GX): at least two classes;
- `expect_no_target_leakage`: no feature reproduces the target (`tasks.leakage`);
- the user's expectations from `settings.validation.expectations`, each a mapping
  `{"type": "<GX expectation name>", "kwargs": {...}, "meta": {...}}` (`meta` optional).
  `check_user_expectations` rejects an unknown name, bad arguments, an invalid regex or
  `min_value` > `max_value` at settings-load time.

Columns a check cannot use (a missing or retyped column, no labels in a production batch) make
their rows "skipped" with the reason, so a schema break fails once, on its column. Production
batches (`check_batch`) are judged for data quality, not drift: ranges there allow
`validation.batch_range_share` of the values outside (a covariate shift pushes some past the
reference's range), and only the labels that have arrived are checked. Reports: JSON, GX's own
HTML page (Data Docs' validation page) and a markdown dataset card, written through `pyarrow.fs`
(a local folder or a URI home) atomically. `validate_task` wraps it for Prefect: artifacts, the
`driftloop.validation.failed` event, and `ValidationFailed` to fail the flow run. See
bench/bench_validation.py for what GX costs.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import os
import re
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, get_args

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, PrivateAttr

from tasks import data, events, expectations, files, registry
from tasks.errors import DriftloopError
from tasks.settings import ConfigError, Settings, ValidationConfig

if TYPE_CHECKING:
    from great_expectations.core.expectation_suite import ExpectationSuite

Check = Literal[
    "schema_break",
    "missing_values",
    "out_of_range",
    "unseen_categories",
    "invalid_target",
    "duplicate_ids",
    "too_few_rows",
    "target_leakage",
    "user_expectation",
    "unreadable_file",
]
Scope = Literal["data", "labels", "training"]
Mode = Literal["training", "batch"]
CHECKS: tuple[str, ...] = get_args(Check)
SUITE_FILE, REPORT_JSON, REPORT_HTML, CARD_FILE = (
    "suite.json",
    "validation.json",
    "validation.html",
    "dataset_card.md",
)
REFERENCE_FILE = "reference.parquet"  # the training sample kept with each registry version
COLUMNS = "expect_table_columns_to_match_set"
KINDS, NULLS = expectations.KINDS, expectations.NULLS  # driftloop's own (tasks/expectations.py)
RANGES, DOMAINS = expectations.RANGES, expectations.DOMAINS
UNIQUE = "expect_column_proportion_of_unique_values_to_be_between"
CLASS_COUNT = "expect_column_unique_value_count_to_be_between"
_COUNTS_VALUES = (UNIQUE, CLASS_COUNT)  # skipped on a table with no rows
LEAKAGE = expectations.LEAKAGE
PER_COLUMN = expectations.PER_COLUMN
MAX_DOMAIN = 1000  # a categorical column with more distinct values gets no domain check
_ROLE_KINDS: dict[str, list[str]] = {  # what the contract allows where the reference says nothing
    "id": ["integer", "string"],
    "timestamp": ["timestamp"],
    "numeric": ["integer", "float"],
    "categorical": ["string", "boolean", "integer"],
    "classification": ["integer", "boolean", "string"],
    "regression": ["integer", "float"],
}
_USER_KEYS = ("type", "kwargs", "meta")
_INTERNAL_KWARGS = {"id", "meta", "notes", "rendered_content", "batch_id", "description"}
_TYPE_CHECKS = {"expect_column_values_to_be_in_type_list", "expect_column_values_to_be_of_type"}


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
        lines.append(f"  report: {files.join(report.directory, REPORT_HTML)}")
    return "\n".join(lines)


class ValidationFailed(DriftloopError):
    """The data broke its contract. The first line of the message is the verdict, then one line
    per failed check (expectation, column, what was observed)."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        super().__init__(summary(report))


@dataclass(frozen=True)
class ColumnProfile:
    """What a column holds: its type kind, null share, and either its range or its top values."""

    name: str
    kind: data.ColumnKind
    nulls: float  # share of the rows
    count: int  # non-null values
    min: Any = None
    max: Any = None
    mean: float | None = None
    distinct: int | None = None
    top: tuple[tuple[Any, int], ...] = ()  # (value, count), most frequent first


class Reference(NamedTuple):
    """The table a suite learns ranges, null shares and domains from, and where it came from."""

    table: pa.Table | None  # None: no reference yet, learn from the data being checked
    source: str  # for people, e.g. "champion churn v3: <home>/registry/churn/3/reference.parquet"


# Where the profile comes from ---------------------------------------------------------------------


def reference_profile(settings: Settings) -> Reference:
    """The profile's table: `validation.reference`, else the champion's training sample, else None.

    Raises:
        data.DataError: `validation.reference` (or the champion's sample) cannot be read; the
            message names it.
    """
    configured = settings.validation.reference
    if configured:
        table = _read_reference(configured, what="validation.reference")
        return Reference(table, f"validation.reference: {configured}")
    root, model = settings.home, settings.dataset.name
    version = registry.aliases(root=root, model=model).get(registry.CHAMPION)
    if version is not None:
        sample = files.join(registry.resolve(root=root, model=model, ref=version), REFERENCE_FILE)
        if _exists(sample):
            table = _read_reference(sample, what=f"the champion's ({model} v{version}) sample")
            return Reference(table, f"champion {model} v{version}: {sample}")
    return Reference(None, "the data itself (no validation.reference, no champion sample yet)")


def suite_for(table: pa.Table, *, settings: Settings) -> ExpectationSuite:
    """The suite to check `table` with: the current contract, ranges from `reference_profile`."""
    reference = reference_profile(settings)
    learned = reference.table if reference.table is not None else table
    return build_suite(learned, settings=settings, profile_source=reference.source)


def _read_reference(location: str, *, what: str) -> pa.Table:
    try:
        return data.read_table(location)
    except data.DataError as exc:
        raise data.DataError(f"{what}: {exc}") from None


# Suites: build, save, load ------------------------------------------------------------------------


def build_suite(
    reference: pa.Table, *, settings: Settings, profile_source: str | None = None
) -> ExpectationSuite:
    """The expectation suite for a data set: the current contract, the reference's profile (for
    the contract columns it has), the user's expectations. `profile_source` says for people where
    `reference` came from (default: "the reference table")."""
    gx = _gx()
    ds = settings.dataset
    roles = _roles(settings)
    known = [c for c in roles if c in reference.column_names]
    profiles = {p.name: p for p in profile(reference, columns=known, top=MAX_DOMAIN + 1)}
    kinds = {c: _expected_kinds(profiles.get(c), role=r, task=ds.task) for c, r in roles.items()}
    configs = [
        _config(COLUMNS, "schema_break", "data", column_set=list(roles), exact_match=False),
        _config(KINDS, "schema_break", "data", kinds=kinds),
        *_per_column(NULLS, "missing_values", max_shares=_null_limits(profiles, settings=settings)),
        *_per_column(RANGES, "out_of_range", ranges=_ranges(profiles, settings=settings)),
        *_per_column(
            DOMAINS, "unseen_categories", value_sets=_domains(profiles, settings=settings)
        ),
        *_id_checks(profiles.get(ds.id) if ds.id is not None else None),
        *_training_checks(settings),
        *_user_configs(settings.validation, columns=[*roles, *reference.column_names]),
    ]
    meta = {
        "dataset": ds.name,
        "target": ds.target,
        "profile": profile_source or "the reference table",
        "reference_rows": reference.num_rows,
    }
    return gx.ExpectationSuite(name=f"{ds.name}-contract", expectations=configs, meta=meta)


def save_suite(suite: ExpectationSuite, location: str | os.PathLike[str]) -> str:
    """Write the suite's expectation configs as JSON (atomically) so it can be replayed later."""
    body = events.jsonable(suite.to_json_dict())
    return _write_atomic(os.fspath(location), json.dumps(body, indent=2))  # column order kept


def load_suite(location: str | os.PathLike[str]) -> ExpectationSuite:
    """Read a suite written by `save_suite` (a path or a URI)."""
    gx = _gx()
    raw = json.loads(_read_text(os.fspath(location)))
    expectations = [{k: e[k] for k in _USER_KEYS if k in e} for e in raw["expectations"]]
    return gx.ExpectationSuite(name=raw["name"], expectations=expectations, meta=raw.get("meta"))


def suite_configs(suite: ExpectationSuite) -> list[dict[str, Any]]:
    """The suite's expectations as `{"type", "kwargs", "meta"}` dicts, in suite order."""
    return [
        {"type": c.type, "kwargs": dict(c.kwargs), "meta": dict(c.meta or {})}
        for c in (e.configuration for e in suite.expectations)
    ]


def _expected_kinds(p: ColumnProfile | None, *, role: str, task: str) -> list[str]:
    """The reference's type kind, or the kinds the column's role allows where it has none."""
    if p is not None and p.kind != "other":
        return [p.kind]
    return _ROLE_KINDS[task if role == "target" else role]


def _null_limits(profiles: Mapping[str, ColumnProfile], *, settings: Settings) -> dict[str, float]:
    """Most null share per column: none in the id or target, else the reference's + tolerance."""
    limits: dict[str, float] = {}
    for column, role in _roles(settings).items():
        p = profiles.get(column)
        if role in ("id", "target"):
            limits[column] = 0.0
        elif p is not None and p.nulls + settings.validation.null_tolerance < 1:
            limits[column] = round(p.nulls + settings.validation.null_tolerance, 6)
    return limits


def _ranges(
    profiles: Mapping[str, ColumnProfile], *, settings: Settings
) -> dict[str, dict[str, float]]:
    """Numeric features (and a regression target): the reference's range, widened."""
    cfg, task_ = settings.validation, settings.dataset.task
    out = {}
    for column, role in _roles(settings).items():
        p = profiles.get(column)
        numeric = role == "numeric" or (role == "target" and task_ == "regression")
        if not numeric or p is None or p.kind not in ("integer", "float") or p.min is None:
            continue
        span = float(p.max) - float(p.min)
        out[column] = {
            "min_value": float(p.min) - cfg.range_margin * span,
            "max_value": float(p.max) + cfg.range_margin * span,
            "mostly": round(1 - cfg.range_share, 6),  # the target's tails too
        }
    return out


def _domains(profiles: Mapping[str, ColumnProfile], *, settings: Settings) -> dict[str, Any]:
    """Categorical features' domains (up to `MAX_DOMAIN` values) and a classification target's
    classes."""
    cfg, task_ = settings.validation, settings.dataset.task
    out = {}
    for column, role in _roles(settings).items():
        p = profiles.get(column)
        if p is None or p.kind not in ("string", "integer") or not p.top:
            continue
        if role == "target" and task_ == "classification":
            out[column] = {"value_set": sorted(v for v, _ in p.top), "mostly": 1.0}
        elif role == "categorical" and p.distinct is not None and p.distinct <= MAX_DOMAIN:
            out[column] = {
                "value_set": sorted(v for v, _ in p.top),
                "mostly": round(1 - cfg.unseen_category_share, 6),
            }
    return out


def _training_checks(settings: Settings) -> list[dict[str, Any]]:
    """What only training data must satisfy: enough rows, two classes, no leaked target."""
    ds, cfg = settings.dataset, settings.validation
    rows = "expect_table_row_count_to_be_between"
    leakage = {
        "features": settings.features.all,
        "target": ds.target,
        "task": ds.task,
        "threshold": cfg.leakage_threshold,
    }
    return [
        _config(rows, "too_few_rows", "training", min_value=cfg.min_rows),
        *(
            [_config(CLASS_COUNT, "invalid_target", "training", column=ds.target, min_value=2)]
            if ds.task == "classification"
            else []
        ),
        _config(LEAKAGE, "target_leakage", "training", **leakage),
    ]


def _id_checks(p: ColumnProfile | None) -> list[dict[str, Any]]:
    """Unique ids, where the reference's ids are unique (the aggregate costs GX a fraction of the
    per-row `expect_column_values_to_be_unique`). Training data only: in production traffic the
    same customer is scored again, and that is no data problem."""
    if p is None or p.distinct is None or p.distinct != p.count:
        return []
    return [_config(UNIQUE, "duplicate_ids", "training", column=p.name, min_value=1.0)]


def _per_column(type_: str, check: Check, **kwargs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One table-level expectation over every column in its map; none for an empty map."""
    return [_config(type_, check, "data", **kwargs)] if any(kwargs.values()) else []


def _config(type_: str, check: Check, scope: Scope, **kwargs: Any) -> dict[str, Any]:
    return {"type": type_, "kwargs": kwargs, "meta": {"check": check, "scope": scope}}


def _roles(settings: Settings) -> dict[str, str]:
    """Each contract column and its role: id, timestamp, numeric, categorical or target."""
    ds = settings.dataset
    roles: dict[str, str] = {}
    if ds.id is not None:
        roles[ds.id] = "id"
    if ds.timestamp is not None:
        roles[ds.timestamp] = "timestamp"
    roles.update(dict.fromkeys(settings.features.numeric, "numeric"))
    roles.update(dict.fromkeys(settings.features.categorical, "categorical"))
    roles[ds.target] = "target"
    return roles


# User expectations --------------------------------------------------------------------------------


def check_user_expectations(
    config: ValidationConfig, *, label: str = "validation.expectations"
) -> None:
    """Check `validation.expectations` at settings-load time; errors name `label[i]`.

    Raises:
        ConfigError: an entry is not `{type, kwargs, meta}`, names no GX expectation (the message
            suggests the close name), GX rejects its arguments (the message names them), a regex
            does not compile, or `min_value` is above `max_value`.
    """
    if config.expectations:  # GX takes seconds to import: only when there is something to check
        _user_configs(config, columns=None, label=label)


def _user_configs(
    config: ValidationConfig,
    *,
    columns: Sequence[str] | None,
    label: str = "validation.expectations",
) -> list[dict[str, Any]]:
    """The user's expectations as suite configs; with `columns`, each named column must be one."""
    _gx()
    from great_expectations.expectations.registry import list_registered_expectation_implementations

    known = sorted(list_registered_expectation_implementations())
    out = []
    for i, entry in enumerate(config.expectations):
        where = f"{label}[{i}]"
        name, kwargs, meta = _user_entry(entry, where=where, known=known)
        for column in _columns_of(kwargs) if columns is not None else ():
            if column not in (columns or ()):
                hint = _hint(column, columns or ())
                raise ConfigError(f"{where} ({name}): column {column!r} is not in the data{hint}")
        meta = {**meta, "check": "user_expectation", "scope": "data"}
        out.append({"type": name, "kwargs": kwargs, "meta": meta})
    return out


def _user_entry(
    entry: Mapping[str, Any], *, where: str, known: Sequence[str]
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """One `{type, kwargs, meta}` entry, checked by GX itself: the expectation's own model."""
    from great_expectations.expectations.registry import get_expectation_impl

    for key in entry:
        if key not in _USER_KEYS:
            hint = _hint(key, _USER_KEYS)
            raise ConfigError(f"{where}: unknown key {key!r}{hint}; allowed: type, kwargs, meta")
    name, kwargs, meta = entry.get("type"), entry.get("kwargs", {}), entry.get("meta", {})
    if not isinstance(name, str):
        raise ConfigError(
            f"{where}.type: required: the name of a GX expectation, "
            "e.g. expect_column_values_to_be_between"
        )
    if name not in known:
        raise ConfigError(
            f"{where}.type: unknown expectation {name!r}{_hint(name, known)}; "
            "see https://greatexpectations.io/expectations/"
        )
    if not isinstance(kwargs, Mapping) or not isinstance(meta, Mapping):
        raise ConfigError(f"{where} ({name}): kwargs and meta must be mappings")
    impl = get_expectation_impl(name)
    try:
        impl(**kwargs)
    except (ValueError, TypeError) as exc:  # GX raises pydantic (v1) ValidationErrors
        raise ConfigError(f"{where} ({name}): {_describe_gx_error(exc, impl)}") from None
    problem = _value_problem(kwargs)
    if problem is not None:  # GX itself would only fail when the suite runs
        raise ConfigError(f"{where} ({name}): {problem}")
    return name, dict(kwargs), dict(meta)


def _value_problem(kwargs: Mapping[str, Any]) -> str | None:
    """What GX accepts at load time but fails on at run time: a bad regex, an empty range."""
    patterns = [("regex", kwargs.get("regex"))]
    patterns += [(f"regex_list[{i}]", p) for i, p in enumerate(kwargs.get("regex_list") or [])]
    for key, pattern in patterns:
        if isinstance(pattern, str):
            try:
                re.compile(pattern)
            except re.error as exc:
                return f"kwargs.{key}: {pattern!r} is not a valid regular expression ({exc})"
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
    if numbers and low > high:  # type: ignore[operator]  # both are numbers here
        return f"kwargs.min_value ({low}) is above kwargs.max_value ({high}): no value can pass"
    return None


def _describe_gx_error(exc: Exception, impl: type) -> str:
    """GX's argument errors, one per argument: `kwargs.<name>: <what is wrong>`."""
    allowed = sorted(set(getattr(impl, "__fields__", {})) - _INTERNAL_KWARGS)
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc).splitlines()[0]
    seen: dict[str, str] = {}
    for err in errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "value_error.extra":
            hint = _hint(key, allowed)
            seen[key] = f"kwargs.{key}: unknown argument{hint}; allowed: {', '.join(allowed)}"
        elif key == "__root__":
            seen.setdefault(key, err["msg"])
        else:
            seen.setdefault(key, f"kwargs.{key}: {err['msg']}")
    return "; ".join(seen.values())


def _hint(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _columns_of(kwargs: Mapping[str, Any]) -> list[str]:
    """The columns an expectation's arguments name."""
    names = [kwargs.get(k) for k in ("column", "column_A", "column_B", "target")]
    names += [*(kwargs.get("column_list") or []), *(kwargs.get("features") or [])]
    names += [*(kwargs.get("column_set") or [])]
    for key in PER_COLUMN.values():
        names += list(kwargs.get(key) or {})
    return [n for n in names if isinstance(n, str)]


# Validation ---------------------------------------------------------------------------------------


def validate(
    table: pa.Table,
    *,
    suite: ExpectationSuite,
    settings: Settings,
    fingerprint: str | None = None,
    source: str | None = None,
) -> ValidationReport:
    """Run every expectation of the suite on training data (an unlabelled table fails)."""
    return _report(
        table,
        suite=suite,
        settings=settings,
        mode="training",
        fingerprint=fingerprint,
        source=source,
    )


def check_batch(
    table: pa.Table,
    *,
    suite: ExpectationSuite,
    settings: Settings,
    fingerprint: str | None = None,
    source: str | None = None,
    range_share: float | None = None,
) -> ValidationReport:
    """Check a production batch against the training suite: data quality, not drift.

    Labels may be absent or partly in (feedback arrives later): only the labels present are
    checked, and a missing target column skips the target's checks. Ranges allow `range_share`
    of the values outside them, since a covariate shift moves some values past the reference's
    range (default: `validation.batch_range_share`); the training-only checks (row count, class
    count, leakage) do not run. `report.problems` names what went wrong: `schema_break`,
    `missing_values`, `unseen_categories`, `out_of_range`, ...
    """
    if range_share is None:
        range_share = settings.validation.batch_range_share
    if not 0 <= range_share <= 1:
        raise ValueError(f"range_share must lie in [0, 1], got {range_share}")
    return _report(
        table,
        suite=suite,
        settings=settings,
        mode="batch",
        range_share=range_share,
        fingerprint=fingerprint,
        source=source,
    )


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
    save_suite(suite, files.join(folder, SUITE_FILE))
    report = validate(
        table, suite=suite, settings=settings, fingerprint=fingerprint, source=location
    )
    write_reports(
        report, directory=folder, card=dataset_card(table, settings=settings, report=report)
    )
    return report


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


def _same_path(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a == b
    return Path(a).resolve() == Path(b).resolve()


def _run(
    table: pa.Table,
    *,
    suite: ExpectationSuite,
    settings: Settings,
    mode: Mode,
    range_share: float = 0.0,
) -> tuple[list[CheckResult], Any]:
    """Run the suite's applicable expectations in GX; report the columns they cannot use as
    skipped, with why. Returns the rows (suite order) and GX's own result."""
    configs = suite_configs(suite)
    kinds = {f.name: data.column_kind(f.type) for f in table.schema}
    expected: dict[str, list[str]] = next(
        (c["kwargs"]["kinds"] for c in configs if c["type"] == KINDS), {}
    )
    usable = _Usable(
        rows=table.num_rows,
        kinds=kinds,
        expected=expected,
        target=settings.dataset.target,
        batch=mode == "batch",
        range_share=range_share,
    )
    rows: list[list[CheckResult]] = [[] for _ in configs]
    runnable = []
    for i, config in enumerate(configs):
        if mode == "batch" and config["meta"].get("scope") == "training":
            continue
        ready, skipped = usable.prepare(config)
        rows[i].extend(skipped)
        if ready is not None:
            runnable.append({**ready, "meta": {**ready["meta"], "row": i}})
    result = _run_gx(to_frame(table), runnable, name=suite.name)
    for found in result.results:
        i = int(found.expectation_config.meta["row"])
        ran = {**configs[i], "kwargs": dict(found.expectation_config.kwargs)}
        rows[i][:0] = _gx_rows(ran, found, target=settings.dataset.target)
    return [r for group in rows for r in group], result


@dataclass(frozen=True)
class _Usable:
    """Trims a config to the columns it can judge in this table; the rest become skipped rows."""

    rows: int
    kinds: Mapping[str, str]  # the table's columns and their type kinds
    expected: Mapping[str, list[str]]  # the suite's kinds per contract column
    target: str
    batch: bool  # a production batch: labels optional, ranges tolerant
    range_share: float

    def prepare(self, config: dict[str, Any]) -> tuple[dict[str, Any] | None, list[CheckResult]]:
        type_, kw = config["type"], config["kwargs"]
        if type_ == COLUMNS:
            keep = [c for c in kw["column_set"] if not self._unlabelled(c)]
            skipped = [c for c in kw["column_set"] if self._unlabelled(c)]
            ready = {**config, "kwargs": {**kw, "column_set": keep}}
            return ready, [self._skip(config, c) for c in skipped]
        if type_ in PER_COLUMN:
            return self._per_column(config, key=PER_COLUMN[type_])
        if type_ == LEAKAGE:
            reason = self.reason(kw["target"])
            if reason is not None:
                return None, [
                    _result_row(config, column=self.target, success=None, observed=reason)
                ]
            features = [f for f in kw["features"] if self.reason(f) is None]
            return {**config, "kwargs": {**kw, "features": features}}, []
        if type_ == "expect_column_to_exist":  # a missing column is what it looks for
            return config, []
        if type_ in _COUNTS_VALUES and self.rows == 0:  # the row count says it once
            return None, [_result_row(config, success=None, observed="skipped: no rows")]
        for column in _columns_of(kw):
            reason = self.reason(column, kind_matters=type_ not in _TYPE_CHECKS)
            if reason is not None:
                return None, [_result_row(config, success=None, observed=reason)]
        return config, []

    def reason(self, column: str, *, kind_matters: bool = True) -> str | None:
        """Why a check cannot judge `column` here (None: it can)."""
        if self._unlabelled(column):
            return f"skipped: no labels in this batch (no column {self.target!r})"
        if column not in self.kinds:
            return f"skipped: column {column!r} is missing"
        allowed = self.expected.get(column)
        if kind_matters and allowed and self.kinds[column] not in allowed:
            return (
                f"skipped: column {column!r} holds {self.kinds[column]} values, "
                f"not {' or '.join(allowed)}"
            )
        return None

    def _per_column(
        self, config: dict[str, Any], *, key: str
    ) -> tuple[dict[str, Any] | None, list[CheckResult]]:
        type_, spec = config["type"], dict(config["kwargs"][key])
        skipped = []
        for column in list(spec):
            reason = self.reason(column, kind_matters=type_ != KINDS)
            if reason is None and self.batch and type_ == NULLS and column == self.target:
                reason = "skipped: labels arrive later in production; only those present count"
            if reason is not None:
                skipped.append(self._skip(config, column, reason))
                del spec[column]
        if self.batch and type_ == RANGES:  # drift moves some values past the reference's range
            most = round(1 - self.range_share, 6)
            spec = {c: {**s, "mostly": min(s["mostly"], most)} for c, s in spec.items()}
        ready = {**config, "kwargs": {**config["kwargs"], key: spec}} if spec else None
        return ready, skipped

    def _unlabelled(self, column: str) -> bool:
        return self.batch and column == self.target and column not in self.kinds

    def _skip(self, config: dict[str, Any], column: str, reason: str | None = None) -> CheckResult:
        return _result_row(
            config,
            column=column,
            success=None,
            observed=reason or self.reason(column) or "skipped",
            target=self.target,
        )


def _run_gx(frame: pd.DataFrame, configs: list[dict[str, Any]], *, name: str) -> Any:
    """Validate a frame in GX: `Batch.validate(suite)` on one cached whole-frame batch definition.

    `Batch.validate` runs the suite without the stores a `ValidationDefinition` writes to (they
    serialise the suite and every result), and reusing one data asset saves adding and deleting
    one per run.
    """
    gx = _gx()
    with _GX_LOCK:  # one context per process, and GX contexts are not thread-safe
        batch = _batch_definition().get_batch(batch_parameters={"dataframe": frame})
        suite = gx.ExpectationSuite(name=name, expectations=configs)
        result_format = {"result_format": "BASIC", "partial_unexpected_count": 5}
        return batch.validate(suite, result_format=result_format)


@functools.cache
def _context() -> Any:
    """One in-memory GX context per process: no analytics, progress bars or Data Docs folder."""
    gx = _gx()  # sets GX_ANALYTICS_ENABLED=false before GX is imported
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )
    from great_expectations.execution_engine import pandas_execution_engine

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    # GX hashes every frame below this many bytes for an optional batch marker (frames above it
    # go without): 1.3 s of 1M rows. driftloop fingerprints its data itself, so never hash.
    pandas_execution_engine.HASH_THRESHOLD = 0
    return gx.get_context(mode="ephemeral", project_config=config)


@functools.cache
def _batch_definition() -> Any:
    """The one pandas data asset every run validates its frame through (under `_GX_LOCK`)."""
    source = _context().data_sources.add_or_update_pandas("driftloop")
    return source.add_dataframe_asset("frame").add_batch_definition_whole_dataframe("whole")


def to_frame(table: pa.Table) -> pd.DataFrame:
    """The pandas frame GX validates: one dtype per type kind, whatever the nulls.

    Integers become int64 (pandas' nullable Int64 where there are nulls), floats and decimals
    float64, booleans bool (nullable boolean with nulls), strings pandas' pyarrow-backed string
    dtype (no Python objects: near zero-copy), dates and timestamps naive UTC datetimes;
    dictionaries are decoded.
    """
    series = {
        name: _series(column)
        for name, column in zip(table.column_names, table.columns, strict=True)
    }
    return pd.DataFrame(series, copy=False)


def _series(column: pa.ChunkedArray) -> pd.Series:
    dtype = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    nulls = column.null_count > 0
    mapper: dict[pa.DataType, Any] = {}
    if pa.types.is_integer(dtype):
        dtype = pa.uint64() if dtype == pa.uint64() else pa.int64()
        if nulls:
            mapper[dtype] = pd.UInt64Dtype() if dtype == pa.uint64() else pd.Int64Dtype()
    elif pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        dtype = pa.float64()
    elif pa.types.is_boolean(dtype) and nulls:
        mapper[dtype] = pd.BooleanDtype()
    elif pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        dtype = pa.large_string()  # what pandas' pyarrow string dtype holds
        mapper[dtype] = pd.StringDtype("pyarrow")
    elif pa.types.is_timestamp(dtype) or pa.types.is_date(dtype):
        dtype = pa.timestamp(dtype.unit if pa.types.is_timestamp(dtype) else "us")
    if dtype != column.type:
        column = column.cast(dtype)
    return column.to_pandas(types_mapper=mapper.get)


def _report(
    table: pa.Table,
    *,
    suite: ExpectationSuite,
    settings: Settings,
    mode: Mode,
    fingerprint: str | None,
    source: str | None,
    range_share: float = 0.0,
) -> ValidationReport:
    """Run the suite (`_run`) and wrap its rows, verdict and GX's result as the report."""
    rows, result = _run(table, suite=suite, settings=settings, mode=mode, range_share=range_share)
    report = ValidationReport(
        dataset=settings.dataset.name,
        mode=mode,
        success=all(r.success is not False for r in rows),
        rows=table.num_rows,
        fingerprint=fingerprint or data.fingerprint(table),
        suite=suite.name,
        checked_at=datetime.now(timezone.utc),
        results=rows,
        source=source,
        profile=(suite.meta or {}).get("profile"),
    )
    report._gx_result = result
    return report


def _result_row(
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
        column = kwargs.get("column") or ", ".join(_columns_of(kwargs)) or None
    return CheckResult(
        expectation=config["type"],
        column=column,
        check=check,
        success=success,
        observed=observed,
        arguments=events.jsonable(kwargs),
        details=details or {},
    )


def _gx_rows(config: Mapping[str, Any], result: Any, *, target: str) -> list[CheckResult]:
    """GX's result as report rows: one per column for the table-level checks, else one."""
    info = result.exception_info or {}
    if info.get("raised_exception"):
        message = str(info.get("exception_message") or "error").strip().splitlines()[0]
        return [_result_row(config, success=False, observed=f"error: {message}")]
    found = events.jsonable(result.result or {})
    type_, kw = config["type"], config["kwargs"]
    if type_ == COLUMNS:
        present = set(found.get("observed_value") or [])
        return [
            _result_row(
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
            _result_row(
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
    row = _result_row(
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
    if type_ in (
        "expect_table_row_count_to_be_between",
        "expect_column_unique_value_count_to_be_between",
    ):
        what = "rows" if type_.startswith("expect_table") else "distinct values"
        most = f", at most {kw['max_value']}" if kw.get("max_value") is not None else ""
        return f"{value} {what} (expected at least {kw.get('min_value')}{most})"
    if value is not None:
        return f"observed {value}"
    return f"{share} unexpected values{examples}" if "unexpected_percent" in found else ""


# GX, loaded on first use --------------------------------------------------------------------------


_GX_LOCK = threading.RLock()  # Prefect runs tasks in threads; GX state is process-wide


@functools.cache
def _gx() -> Any:
    """Import GX with its usage analytics off, and register driftloop's expectations."""
    with _GX_LOCK:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no calls to an outside endpoint
        import great_expectations as gx
        from great_expectations.expectations.registry import (
            list_registered_expectation_implementations as registered,
        )

        if LEAKAGE not in registered():
            expectations.register()
        return gx


# Profiles, reports and the dataset card -----------------------------------------------------------


def profile(
    table: pa.Table, *, columns: Sequence[str] | None = None, top: int = 5
) -> list[ColumnProfile]:
    """Per-column profile: type kind, null share, range and mean, distinct count, top values."""
    out = []
    for name in columns if columns is not None else table.column_names:
        column = table[name]
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        kind = data.column_kind(column.type)
        count = len(column) - column.null_count
        p = ColumnProfile(
            name=name, kind=kind, nulls=column.null_count / max(len(column), 1), count=count
        )
        if kind in ("integer", "float", "timestamp") and count:
            low, high = pc.min_max(column).values()
            mean = pc.mean(column).as_py() if kind != "timestamp" else None
            p = replace(p, min=low.as_py(), max=high.as_py(), mean=mean)
        if kind in ("integer", "string", "boolean"):
            distinct = pc.count_distinct(column).as_py()
            p = replace(
                p,
                distinct=distinct,
                top=_top(column, top) if kind != "integer" or distinct <= top else (),
            )
        out.append(p)
    return out


def _top(column: pa.ChunkedArray, k: int) -> tuple[tuple[Any, int], ...]:
    counts = pc.value_counts(column.drop_null())
    table = pa.table({"value": counts.field("values"), "count": counts.field("counts")})
    if table.num_rows > k:
        table = pc.take(table, pc.select_k_unstable(table, k, [("count", "descending")]))
    pairs = zip(table["value"].to_pylist(), table["count"].to_pylist(), strict=True)
    return tuple(sorted(pairs, key=lambda vc: (-vc[1], str(vc[0]))))


def write_reports(
    report: ValidationReport, *, directory: str | os.PathLike[str], card: str | None = None
) -> list[str]:
    """Write the report as JSON, GX's HTML page (and the dataset card) into `directory` (a path
    or a URI), each atomically. Records the folder on the report first, so the JSON says where
    it lies. The HTML page needs GX's result: a report read back from JSON gets none."""
    folder = os.fspath(directory)
    report.directory = folder
    written = [_write_atomic(files.join(folder, REPORT_JSON), report.model_dump_json(indent=2))]
    if report._gx_result is not None:
        written.append(_write_atomic(files.join(folder, REPORT_HTML), render_html(report)))
    if card is not None:
        written.append(_write_atomic(files.join(folder, CARD_FILE), card))
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
    with _GX_LOCK:
        page = ValidationResultsPageRenderer().render(result)
        return str(DefaultJinjaPageView().render(page))


def dataset_card(table: pa.Table, *, settings: Settings, report: ValidationReport) -> str:
    """A markdown card for the data: where it came from, its schema and profile, its checks."""
    ds = settings.dataset
    roles = _roles(settings)
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
        f"- profile (ranges, null shares, domains learned from): {_md(report.profile or '')}",
        "",
        "## Schema and profile",
        "",
        "| column | type | role | nulls | profile |",
        "|---|---|---|---|---|",
        *(
            f"| `{p.name}` | {table.schema.field(p.name).type} | {roles.get(p.name, 'unused')} "
            f"| {p.nulls:.1%} | {_md(_describe_profile(p))} |"
            for p in profiles
        ),
        "",
        *_target_section(next((p for p in profiles if p.name == ds.target), None), task=ds.task),
        "## Expectations",
        "",
        "| result | expectation | column | observed |",
        "|---|---|---|---|",
        *(
            f"| {_status(r)} | `{r.expectation}` | {_md(r.column or '')} | {_md(r.observed)} |"
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


def _status(r: CheckResult) -> str:
    return "skipped" if r.success is None else "passed" if r.success else "failed"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# Files, through pyarrow.fs: a local folder or a URI -----------------------------------------------


def _write_atomic(location: str, text: str) -> str:
    """Write `text` to a path or URI so that a reader never sees half a file: locally a temp file
    beside it, then a rename over it; on an object store one PUT (atomic there by itself)."""
    fs, path = files.resolve(location)
    local = isinstance(fs, pafs.LocalFileSystem)
    if local:
        path = os.path.abspath(path)  # so that a bare file name has a folder to write beside
    folder = path.rsplit("/", 1)[0]
    fs.create_dir(folder, recursive=True)
    target = f"{folder}/.{path.rsplit('/', 1)[1]}.{uuid.uuid4().hex}.tmp" if local else path
    try:
        with fs.open_output_stream(target) as out:
            out.write(text.encode("utf-8"))
        if local:
            fs.move(target, path)
    except BaseException:
        if local:
            with contextlib.suppress(OSError):
                fs.delete_file(target)
        raise
    return location


def _read_text(location: str) -> str:
    fs, path = files.resolve(location)
    with fs.open_input_stream(path) as stream:
        return bytes(stream.read()).decode("utf-8")


def _exists(location: str) -> bool:
    fs, path = files.resolve(location)
    return bool(fs.get_file_info(path).type == pafs.FileType.File)


# Prefect ------------------------------------------------------------------------------------------


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
    card = dataset_card(table, settings=settings, report=report)
    folder = os.fspath(directory)
    save_suite(suite, files.join(folder, SUITE_FILE))
    write_reports(report, directory=folder, card=card)
    publish_artifacts(report, card=card)
    if not report.success:
        events.emit(
            events.VALIDATION_FAILED, model=settings.dataset.name, payload=failure_payload(report)
        )
        raise ValidationFailed(report)
    return report


def publish_artifacts(report: ValidationReport, *, card: str | None = None) -> None:
    """The report as a Prefect table artifact (and the card as a markdown one)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    table = [
        {
            "result": _status(r),
            "expectation": r.expectation,
            "column": r.column or "",
            "check": r.check,
            "observed": r.observed,
        }
        for r in report.results
    ]
    create_table_artifact(
        table=table,
        key=artifact_key("validation", report.dataset),
        description=f"{report.summary()}. Profile: {report.profile or 'the reference table'}",
    )
    if card is not None:
        create_markdown_artifact(
            markdown=card,
            key=artifact_key("dataset-card", report.dataset),
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


def artifact_key(prefix: str, dataset: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes only."""
    slug = "".join(c if c.isascii() and c.isalnum() else "-" for c in dataset.lower())
    return f"{prefix}-{slug}"
