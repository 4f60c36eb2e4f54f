"""driftloop's own Great Expectations expectations: table-level checks over many columns at once.

A GX expectation costs about 5 ms however few rows it sees, so instead of one expectation per
column these cover every column in one, with one result row per column in driftloop's report:

    expect_column_kinds_to_match           kinds:      {column: [allowed kinds]}
    expect_column_null_shares_to_be_at_most max_shares: {column: share}
    expect_column_values_to_be_in_ranges   ranges:     {column: {min_value, max_value, mostly}}
    expect_column_values_to_be_in_sets     value_sets: {column: {value_set, mostly}}
    expect_no_target_leakage               features, target, task, threshold (tasks/leakage.py)

Each is a GX `BatchExpectation` over a GX table metric computed on the pandas frame, vectorised.
`load_gx()` imports GX (analytics off) and `register()`s them in GX's registry, once per process;
this module imports GX only inside its functions, so importing driftloop stays cheap.

The user's own expectations (`validation.expectations`: `{"type", "kwargs", "meta"}` entries) are
checked here too, by GX itself: `check_user_expectations` at settings-load time, `user_expectations`
when a suite is built. A bad entry raises `ExpectationError` naming `<label>[i]`; tasks.settings
and tasks.validation (above this module) turn it into a `ConfigError` with the same text.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import threading
from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from tasks.errors import DriftloopError
from tasks.leakage import Target

KINDS = "expect_column_kinds_to_match"
NULLS = "expect_column_null_shares_to_be_at_most"
RANGES = "expect_column_values_to_be_in_ranges"
DOMAINS = "expect_column_values_to_be_in_sets"
LEAKAGE = "expect_no_target_leakage"
# the per-column expectations and the kwarg that maps each column to what is expected of it
PER_COLUMN: dict[str, str] = {
    KINDS: "kinds",
    NULLS: "max_shares",
    RANGES: "ranges",
    DOMAINS: "value_sets",
}
USER_KEYS = ("type", "kwargs", "meta")  # what a user's expectation entry (and a saved one) holds
_INTERNAL_KWARGS = {"id", "meta", "notes", "rendered_content", "batch_id", "description"}
GX_LOCK = threading.RLock()  # Prefect runs tasks in threads; GX state is process-wide


class ExpectationError(DriftloopError, ValueError):
    """A user's expectation is wrong; the one-line message names the entry and what is wrong."""


@functools.cache
def load_gx() -> Any:
    """Import GX with its usage analytics off, and register driftloop's expectations."""
    with GX_LOCK:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no calls to an outside endpoint
        import great_expectations as gx
        from great_expectations.expectations.registry import (
            list_registered_expectation_implementations as registered,
        )

        if LEAKAGE not in registered():
            register()
        return gx


# GX registration ----------------------------------------------------------------------------------


