"""Data validation with Great Expectations (GX 1.x): the first gate of every training run.

    suite = build_suite(reference, settings=settings)          # contract + reference profile
    save_suite(suite, report_root(settings) / fingerprint / SUITE_FILE)   # replayed later
    report = validate(table, suite=suite, settings=settings)      # training data: every check
    report = check_batch(batch, suite=suite, settings=settings)   # production: labels optional
    driftloop validate --data PATH                                # validate_path(), from the CLI

The suite is a plain GX `ExpectationSuite`, saved as its JSON configs. Each expectation carries
`meta = {"check": <problem>, "scope": <scope>}`: the problem it detects (`CHECKS`) and where it
applies (`data`: always; `labels`: only where the target column is there; `training`: only in
`validate`, never on production batches). Built from `settings.dataset` and the reference table:
- every contract column (id, timestamp, features, target) exists and has the reference's type
  kind (integer, float, boolean, string, timestamp);
- nulls per column: at most the reference's null share + `null_tolerance`, none in the target or
  the id (`expect_column_proportion_of_non_null_values_to_be_between`: an aggregate, which GX runs
  in a third of the time of the per-row `expect_column_values_to_not_be_null`);
- numeric features: values inside the reference's [min, max] widened by `range_margin` x span;
  categorical features: values inside the reference's domain (up to `MAX_DOMAIN` values). Both
  allow `unseen_category_share` of the rows outside, so a heavy tail in a big batch is no error;
- the target: present, the right type, no nulls, known classes and at least two of them
  (classification) or inside the widened range (regression);
- ids unique where `dataset.id` is declared and the reference's ids are unique (repeated ids in
  the reference mean the id groups rows, as in `data.split`);
- at least `min_rows` rows;
- no target leakage: one `expect_no_target_leakage` over all features (see below);
- the user's expectations from `settings.validation.expectations`, each a mapping
  `{"type": "<GX expectation name>", "kwargs": {...}, "meta": {...}}` (`meta` optional), e.g.
  `{"type": "expect_column_values_to_be_between", "kwargs": {"column": "age", "min_value": 18}}`.
  `check_user_expectations` rejects an unknown name or bad arguments at settings-load time.

Target leakage is a real GX custom expectation, `ExpectNoTargetLeakage` (a `BatchExpectation`
over a table metric, both registered with GX on first use), whose per-feature scores come from
numpy/pandas in `leakage_score`: |Pearson correlation| with the target (with each class, for
classification), the target-purity of a feature's values (Goodman-Kruskal lambda: 1 when each
value maps to one class), the correlation ratio of a categorical feature with a numeric target,
or, for a high-cardinality text column, the correlation of its values parsed as numbers (the
target smuggled in as strings). A feature leaks when its score reaches `leakage_threshold`; the
failed row names the leaking features. Nonlinear reproductions below the threshold pass.

Columns a check cannot use (a missing or retyped column, no labels in a production
batch) make the check's row "skipped" with the reason, so a schema break fails once, on its
column. Reports: JSON plus a self-rendered HTML table (not GX Data Docs, which want a file
context) and a markdown dataset card, written atomically. `validate_task` wraps it all for
Prefect: artifacts, the `driftloop.validation.failed` event, and `ValidationFailed` to fail the
flow run. GX costs about 30 ms per run plus 3-20 ms per expectation here (see
bench/bench_validation.py); the suite of a 20-column contract has about 80.
"""

from __future__ import annotations

import difflib
import functools
import html
import json
import os
import tempfile
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from tasks import data, events
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
]
Scope = Literal["data", "labels", "training"]
CHECKS: tuple[str, ...] = get_args(Check)
SUITE_FILE, REPORT_JSON, REPORT_HTML, CARD_FILE = (
    "suite.json",
    "validation.json",
    "validation.html",
    "dataset_card.md",
)
LEAKAGE = "expect_no_target_leakage"
MAX_DOMAIN = 1000  # a categorical column with more distinct values gets no domain check
_MAX_LEVELS = 50  # numeric columns with at most this many values are also checked for purity
_MIN_SUPPORT = 20  # rows per value below which a column's purity says nothing
_MAX_CLASSES = 20  # one-vs-rest correlations up to this many classes
_TYPE_LISTS: dict[str, list[str]] = {  # GX type names of the pandas dtypes `to_frame` produces
    "integer": [
        *(f"{s}Int{b}Dtype" for s in ("", "U") for b in (8, 16, 32, 64)),
        *(f"{s}int{b}" for s in ("", "u") for b in (8, 16, 32, 64)),
    ],
    "float": ["float16", "float32", "float64"],
    "boolean": ["BooleanDtype", "bool"],
    "string": ["StringDtype"],
    "timestamp": [f"datetime64[{u}]" for u in ("s", "ms", "us", "ns")],
}
_USER_KEYS = ("type", "kwargs", "meta")
_INTERNAL_KWARGS = {"id", "meta", "notes", "rendered_content", "batch_id", "description"}


