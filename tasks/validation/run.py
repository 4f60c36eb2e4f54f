"""Running a suite in GX: on training data (`validate`) or on a production batch (`check_batch`).

Columns a check cannot use (a missing or retyped column, no labels in a production batch) make
their rows "skipped" with the reason, so a schema break fails once, on its column. Production
batches are judged for data quality, not drift: ranges there allow `validation.batch_range_share`
of the values outside (a covariate shift pushes some past the reference's range), and only the
labels that have arrived are checked. See bench/bench_validation.py for what GX costs.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from tasks import data, expectations
from tasks.validation.results import CheckResult, Mode, ValidationReport, gx_rows, result_row
from tasks.validation.suite import (
    CLASS_COUNT,
    COLUMNS,
    KINDS,
    LEAKAGE,
    NULLS,
    PER_COLUMN,
    RANGES,
    UNIQUE,
    suite_configs,
)

if TYPE_CHECKING:
    from great_expectations.core.expectation_suite import ExpectationSuite

    from tasks.settings import DatasetConfig, Settings

_COUNTS_VALUES = (UNIQUE, CLASS_COUNT)  # skipped on a table with no rows
_TYPE_CHECKS = {"expect_column_values_to_be_in_type_list", "expect_column_values_to_be_of_type"}


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
        dataset=settings.dataset,
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
        dataset=settings.dataset,
        mode="batch",
        range_share=range_share,
        fingerprint=fingerprint,
        source=source,
    )


def _report(
    table: pa.Table,
    *,
    suite: ExpectationSuite,
    dataset: DatasetConfig,
    mode: Mode,
    fingerprint: str | None,
    source: str | None,
    range_share: float = 0.0,
) -> ValidationReport:
    """Run the suite (`_run`) and wrap its rows, verdict and GX's result as the report."""
    rows, result = _run(
        table, suite=suite, target=dataset.target, mode=mode, range_share=range_share
    )
    report = ValidationReport(
        dataset=dataset.name,
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


def _run(
    table: pa.Table,
    *,
    suite: ExpectationSuite,
    target: str,
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
        target=target,
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
        rows[i][:0] = gx_rows(ran, found, target=target)
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
                return None, [result_row(config, column=self.target, success=None, observed=reason)]
            features = [f for f in kw["features"] if self.reason(f) is None]
            return {**config, "kwargs": {**kw, "features": features}}, []
        if type_ == "expect_column_to_exist":  # a missing column is what it looks for
            return config, []
        if type_ in _COUNTS_VALUES and self.rows == 0:  # the row count says it once
            return None, [result_row(config, success=None, observed="skipped: no rows")]
        for column in expectations.columns_of(kw):
            reason = self.reason(column, kind_matters=type_ not in _TYPE_CHECKS)
            if reason is not None:
                return None, [result_row(config, success=None, observed=reason)]
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
        return result_row(
            config,
            column=column,
            success=None,
            observed=reason or self.reason(column) or "skipped",
            target=self.target,
        )


# GX, on one in-memory context per process ---------------------------------------------------------


def _run_gx(frame: pd.DataFrame, configs: list[dict[str, Any]], *, name: str) -> Any:
    """Validate a frame in GX: `Batch.validate(suite)` on one cached whole-frame batch definition.

    `Batch.validate` runs the suite without the stores a `ValidationDefinition` writes to (they
    serialise the suite and every result), and reusing one data asset saves adding and deleting
    one per run.
    """
    gx = expectations.load_gx()
    with expectations.GX_LOCK:  # one context per process, and GX contexts are not thread-safe
        batch = _batch_definition().get_batch(batch_parameters={"dataframe": frame})
        suite = gx.ExpectationSuite(name=name, expectations=configs)
        result_format = {"result_format": "BASIC", "partial_unexpected_count": 5}
        return batch.validate(suite, result_format=result_format)


@functools.cache
def _context() -> Any:
    """One in-memory GX context per process: no analytics, progress bars or Data Docs folder."""
    gx = expectations.load_gx()  # sets GX_ANALYTICS_ENABLED=false before GX is imported
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
    """The one pandas data asset every run validates its frame through (under `GX_LOCK`)."""
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