def register() -> None:
    """Define driftloop's GX expectations (BatchExpectations over table metrics) in GX's
    registry. Once per process: the caller holds GX's lock and checks they are not there yet."""
    from great_expectations.expectations.expectation import BatchExpectation

    _table_metric("driftloop.column_kinds", ("kinds",), _kinds_found)
    _table_metric("driftloop.null_shares", ("max_shares",), _null_shares)
    _table_metric("driftloop.outside_ranges", ("ranges",), _outside_ranges)
    _table_metric("driftloop.outside_sets", ("value_sets",), _outside_sets)
    _table_metric(
        "driftloop.target_leakage_scores", ("features", "target", "task"), _leakage_scores
    )

    class PerColumnExpectation(BatchExpectation):
        """Many columns, each judged on its own: success when every column passes. A subclass
        declares one success key (a map: column -> what is expected of it), the one metric that
        measures every column, and `judge`; GX registers it by its class name."""

        @abstractmethod
        def judge(self, found: Any, expected: Any) -> tuple[bool, str]:
            """One column: what was measured and what was expected -> (passed, one line)."""

        def _validate(
            self,
            metrics: dict,
            runtime_configuration: dict | None = None,
            execution_engine: Any = None,
        ) -> dict[str, Any]:
            (metric,), (key,) = self.metric_dependencies, self.success_keys
            found = metrics[metric]
            columns = {}
            for column, expected in getattr(self, key).items():
                ok, line = self.judge(found[column], expected)
                columns[column] = {"success": ok, "observed": line, "measured": found[column]}
            failed = [f"{c}: {v['observed']}" for c, v in columns.items() if not v["success"]]
            return {
                "success": not failed,
                "result": {
                    # what GX's HTML page shows: the failed columns, or that all passed
                    "observed_value": "; ".join(failed) or f"all {len(columns)} columns pass",
                    "details": {"columns": columns},
                },
            }

    class ExpectColumnKindsToMatch(PerColumnExpectation):
        """Expect each column to hold values of its type kind (integer, float, string, ...)."""

        kinds: dict[str, list[str]]
        description: str | None = f"{KINDS}: each contract column has its type kind"
        metric_dependencies: ClassVar[tuple[str, ...]] = ("driftloop.column_kinds",)
        success_keys: ClassVar[tuple[str, ...]] = ("kinds",)

        def judge(self, found: Any, expected: Any) -> tuple[bool, str]:
            return found in expected, f"type {found} (expected {' or '.join(expected)})"

    class ExpectColumnNullSharesToBeAtMost(PerColumnExpectation):
        """Expect each column's share of nulls to stay at or below its limit."""

        max_shares: dict[str, float]
        description: str | None = f"{NULLS}: each column's null share stays within its limit"
        metric_dependencies: ClassVar[tuple[str, ...]] = ("driftloop.null_shares",)
        success_keys: ClassVar[tuple[str, ...]] = ("max_shares",)

        def judge(self, found: Any, expected: Any) -> tuple[bool, str]:
            return found <= expected, f"{100 * found:.2f}% nulls (allowed {100 * expected:.2f}%)"

    class ExpectColumnValuesToBeInRanges(PerColumnExpectation):
        """Expect each column's values inside [min_value, max_value], `mostly` of them."""

        ranges: dict[str, dict[str, float]]
        description: str | None = f"{RANGES}: each numeric column's values lie inside its range"
        metric_dependencies: ClassVar[tuple[str, ...]] = ("driftloop.outside_ranges",)
        success_keys: ClassVar[tuple[str, ...]] = ("ranges",)

        def judge(self, found: Any, expected: Any) -> tuple[bool, str]:
            bounds = f"[{expected['min_value']:.6g}, {expected['max_value']:.6g}]"
            return _judge_share(found, expected, what=f"values outside {bounds}")

    class ExpectColumnValuesToBeInSets(PerColumnExpectation):
        """Expect each column's values inside its value_set, `mostly` of them."""

        value_sets: dict[str, dict[str, Any]]
        description: str | None = (
            f"{DOMAINS}: each categorical column's values lie inside its known values"
        )
        metric_dependencies: ClassVar[tuple[str, ...]] = ("driftloop.outside_sets",)
        success_keys: ClassVar[tuple[str, ...]] = ("value_sets",)

        def judge(self, found: Any, expected: Any) -> tuple[bool, str]:
            known = f"the {len(expected['value_set'])} known values"
            return _judge_share(found, expected, what=f"values outside {known}")

    class ExpectNoTargetLeakage(BatchExpectation):
        """Expect no feature to reproduce the target: every leakage score stays below threshold."""

        features: list[str]
        target: str
        task: str  # classification or regression
        threshold: float  # the score at which a feature leaks
        description: str | None = f"{LEAKAGE}: no feature reproduces the target"

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
            named = "; ".join(f"{f}: {m} {s}" for f, (s, m) in leaking.items())
            return {
                "success": not leaking,
                "result": {
                    "observed_value": named or worst[0],
                    "details": {
                        "leaking": {f: {"score": s, "method": m} for f, (s, m) in leaking.items()},
                        "scores": {f: s for f, (s, _) in scores.items()},
                    },
                },
            }