class CheckResult(BaseModel):
    """One expectation's outcome; `success` is None where it was skipped (`observed` says why)."""

    expectation: str
    column: str | None
    check: str
    success: bool | None
    observed: str  # one line a person reads
    arguments: dict[str, Any] = {}  # the expectation's kwargs
    details: dict[str, Any] = {}  # GX's result, JSON-safe


class ValidationReport(BaseModel):
    """What one validation found: the verdict, every expectation's row, and which data it was."""

    dataset: str
    mode: Literal["training", "batch"]
    success: bool
    rows: int
    fingerprint: str
    suite: str
    checked_at: datetime
    results: list[CheckResult]
    source: str | None = None
    directory: str | None = None  # where the JSON/HTML report and the card were written

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
            f"{len(ran) - len(self.failures)} of {len(ran)} expectations met"
            + (f"; problems: {', '.join(self.problems)}" if self.failures else "")
        )


def summary(report: ValidationReport) -> str:
    """For people: the one-line verdict, then one line per failed expectation, then the report."""
    lines = [report.summary()]
    lines += [f"  {r.expectation} on {r.column or 'table'}: {r.observed}" for r in report.failures]
    if report.directory is not None:
        lines.append(f"  report: {Path(report.directory) / REPORT_HTML}")
    return "\n".join(lines)


class ValidationFailed(DriftloopError):
    """The data broke its contract. The first line of the message is the verdict, then one line
    per failed expectation (expectation, column, what was observed)."""

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


# Suites: build, save, load ------------------------------------------------------------------------


def build_suite(reference: pa.Table, *, settings: Settings) -> ExpectationSuite:
    """The expectation suite for a data set: its contract, the reference's profile, the user's."""
    gx = _gx()
    ds, cfg = settings.dataset, settings.validation
    _require_columns(reference, columns=_contract_columns(settings), what="reference data")
    profiles = {
        p.name: p
        for p in profile(reference, columns=_contract_columns(settings), top=MAX_DOMAIN + 1)
    }
    configs = [
        *_column_checks(profiles, settings=settings),
        _config(
            "expect_table_row_count_to_be_between",
            "too_few_rows",
            "training",
            min_value=cfg.min_rows,
        ),
        _config(
            LEAKAGE,
            "target_leakage",
            "training",
            features=settings.features.all,
            target=ds.target,
            task=ds.task,
            threshold=cfg.leakage_threshold,
        ),
        *_user_configs(cfg, columns=reference.column_names),
    ]
    meta = {"dataset": ds.name, "reference_rows": reference.num_rows, "target": ds.target}
    return gx.ExpectationSuite(name=f"{ds.name}-contract", expectations=configs, meta=meta)


def save_suite(suite: ExpectationSuite, path: str | os.PathLike[str]) -> Path:
    """Write the suite's expectation configs as JSON (atomically) so it can be replayed later."""
    body = events.jsonable(suite.to_json_dict())
    return _write_atomic(Path(path), json.dumps(body, indent=2, sort_keys=True))


def load_suite(path: str | os.PathLike[str]) -> ExpectationSuite:
    """Read a suite written by `save_suite`."""
    gx = _gx()
    raw = json.loads(Path(path).read_text())
    expectations = [{k: e[k] for k in _USER_KEYS if k in e} for e in raw["expectations"]]
    return gx.ExpectationSuite(name=raw["name"], expectations=expectations, meta=raw.get("meta"))


