"""`generate()`: arguments checked, columns drawn, the scenario applied, the table assembled.

Also `write_parquet` (atomic local write) and `example_dataset_config` (a driftloop.yaml block).
"""

import os
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.synthetic.columns import (
    CATEGORIES,
    FEATURES,
    TARGETS,
    Task,
    column_streams,
    draw_event_times,
    draw_ids,
    draw_null_masks,
)
from tasks.synthetic.scenarios import (
    MISSING_SHARE,
    SCENARIOS,
    SCHEMA_BREAKS,
    UNSEEN_SHARE,
    break_schema,
    inject_unseen,
    scenario_columns,
    scenario_spec,
)
from tasks.synthetic.targets import draw_columns, draw_label_shifted

_MAX_ROWS = 100_000_000


def generate(
    *,
    rows: int,
    seed: int = 0,
    task: Task = "classification",
    scenario: str = "clean",
    start: datetime | None = None,
    window_days: float = 90.0,
    severity: float = 1.0,
    features: Sequence[str] | None = None,
    kind: str | None = None,
) -> pa.Table:
    """Generate a churn batch (`churned`) or a spend batch (`next_month_spend`) as a pyarrow Table.

    Args:
        rows: number of rows.
        seed: non-negative seed; the same arguments always give the same table.
        task: `classification` (target `churned`, int64 0/1, ~20% positives) or `regression`
            (target `next_month_spend`, float64).
        scenario: one of `SCENARIOS` (see the `tasks.synthetic` docstring).
        start: start of the `event_time` window (naive means UTC); default 2026-01-01 UTC.
        window_days: length of the `event_time` window.
        severity: strength of the scenario; 1.0 is the documented default magnitude.
        features: columns the scenario acts on (covariate_shift, unseen_categories,
            missing_spike, schema_break); defaults in `DEFAULT_FEATURES`.
        kind: `schema_break` only: `drop`, `rename` or `retype` (default `drop`).

    Raises:
        ValueError: an unknown scenario, task, kind or column, or arguments out of range.
    """
    _check_args(
        rows=rows,
        seed=seed,
        task=task,
        scenario=scenario,
        window_days=window_days,
        severity=severity,
        kind=kind,
    )
    cols = scenario_columns(scenario, features, kind=kind)
    streams = column_streams(seed)
    if scenario == "prior_shift":
        data = draw_label_shifted(rows=rows, seed=seed, task=task, severity=severity)
    else:
        data = draw_columns(
            rows=rows, streams=streams, task=task, spec=scenario_spec(scenario, severity, cols)
        )
        data["customer_id"] = draw_ids(streams["customer_id"], np.arange(rows))
    data["event_time"] = draw_event_times(
        streams["event_time"], rows, start=start, days=window_days
    )
    spike = dict.fromkeys(cols, MISSING_SHARE * severity) if scenario == "missing_spike" else {}
    masks = draw_null_masks(streams, rows, spike=spike)
    dictionaries = {name: list(values) for name, values in CATEGORIES.items()}
    if scenario == "unseen_categories":
        inject_unseen(data, dictionaries, streams["scenario"], cols, share=UNSEEN_SHARE * severity)
    table = _to_table(data, masks, dictionaries, target=TARGETS[task])
    if scenario == "schema_break":
        table = break_schema(table, column=cols[0], kind=kind or "drop")
    return table


def example_dataset_config(task: Task = "classification") -> dict[str, object]:
    """The `dataset:` block of a driftloop.yaml for this data; features are left to inference."""
    name = "churn" if task == "classification" else "spend"
    return {
        "name": name,
        "source": f"data/{name}.parquet",
        "target": TARGETS[task],
        "task": task,
        "id": "customer_id",
        "timestamp": "event_time",
        "slices": ["contract"],
    }


def write_parquet(table: pa.Table, path: str | os.PathLike[str]) -> Path:
    """Write `table` to a local Parquet file atomically: a temp file beside it, then a rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _check_args(
    *,
    rows: int,
    seed: int,
    task: str,
    scenario: str,
    window_days: float,
    severity: float,
    kind: str | None,
) -> None:
    """Reject arguments that would otherwise give silently wrong data."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; allowed: {', '.join(SCENARIOS)}")
    if task not in TARGETS:
        raise ValueError(f"unknown task {task!r}; allowed: {', '.join(TARGETS)}")
    if not 0 <= rows <= _MAX_ROWS:
        raise ValueError(f"rows must be between 0 and {_MAX_ROWS}, got {rows}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if not window_days > 0:
        raise ValueError(f"window_days must be positive, got {window_days}")
    if not np.isfinite(severity):
        raise ValueError(f"severity must be finite, got {severity}")
    share = {"unseen_categories": UNSEEN_SHARE, "missing_spike": MISSING_SHARE}.get(scenario)
    if share is not None and not 0 <= share * severity <= 1:
        raise ValueError(
            f"{scenario}: severity {severity} gives a row share of {share * severity:g}"
        )
    if kind is not None and scenario != "schema_break":
        raise ValueError(f"kind applies to scenario 'schema_break' only, not {scenario!r}")
    if kind is not None and kind not in SCHEMA_BREAKS:
        raise ValueError(f"unknown schema_break kind {kind!r}; allowed: {', '.join(SCHEMA_BREAKS)}")


def _to_table(
    data: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    dictionaries: Mapping[str, list[str]],
    *,
    target: str,
) -> pa.Table:
    """Assemble the table: strings decoded from integer codes in C++, never in a Python loop."""
    digits = pc.utf8_lpad(pc.cast(pa.array(data["customer_id"]), pa.string()), width=9, padding="0")
    columns: dict[str, pa.Array] = {
        "customer_id": pc.binary_join_element_wise("C", digits, ""),
        "event_time": pa.array(data["event_time"], type=pa.timestamp("us", tz="UTC")),
    }
    for name in FEATURES:
        mask = masks.get(name)
        if name in dictionaries:
            codes = pa.array(data[name], mask=mask)
            labels = pa.DictionaryArray.from_arrays(codes, pa.array(dictionaries[name]))
            columns[name] = labels.cast(pa.string())
        else:
            columns[name] = pa.array(data[name], mask=mask)
    columns[target] = pa.array(data[target])
    return pa.table(columns)