def _table_metric(
    name: str, keys: tuple[str, ...], compute: Callable[[pd.DataFrame, Mapping[str, Any]], Any]
) -> None:
    """Register a GX table metric that `compute(frame, value_kwargs)` works out on pandas."""
    from great_expectations.core.metric_domain_types import MetricDomainTypes
    from great_expectations.execution_engine.pandas_execution_engine import (
        PandasExecutionEngine,
    )
    from great_expectations.expectations.metrics.metric_provider import metric_value
    from great_expectations.expectations.metrics.table_metric_provider import TableMetricProvider

    class Metric(TableMetricProvider):
        metric_name = name
        value_keys = keys

        @metric_value(engine=PandasExecutionEngine)
        def _pandas(
            cls,  # noqa: N805 (metric_value makes it a classmethod)
            execution_engine: Any,
            metric_domain_kwargs: dict,
            metric_value_kwargs: dict,
            metrics: dict,
            runtime_configuration: dict,
        ) -> Any:
            frame, _, _ = execution_engine.get_compute_domain(
                domain_kwargs=metric_domain_kwargs, domain_type=MetricDomainTypes.TABLE
            )
            return compute(frame, metric_value_kwargs)


# What they measure (pandas, vectorised) ---------------------------------------------------------


def _kinds_found(frame: pd.DataFrame, kw: Mapping[str, Any]) -> dict[str, str]:
    return {c: frame_kind(frame[c].dtype) for c in kw["kinds"]}


def _null_shares(frame: pd.DataFrame, kw: Mapping[str, Any]) -> dict[str, float]:
    rows = max(len(frame), 1)
    return {c: int(frame[c].isna().sum()) / rows for c in kw["max_shares"]}