def suite_configs(suite: ExpectationSuite) -> list[dict[str, Any]]:
    """The suite's expectations as `{"type", "kwargs", "meta"}` dicts, in suite order."""
    return [
        {"type": c.type, "kwargs": dict(c.kwargs), "meta": dict(c.meta or {})}
        for c in (e.configuration for e in suite.expectations)
    ]


def _column_checks(
    profiles: Mapping[str, ColumnProfile], *, settings: Settings
) -> list[dict[str, Any]]:
    ds, cfg = settings.dataset, settings.validation
    out: list[dict[str, Any]] = []
    for column, role in _roles(settings).items():
        p = profiles[column]
        check: Check = "invalid_target" if role == "target" else "schema_break"
        scope: Scope = "labels" if role == "target" else "data"
        out.append(_config("expect_column_to_exist", check, scope, column=column))
        if p.kind in _TYPE_LISTS:
            out.append(
                _config(
                    "expect_column_values_to_be_in_type_list",
                    check,
                    scope,
                    column=column,
                    type_list=_TYPE_LISTS[p.kind],
                    kind=p.kind,
                )
            )
        # The aggregate `proportion_of_non_null` costs GX a third of the per-row `not_be_null`.
        strict = role in ("target", "id")  # no nulls at all
        least = 1.0 if strict else round(1 - p.nulls - cfg.null_tolerance, 6)
        if least > 0:
            out.append(
                _config(
                    "expect_column_proportion_of_non_null_values_to_be_between",
                    "invalid_target" if role == "target" else "missing_values",
                    scope,
                    column=column,
                    min_value=least,
                )
            )
        out.extend(_value_checks(p, role=role, settings=settings))
    if ds.id is not None and profiles[ds.id].distinct == profiles[ds.id].count:
        out.append(
            _config("expect_column_values_to_be_unique", "duplicate_ids", "data", column=ds.id)
        )
    return out


def _value_checks(p: ColumnProfile, *, role: str, settings: Settings) -> list[dict[str, Any]]:
    """Range or domain checks for a feature or the target, from its reference profile."""
    cfg, task_ = settings.validation, settings.dataset.task
    mostly = round(1 - cfg.unseen_category_share, 6)
    if role == "target" and task_ == "classification":
        classes = sorted(v for v, _ in p.top)
        return [
            _config(
                "expect_column_values_to_be_in_set",
                "invalid_target",
                "labels",
                column=p.name,
                value_set=classes,
            ),
            _config(
                "expect_column_unique_value_count_to_be_between",
                "invalid_target",
                "training",
                column=p.name,
                min_value=2,
            ),
        ]
    numeric = role in ("numeric", "target") and p.kind in ("integer", "float") and p.min is not None
    if numeric:
        span = float(p.max) - float(p.min)
        low, high = float(p.min) - cfg.range_margin * span, float(p.max) + cfg.range_margin * span
        check: Check = "invalid_target" if role == "target" else "out_of_range"
        scope: Scope = "labels" if role == "target" else "data"
        return [
            _config(
                "expect_column_values_to_be_between",
                check,
                scope,
                column=p.name,
                min_value=low,
                max_value=high,
                mostly=mostly,
            )
        ]
    known = p.distinct is not None and p.distinct <= MAX_DOMAIN
    if role == "categorical" and p.kind in ("string", "integer") and known:
        domain = sorted(v for v, _ in p.top)
        return [
            _config(
                "expect_column_values_to_be_in_set",
                "unseen_categories",
                "data",
                column=p.name,
                value_set=domain,
                mostly=mostly,
            )
        ]
    return []


