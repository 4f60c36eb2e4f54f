"""Row by row: the rows that make a batch fail its checks, and values far outside the reference.

    bounds = outlier_bounds(reference, columns=features.numeric, spans=cfg.outlier_spans)
    mask, found = find_outliers(window, bounds)     # found.rows, found.share, found.columns
    rows = failing_rows(labelled, report=check_batch(labelled, ...), bounds=bounds)
    rows.keep, rows.reasons                         # the rows that may join training, and why not

A batch check says which checks a batch fails; `failing_rows` names the rows that make it fail:
the nulls of a column with too many, the values outside a range or a domain that too many left,
every row where a column is missing or retyped. An outlier (a number more than `spans` reference
spans outside the reference's range, or not finite) fails its row whatever the batch: one such
value would move a standardisation or a drift score by itself, while the batch checks, which
allow a share of values outside the range, let a handful of them through.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks import data
from tasks.validation.results import ValidationReport
from tasks.validation.suite import DOMAINS, NULLS, RANGES

Bounds = dict[str, tuple[float, float]]  # numeric column -> (low, high) beyond which is an outlier


@dataclass(frozen=True)
class Outliers:
    """Rows with a value far outside the reference's range, per column."""

    rows: int  # rows with at least one
    total: int  # rows looked at
    columns: dict[str, int] = field(default_factory=dict)  # column -> rows with one there
    spans: float = 0.0
    limit: float = 1.0  # the share of rows past which they are a problem (a broken feed)

    @property
    def share(self) -> float:
        return self.rows / self.total if self.total else 0.0

    @property
    def problem(self) -> bool:
        """More than `limit` of the rows: a broken feed, not a stray value."""
        return self.share > self.limit

    def describe(self) -> str:
        """One line: how many, which columns, what an outlier is."""
        if not self.rows:
            return "no outliers"
        columns = ", ".join(f"{c} ({n})" for c, n in self.columns.items())
        return (
            f"{self.rows:,} row(s) ({self.share:.2%}) with values more than {self.spans:g} "
            f"reference spans outside its range: {columns}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": "outliers",
            "rows": self.rows,
            "share": self.share,
            "columns": dict(self.columns),
            "problem": self.problem,
            "summary": self.describe(),
        }


@dataclass(frozen=True)
class RowFailures:
    """Which rows pass, and for the others the check (and column) that failed them."""

    keep: np.ndarray  # bool per row
    reasons: dict[str, int]  # "missing_values: tenure" -> rows it fails (a row may have several)

    @property
    def dropped(self) -> int:
        return int((~self.keep).sum())

    @property
    def share(self) -> float:
        return self.dropped / len(self.keep) if len(self.keep) else 0.0

    def describe(self) -> str:
        if not self.dropped:
            return "every row passes"
        worst = sorted(self.reasons.items(), key=lambda kv: -kv[1])
        shown = "; ".join(f"{why}: {n:,} rows" for why, n in worst[:4])
        return f"{self.dropped:,} of {len(self.keep):,} rows ({self.share:.1%}) fail: {shown}"


def outlier_bounds(reference: pa.Table, *, columns: Sequence[str], spans: float) -> Bounds:
    """(low, high) per numeric column of `reference`: its range widened by `spans` times its
    span (by `spans` times its magnitude, at least 1, where every value is the same)."""
    bounds: Bounds = {}
    for name in columns:
        if name not in reference.column_names:
            continue
        if data.column_kind(reference.schema.field(name).type) not in ("integer", "float"):
            continue
        values = _floats(reference[name])
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        low, high = float(values.min()), float(values.max())
        span = high - low or max(abs(high), 1.0)
        bounds[name] = (low - spans * span, high + spans * span)
    return bounds


def find_outliers(
    table: pa.Table, bounds: Mapping[str, tuple[float, float]], *, spans: float, limit: float = 1.0
) -> tuple[np.ndarray, Outliers]:
    """The rows of `table` with an outlier (bool mask), and the count per column; past `limit`
    of the rows they are a problem."""
    rows = np.zeros(table.num_rows, dtype=bool)
    columns: dict[str, int] = {}
    for name, far in _outliers_by_column(table, bounds).items():
        columns[name] = int(far.sum())
        rows |= far
    found = Outliers(
        rows=int(rows.sum()), total=table.num_rows, columns=columns, spans=spans, limit=limit
    )
    return rows, found


def _outliers_by_column(
    table: pa.Table, bounds: Mapping[str, tuple[float, float]]
) -> dict[str, np.ndarray]:
    """Column -> its rows with an outlier, for the columns that have any."""
    found = {}
    for name, (low, high) in bounds.items():
        if name not in table.column_names or table.num_rows == 0:
            continue
        if data.column_kind(table.schema.field(name).type) not in ("integer", "float"):
            continue
        values = _floats(table[name])
        with np.errstate(invalid="ignore"):  # null (NaN here) is a missing value, not an outlier
            far = ~np.isnan(values) & ((values < low) | (values > high) | ~np.isfinite(values))
        if far.any():
            found[name] = far
    return found


def failing_rows(
    table: pa.Table, *, report: ValidationReport, bounds: Mapping[str, tuple[float, float]]
) -> RowFailures:
    """The rows that break the checks `report` (a batch check of `table`) failed, plus the
    rows with an outlier. A check that cannot tell rows apart (a missing or retyped column, a
    user's expectation) fails every row."""
    n = table.num_rows
    reasons: dict[str, np.ndarray] = {}
    for failure in report.failures:
        column = failure.column
        why = f"{failure.check}: {column}" if column else failure.check
        reasons[why] = reasons.get(why, np.zeros(n, dtype=bool)) | _rows_of(table, failure)
    for name, far in _outliers_by_column(table, bounds).items():
        reasons[f"outliers: {name}"] = far
    bad = np.zeros(n, dtype=bool)
    for mask in reasons.values():
        bad |= mask
    counts = {why: int(mask.sum()) for why, mask in reasons.items() if mask.any()}
    return RowFailures(keep=~bad, reasons=counts)


def _rows_of(table: pa.Table, failure: Any) -> np.ndarray:
    """The rows of `table` that break one failed check (every row where it cannot tell)."""
    n, column = table.num_rows, failure.column
    everything = np.ones(n, dtype=bool)
    if column is None or column not in table.column_names:
        return everything
    values = table[column]
    if failure.expectation == NULLS:
        return np.asarray(values.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    spec = (failure.arguments.get({RANGES: "ranges", DOMAINS: "value_sets"}.get(
        failure.expectation, ""), {}) or {}).get(column)  # fmt: skip
    if failure.expectation == RANGES and spec is not None:
        x = _floats(values)
        with np.errstate(invalid="ignore"):
            return (x < spec["min_value"]) | (x > spec["max_value"])
    if failure.expectation == DOMAINS and spec is not None:
        known = pa.array(spec["value_set"]).cast(pa.string())
        text = pc.cast(values, pa.string())
        outside = pc.and_(pc.is_valid(text), pc.invert(pc.is_in(text, value_set=known)))
        return np.asarray(outside.to_numpy(zero_copy_only=False), dtype=bool)
    return everything


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    """float64 values, NaN for nulls (inf stays inf)."""
    return np.asarray(
        pc.fill_null(pc.cast(column, pa.float64()), np.nan).to_numpy(), dtype=np.float64
    )