def _outside_ranges(frame: pd.DataFrame, kw: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for column, spec in kw["ranges"].items():
        x = frame[column].to_numpy(dtype=np.float64, na_value=np.nan)
        outside = (x < spec["min_value"]) | (x > spec["max_value"])  # NaN compares False
        out[column] = _counts(int(np.isfinite(x).sum()), outside, frame[column])
    return out


def _outside_sets(frame: pd.DataFrame, kw: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for column, spec in kw["value_sets"].items():
        x = frame[column]
        outside = (x.notna() & ~x.isin(spec["value_set"])).to_numpy(dtype=bool)
        out[column] = _counts(int(x.notna().sum()), outside, x)
    return out


def _counts(valid: int, outside: np.ndarray, values: pd.Series) -> dict[str, Any]:
    examples = values.iloc[np.flatnonzero(outside)[:20]].tolist()  # enough for 3 distinct ones
    return {"valid": valid, "outside": int(outside.sum()), "examples": examples}


def _leakage_scores(frame: pd.DataFrame, kw: Mapping[str, Any]) -> dict[str, tuple[float, str]]:
    target = Target(frame[kw["target"]], task=kw["task"])
    return {f: target.score(frame[f]) for f in kw["features"]}


def _judge_share(
    found: Mapping[str, Any], spec: Mapping[str, Any], *, what: str
) -> tuple[bool, str]:
    """Ranges and domains: the share of valid values outside, against the share allowed."""
    share = found["outside"] / found["valid"] if found["valid"] else 0.0
    allowed = 1 - spec.get("mostly", 1.0)
    shown = examples(found["examples"])
    return (
        share <= allowed + 1e-12,
        f"{100 * share:.2f}% of {what} (allowed {100 * allowed:.2f}%){shown}",
    )


def frame_kind(dtype: Any) -> str:
    """The type kind (as `data.column_kind` names them) of a column of a `to_frame` frame."""
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "integer"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    if isinstance(dtype, pd.StringDtype):
        return "string"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "timestamp"
    return "other"


def examples(values: Sequence[Any]) -> str:
    """Up to three distinct offending values, for a report line ("; e.g. 250, 251")."""
    unique = list(dict.fromkeys(repr(v) for v in values))[:3]
    return f"; e.g. {', '.join(unique)}" if unique else ""


# The user's expectations --------------------------------------------------------------------------


def check_user_expectations(
    entries: Sequence[Mapping[str, Any]], *, label: str = "validation.expectations"
) -> None:
    """Check the user's expectation entries at settings-load time; errors name `label[i]`.

    Raises:
        ExpectationError: an entry is not `{type, kwargs, meta}`, names no GX expectation (the
            message suggests the close name), GX rejects its arguments (the message names them),
            a regex does not compile, or `min_value` is above `max_value`.
    """
    if entries:  # GX takes seconds to import: only when there is something to check
        user_expectations(entries, columns=None, label=label)


def user_expectations(
    entries: Sequence[Mapping[str, Any]],
    *,
    columns: Sequence[str] | None,
    label: str = "validation.expectations",
) -> list[dict[str, Any]]:
    """The entries as `{"type", "kwargs", "meta"}` configs, each checked by GX (as
    `check_user_expectations` does); with `columns`, each column an entry names must be one.

    Raises:
        ExpectationError: as `check_user_expectations`, or a named column is not in `columns`.
    """
    load_gx()
    from great_expectations.expectations.registry import list_registered_expectation_implementations

    known = sorted(list_registered_expectation_implementations())
    out = []
    for i, entry in enumerate(entries):
        where = f"{label}[{i}]"
        name, kwargs, meta = _user_entry(entry, where=where, known=known)
        for column in columns_of(kwargs) if columns is not None else ():
            if column not in (columns or ()):
                hint = _hint(column, columns or ())
                raise ExpectationError(
                    f"{where} ({name}): column {column!r} is not in the data{hint}"
                )
        out.append({"type": name, "kwargs": kwargs, "meta": meta})
    return out


def columns_of(kwargs: Mapping[str, Any]) -> list[str]:
    """The columns an expectation's arguments name."""
    names = [kwargs.get(k) for k in ("column", "column_A", "column_B", "target")]
    names += [*(kwargs.get("column_list") or []), *(kwargs.get("features") or [])]
    names += [*(kwargs.get("column_set") or [])]
    for key in PER_COLUMN.values():
        names += list(kwargs.get(key) or {})
    return [n for n in names if isinstance(n, str)]


def _user_entry(
    entry: Mapping[str, Any], *, where: str, known: Sequence[str]
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """One `{type, kwargs, meta}` entry, checked by GX itself: the expectation's own model."""
    from great_expectations.expectations.registry import get_expectation_impl

    for key in entry:
        if key not in USER_KEYS:
            hint = _hint(key, USER_KEYS)
            raise ExpectationError(
                f"{where}: unknown key {key!r}{hint}; allowed: type, kwargs, meta"
            )
    name, kwargs, meta = entry.get("type"), entry.get("kwargs", {}), entry.get("meta", {})
    if not isinstance(name, str):
        raise ExpectationError(
            f"{where}.type: required: the name of a GX expectation, "
            "e.g. expect_column_values_to_be_between"
        )
    if name not in known:
        raise ExpectationError(
            f"{where}.type: unknown expectation {name!r}{_hint(name, known)}; "
            "see https://greatexpectations.io/expectations/"
        )
    if not isinstance(kwargs, Mapping) or not isinstance(meta, Mapping):
        raise ExpectationError(f"{where} ({name}): kwargs and meta must be mappings")
    impl = get_expectation_impl(name)
    try:
        impl(**kwargs)
    except (ValueError, TypeError) as exc:  # GX raises pydantic (v1) ValidationErrors
        raise ExpectationError(f"{where} ({name}): {_describe_gx_error(exc, impl)}") from None
    problem = _value_problem(kwargs)
    if problem is not None:  # GX itself would only fail when the suite runs
        raise ExpectationError(f"{where} ({name}): {problem}")
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