def _config(
    type_: str, check: Check, scope: Scope, *, kind: str | None = None, **kwargs: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {"check": check, "scope": scope}
    if kind is not None:
        meta["kind"] = kind
    return {"type": type_, "kwargs": kwargs, "meta": meta}


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


def _contract_columns(settings: Settings) -> list[str]:
    return list(_roles(settings))


def _require_columns(table: pa.Table, *, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise data.DataError(
            f"{what}: the data contract names column(s) {', '.join(map(repr, missing))}, which "
            f"it lacks; columns: {', '.join(table.column_names)}"
        )


# User expectations --------------------------------------------------------------------------------


def check_user_expectations(
    config: ValidationConfig, *, label: str = "validation.expectations"
) -> None:
    """Check `validation.expectations` at settings-load time; errors name `label[i]`.

    Raises:
        ConfigError: an entry is not `{type, kwargs, meta}`, names no GX expectation (the message
            suggests the close name), or GX rejects its arguments (the message names them).
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
    return name, dict(kwargs), dict(meta)


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
    results = _run(table, suite=suite, settings=settings, mode="training")
    return _report(
        table,
        results,
        mode="training",
        suite=suite,
        settings=settings,
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
) -> ValidationReport:
    """Check a production batch against the training suite: data quality, not training fitness.

    Labels may be absent (the target's checks are then skipped); the training-only checks (row
    count, class count, leakage) do not run. `report.problems` names what went wrong:
    `schema_break`, `missing_values`, `unseen_categories`, `out_of_range`, ...
    """
    results = _run(table, suite=suite, settings=settings, mode="batch")
    return _report(
        table,
        results,
        mode="batch",
        suite=suite,
        settings=settings,
        fingerprint=fingerprint,
        source=source,
    )


def validate_path(
    path: str | os.PathLike[str],
    *,
    settings: Settings,
    reports_dir: str | os.PathLike[str] | None = None,
) -> ValidationReport:
    """`driftloop validate --data PATH`: check PATH against the suite of `dataset.source`.

    Writes the suite under `<reports>/<reference fingerprint>/` and the report, its HTML and the
    dataset card under `<reports>/<data fingerprint>/`, where `<reports>` defaults to
    `<home>/reports/<dataset>`. Raises `data.DataError` (one line) when a file cannot be read.
    """
    source = settings.dataset.source
    reference = data.read_table(source)
    same = _same_path(str(path), source)
    table = reference if same else data.read_table(str(path))
    suite = build_suite(reference, settings=settings)
    root = Path(reports_dir) if reports_dir is not None else report_root(settings)
    reference_fp = data.fingerprint(reference)
    fingerprint = reference_fp if same else data.fingerprint(table)
    save_suite(suite, root / reference_fp / SUITE_FILE)
    report = validate(
        table, suite=suite, settings=settings, fingerprint=fingerprint, source=str(path)
    )
    write_reports(
        report,
        directory=root / fingerprint,
        card=dataset_card(table, settings=settings, report=report),
    )
    return report


def report_root(settings: Settings) -> Path:
    """Where a data set's reports live: `<home>/reports/<dataset>`."""
    return Path(settings.home) / "reports" / settings.dataset.name


def _same_path(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a == b
    return Path(a).resolve() == Path(b).resolve()


def _run(
    table: pa.Table,
    *,
    suite: ExpectationSuite,
    settings: Settings,
    mode: Literal["training", "batch"],
) -> list[CheckResult]:
    """Run the suite's applicable expectations in GX; report the others as skipped, with why."""
    configs = suite_configs(suite)
    kinds = {f.name: data.column_kind(f.type) for f in table.schema}
    expected = {c["kwargs"]["column"]: c["meta"]["kind"] for c in configs if "kind" in c["meta"]}
    labelled = settings.dataset.target in kinds
    rows: list[CheckResult | None] = [None] * len(configs)
    runnable = []
    for i, config in enumerate(configs):
        scope = config["meta"].get("scope", "data")
        if mode == "batch" and scope == "training":
            continue
        if "features" in config["kwargs"]:  # leakage: check the features that are intact
            usable = [f for f in config["kwargs"]["features"] if kinds.get(f) == expected.get(f)]
            config = {**config, "kwargs": {**config["kwargs"], "features": usable}}
        reason = _skip_reason(config, kinds=kinds, expected=expected)
        if mode == "batch" and scope == "labels" and not labelled:
            reason = f"skipped: no labels in this batch (no column {settings.dataset.target!r})"
        if reason:
            rows[i] = _result_row(config, success=None, observed=reason)
        else:
            runnable.append({**config, "meta": {**config["meta"], "row": i}})
    for result in _run_gx(to_frame(table), runnable) if runnable else []:
        i = int(result.expectation_config.meta["row"])
        rows[i] = _gx_row({**configs[i], "kwargs": result.expectation_config.kwargs}, result)
    return [r for r in rows if r is not None]


def _skip_reason(
    config: Mapping[str, Any], *, kinds: Mapping[str, str], expected: Mapping[str, str]
) -> str | None:
    """Why an expectation cannot say anything useful here: a missing or retyped column."""
    if config["type"] == "expect_column_to_exist":
        return None
    for column in _columns_of(config["kwargs"]):
        if column not in kinds:
            return f"skipped: column {column!r} is missing"
        if (
            config["type"] != "expect_column_values_to_be_in_type_list"
            and column in expected
            and kinds[column] != expected[column]
        ):
            return (
                f"skipped: column {column!r} holds {kinds[column]} values, not {expected[column]}"
            )
    return None


def _run_gx(frame: pd.DataFrame, configs: list[dict[str, Any]]) -> list[Any]:
    """Validate a frame in GX: pandas source, whole-frame batch, `Batch.validate(suite)`.

    `Batch.validate` runs the suite without the stores a `ValidationDefinition` writes to (they
    serialise the suite and every result: a third of the time on small batches).
    """
    gx = _gx()
    with _GX_LOCK:  # one context per process, and GX contexts are not thread-safe
        source = _context().data_sources.add_or_update_pandas("driftloop")
        asset = source.add_dataframe_asset(f"frame-{uuid.uuid4().hex}")
        try:
            batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(
                batch_parameters={"dataframe": frame}
            )
            suite = gx.ExpectationSuite(name="run", expectations=configs)
            result_format = {"result_format": "BASIC", "partial_unexpected_count": 5}
            return list(batch.validate(suite, result_format=result_format).results)
        finally:
            source.delete_asset(asset.name)


@functools.cache
def _context() -> Any:
    """One in-memory GX context per process: no analytics, progress bars or Data Docs folder."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # GX otherwise calls an outside endpoint
    gx = _gx()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def to_frame(table: pa.Table) -> pd.DataFrame:
    """The pandas frame GX validates: one dtype per type kind, whatever the nulls.

    Integers become int64 (pandas' nullable Int64 where there are nulls), floats and decimals
    float64, booleans bool (nullable boolean with nulls), strings pandas' string dtype, dates and
    timestamps naive UTC datetimes; dictionaries are decoded. Plain numpy dtypes wherever
    possible, because GX checks value ranges vectorised only on those.
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
        mapper[dtype] = pd.StringDtype()
    elif pa.types.is_timestamp(dtype) or pa.types.is_date(dtype):
        dtype = pa.timestamp(dtype.unit if pa.types.is_timestamp(dtype) else "us")
    if dtype != column.type:
        column = column.cast(dtype)
    return column.to_pandas(types_mapper=mapper.get)


def _report(
    table: pa.Table,
    results: list[CheckResult],
    *,
    mode: Literal["training", "batch"],
    suite: ExpectationSuite,
    settings: Settings,
    fingerprint: str | None,
    source: str | None,
) -> ValidationReport:
    return ValidationReport(
        dataset=settings.dataset.name,
        mode=mode,
        success=all(r.success is not False for r in results),
        rows=table.num_rows,
        fingerprint=fingerprint or data.fingerprint(table),
        suite=suite.name,
        checked_at=datetime.now(timezone.utc),
        results=results,
        source=source,
    )


def _result_row(
    config: Mapping[str, Any],
    *,
    success: bool | None,
    observed: str,
    details: dict[str, Any] | None = None,
) -> CheckResult:
    kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
    column = kwargs.get("column") or ", ".join(_columns_of(kwargs)) or None
    return CheckResult(
        expectation=config["type"],
        column=column,
        check=config["meta"].get("check", "user_expectation"),
        success=success,
        observed=observed,
        arguments=events.jsonable(kwargs),
        details=details or {},
    )


def _gx_row(config: Mapping[str, Any], result: Any) -> CheckResult:
    info = result.exception_info or {}
    if info.get("raised_exception"):
        message = str(info.get("exception_message") or "error").strip().splitlines()[0]
        return _result_row(config, success=False, observed=f"error: {message}")
    found = events.jsonable(result.result or {})
    success = bool(result.success)
    observed = _observed(config, found, success=success)
    row = _result_row(config, success=success, observed=observed, details=found)
    if config["type"] == LEAKAGE:  # name the leaking features, not every feature
        leaking = list((found.get("details") or {}).get("leaking") or {})
        row.column = ", ".join(leaking) or None
    return row


def _observed(config: Mapping[str, Any], found: Mapping[str, Any], *, success: bool) -> str:
    """One line saying what GX saw, in the expectation's own terms."""
    type_, kw = config["type"], config["kwargs"]
    allowed = f"allowed {100 * (1 - kw.get('mostly', 1.0)):.2f}%"
    share = f"{found.get('unexpected_percent') or 0:.2f}%"
    examples = _examples(found.get("partial_unexpected_list") or [])
    value = found.get("observed_value")
    if type_ == "expect_column_to_exist":
        return "present" if success else "column is missing"
    if type_ == "expect_column_values_to_be_in_type_list":
        return f"type {value} (expected {config['meta'].get('kind', kw.get('type_list'))})"
    if type_ == "expect_column_values_to_not_be_null":
        return f"{share} nulls ({allowed})"
    if type_ == "expect_column_proportion_of_non_null_values_to_be_between":
        nulls = "?" if value is None else f"{100 * (1 - value):.2f}%"
        return f"{nulls} nulls (allowed {100 * (1 - kw.get('min_value', 0)):.2f}%)"
    if type_ == "expect_column_values_to_be_between":
        bounds = f"[{kw.get('min_value')}, {kw.get('max_value')}]"
        return f"{share} of values outside {bounds} ({allowed}){examples}"
    if type_ == "expect_column_values_to_be_in_set":
        known = f"the {len(kw['value_set'])} known values"
        return f"{share} of values outside {known} ({allowed}){examples}"
    if type_ == "expect_column_values_to_be_unique":
        return f"{found.get('unexpected_count', 0):,} rows share a value{examples}"
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


def _examples(values: Sequence[Any]) -> str:
    unique = list(dict.fromkeys(repr(v) for v in values))[:3]
    return f"; e.g. {', '.join(unique)}" if unique else ""


# Target leakage -----------------------------------------------------------------------------------


def leakage_score(feature: pd.Series, target: pd.Series, *, task: str) -> tuple[float, str]:
    """How closely one feature reproduces the target, 0 (not at all) to 1 (exactly), and how.

    Classification: |correlation| of a numeric feature with each class, and the purity of a
    feature's values (Goodman-Kruskal lambda: the share of the majority-class error that knowing
    the value removes). Regression: |correlation| of a numeric feature, the correlation ratio of a
    categorical one, or, for high-cardinality text, the correlation of its values read as numbers.
    Purity and correlation ratio need `_MIN_SUPPORT` rows per value on average: an id-like column
    is "pure" by construction and says nothing.
    """
    labelled = target.notna().to_numpy()
    x, y = feature[labelled], target[labelled]
    if len(y) < 3:
        return 0.0, "too few labelled rows"
    numeric = pd.api.types.is_numeric_dtype(x.dtype) and not pd.api.types.is_bool_dtype(x.dtype)
    scores: list[tuple[float, str]] = []
    if task == "classification":
        classes = pd.factorize(y, sort=True)[0]
        if numeric:
            scores.append((_class_correlation(_floats(x), classes), "correlation"))
        if (not numeric or _few_levels(x)) and _supported(x):
            scores.append((_purity(x, classes), "purity"))
    elif numeric:
        scores.append((_correlation(_floats(x), _floats(y)), "correlation"))
    elif _supported(x):
        scores.append((_correlation_ratio(x, _floats(y)), "correlation ratio"))
    else:
        parsed = pd.to_numeric(x.astype("string"), errors="coerce")
        if parsed.notna().mean() >= 0.5:
            scores.append(
                (_correlation(_floats(parsed), _floats(y)), "correlation of values read as numbers")
            )
    score, how = max(scores, default=(0.0, "not comparable"))
    return round(float(score), 4), how


def _floats(values: pd.Series) -> np.ndarray:
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


def _few_levels(x: pd.Series) -> bool:
    """At most `_MAX_LEVELS` distinct values (a cheap look at the head first)."""
    return bool(
        x.iloc[:10_000].nunique(dropna=False) <= _MAX_LEVELS
        and x.nunique(dropna=False) <= _MAX_LEVELS
    )


def _supported(x: pd.Series) -> bool:
    """At least `_MIN_SUPPORT` rows per distinct value on average (the head can already say no)."""
    if x.iloc[:10_000].nunique(dropna=False) * _MIN_SUPPORT > len(x):
        return False
    return bool(x.nunique(dropna=False) * _MIN_SUPPORT <= len(x))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return 0.0
    return abs(float(np.corrcoef(a, b)[0, 1]))


def _class_correlation(x: np.ndarray, classes: np.ndarray) -> float:
    k = int(classes.max()) + 1
    if k > _MAX_CLASSES:
        return 0.0
    targets = [1] if k == 2 else range(k)
    return max((_correlation(x, (classes == j).astype(np.float64)) for j in targets), default=0.0)


def _purity(x: pd.Series, classes: np.ndarray) -> float:
    codes, levels = pd.factorize(x, use_na_sentinel=False)
    k = int(classes.max()) + 1
    counts = np.bincount(codes * k + classes, minlength=len(levels) * k).reshape(-1, k)
    correct = int(counts.max(axis=1).sum())  # predicting each value's majority class
    majority, n = int(np.bincount(classes).max()), len(classes)  # predicting one class
    return (correct - majority) / (n - majority) if n > majority else 0.0


def _correlation_ratio(x: pd.Series, y: np.ndarray) -> float:
    keep = np.isfinite(y)
    codes = pd.factorize(x[keep], use_na_sentinel=False)[0]
    y = y[keep]
    if len(y) < 3:
        return 0.0
    counts = np.bincount(codes)
    means = np.bincount(codes, weights=y) / np.maximum(counts, 1)
    total = float(((y - y.mean()) ** 2).sum())
    between = float((counts * (means - y.mean()) ** 2).sum())
    return float(np.sqrt(between / total)) if total > 0 else 0.0


# GX, loaded on first use --------------------------------------------------------------------------


_GX_LOCK = threading.RLock()  # Prefect runs tasks in threads; GX state is process-wide


@functools.cache
def _gx() -> Any:
    """Import GX with its usage analytics off, and register driftloop's leakage expectation."""
    with _GX_LOCK:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no calls to an outside endpoint
        import great_expectations as gx
        from great_expectations.expectations.registry import (
            list_registered_expectation_implementations as registered,
        )

        if LEAKAGE not in registered():
            _register_leakage_expectation()
        return gx


def _register_leakage_expectation() -> None:
    """Define `expect_no_target_leakage` (a GX BatchExpectation) and its metric."""
    from typing import ClassVar

    from great_expectations.core.metric_domain_types import MetricDomainTypes
    from great_expectations.execution_engine.pandas_execution_engine import (
        PandasExecutionEngine,
    )
    from great_expectations.expectations.expectation import BatchExpectation
    from great_expectations.expectations.metrics.metric_provider import metric_value
    from great_expectations.expectations.metrics.table_metric_provider import TableMetricProvider

    class TargetLeakageScores(TableMetricProvider):
        metric_name = "driftloop.target_leakage_scores"
        value_keys = ("features", "target", "task")

        @metric_value(engine=PandasExecutionEngine)
        def _pandas(
            cls,  # noqa: N805 (metric_value makes it a classmethod)
            execution_engine: Any,
            metric_domain_kwargs: dict,
            metric_value_kwargs: dict,
            metrics: dict,
            runtime_configuration: dict,
        ) -> dict[str, tuple[float, str]]:
            frame, _, _ = execution_engine.get_compute_domain(
                domain_kwargs=metric_domain_kwargs, domain_type=MetricDomainTypes.TABLE
            )
            kw = metric_value_kwargs
            target = frame[kw["target"]]
            return {f: leakage_score(frame[f], target, task=kw["task"]) for f in kw["features"]}

    class ExpectNoTargetLeakage(BatchExpectation):
        """Expect no feature to reproduce the target: every leakage score stays below threshold."""

        features: list[str]
        target: str
        task: str  # classification or regression
        threshold: float  # the score at which a feature leaks

        metric_dependencies: ClassVar[tuple[str, ...]] = ("driftloop.target_leakage_scores",)
        success_keys: ClassVar[tuple[str, ...]] = ("features", "target", "task", "threshold")

        def _validate(
            self,
            metrics: dict,
            runtime_configuration: dict | None = None,
            execution_engine: Any = None,
        ) -> dict[str, Any]:
            scores = metrics["driftloop.target_leakage_scores"]
            leaking = {f: s for f, s in scores.items() if s[0] >= self.threshold}
            worst = max(scores.values(), default=(0.0, "no features"))
            return {
                "success": not leaking,
                "result": {
                    "observed_value": worst[0],
                    "details": {
                        "leaking": {f: {"score": s, "method": m} for f, (s, m) in leaking.items()},
                        "scores": {f: s for f, (s, _) in scores.items()},
                    },
                },
            }


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
) -> list[Path]:
    """Write the report as JSON and HTML (and the dataset card) into `directory`, atomically.

    Records the folder on the report (`report.directory`) first, so the JSON says where it lies.
    """
    folder = Path(directory)
    report.directory = str(folder)
    paths = [
        _write_atomic(folder / REPORT_JSON, report.model_dump_json(indent=2)),
        _write_atomic(folder / REPORT_HTML, render_html(report)),
    ]
    if card is not None:
        paths.append(_write_atomic(folder / CARD_FILE, card))
    return paths


def render_html(report: ValidationReport) -> str:
    """A self-contained HTML page: the verdict and one table row per expectation."""
    rows = "\n".join(
        f'<tr class="{_status(r)}"><td>{_status(r)}</td><td>{html.escape(r.expectation)}</td>'
        f"<td>{html.escape(r.column or '')}</td><td>{html.escape(r.check)}</td>"
        f"<td>{html.escape(r.observed)}</td></tr>"
        for r in report.results
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Validation: {html.escape(report.dataset)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}.failed{{background:#fdd}}
.skipped{{color:#888}}</style></head><body>
<h1>Validation of {html.escape(report.dataset)}: {"passed" if report.success else "FAILED"}</h1>
<p>{html.escape(report.summary())}<br>source: {html.escape(report.source or "")}; suite:
{html.escape(report.suite)}; checked at {report.checked_at.isoformat()}</p>
<table><tr><th>result</th><th>expectation</th><th>column</th><th>check</th><th>observed</th></tr>
{rows}
</table></body></html>
"""


def dataset_card(table: pa.Table, *, settings: Settings, report: ValidationReport) -> str:
    """A markdown card for the data: where it came from, its schema and profile, its checks."""
    ds = settings.dataset
    roles = _roles(settings)
    profiles = profile(table)
    lines = [
        f"# Dataset card: {ds.name}",
        "",
        f"- source: `{report.source or ds.source}`",
        f"- fingerprint: `{report.fingerprint}`",
        f"- rows: {table.num_rows:,}; columns: {table.num_columns}",
        f"- task: {ds.task}; target: `{ds.target}`",
        f"- validation: {'passed' if report.success else 'FAILED'} "
        f"({report.checked_at:%Y-%m-%d %H:%M} UTC)",
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
        shown = ", ".join(f"{v} ({c / max(p.count, 1):.1%})" for v, c in p.top)
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


def _write_atomic(path: Path, text: str) -> Path:
    """Write beside the target, then rename over it: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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

    Writes the suite, the JSON/HTML report and the dataset card into `directory` (the data's
    `<home>/reports/<dataset>/<fingerprint>/`), publishes a table artifact (`validation-<dataset>`)
    and the card (`dataset-card-<dataset>`); on failure emits `driftloop.validation.failed` with
    the failed checks and raises `ValidationFailed`.
    """
    report = validate(table, suite=suite, settings=settings, fingerprint=fingerprint, source=source)
    card = dataset_card(table, settings=settings, report=report)
    save_suite(suite, Path(directory) / SUITE_FILE)
    write_reports(report, directory=directory, card=card)
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
        table=table, key=artifact_key("validation", report.dataset), description=report.summary()
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
        "problems": report.problems,
        "failed": failed,
    }


def artifact_key(prefix: str, dataset: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes only."""
    slug = "".join(c if c.isascii() and c.isalnum() else "-" for c in dataset.lower())
    return f"{prefix}-{slug}"
