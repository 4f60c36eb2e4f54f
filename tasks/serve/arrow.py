"""Arrow IPC for batch clients: `/predict` and `/feedback` take and give
`application/vnd.apache.arrow.stream` beside JSON (the default).

    columns = features(read(body), schemas)        # one column per feature, validated
    body = answers_stream(ids, out, scorer)        # request_id, prediction, probability_<class>
    pairs = labels(read(body), schemas)            # request_id, label (or the target's name)

The rules are JSON's, checked column by column: every feature and nothing else; numbers finite
and within float32's range (integers and floats; null: missing); categories as strings (or
booleans and integers, read as the text the vocabulary holds) no longer than their limit; at
least one row and at most `serving.max_records`. A refusal is the same `BadRequest` naming the
field (`records.tenure: ...`). A 1,000-record request carries ~50 KB of Arrow instead of ~0.5 MB
of JSON each way, and no per-record parsing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.serve.schema import FLOAT32_MAX, MAX_ID_LENGTH, BadRequest, Columns, Schemas
from tasks.serve.scoring import Scorer

ARROW = "application/vnd.apache.arrow.stream"
REQUEST_ID, PREDICTION, PROBABILITY = "request_id", "prediction", "probability_"


def wants_arrow(content_type: str | None) -> bool:
    """Whether a Content-Type (or Accept) header names the Arrow stream format."""
    return content_type is not None and ARROW in content_type


def read(body: bytes) -> pa.Table:
    """The table of an Arrow IPC stream body; a 422 naming the body when it is not one."""
    try:
        return pa.ipc.open_stream(body).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise BadRequest(422, f"body: not an Arrow IPC stream ({exc})") from None


def write(table: pa.Table) -> bytes:
    """`table` as an Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def features(table: pa.Table, schemas: Schemas) -> Columns:
    """The features of an Arrow request, column by column, validated as JSON records are."""
    errors: list[dict[str, str]] = []
    if not 1 <= table.num_rows <= schemas.max_records:
        errors.append({"field": "records", "message": f"{table.num_rows} rows: send 1 to "
                       f"{schemas.max_records} (serving.max_records)"})  # fmt: skip
    wanted = [*schemas.numeric, *schemas.categorical]
    errors += [{"field": f"records.{name}", "message": "unknown field"}
               for name in table.column_names if name not in wanted]  # fmt: skip
    errors += [{"field": f"records.{name}", "message": "required (a feature of the model)"}
               for name in wanted if name not in table.column_names]  # fmt: skip
    columns: Columns = {}
    if not errors:
        for name in schemas.numeric:
            columns[name] = _numbers(table[name], name, errors)
        for name in schemas.categorical:
            columns[name] = _categories(table[name], name, schemas.limits[name], errors)
    if errors:
        shown = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        raise BadRequest(422, shown, errors=errors)
    return columns


def _numbers(column: pa.ChunkedArray, name: str, errors: list[dict[str, str]]) -> list[Any]:
    kind = column.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind)):
        errors.append({"field": f"records.{name}", "message": f"{kind} column: send numbers"})
        return []
    values = pc.cast(column, pa.float64())
    array = values.to_numpy(zero_copy_only=False)  # nulls become NaN here
    present = np.asarray(pc.is_valid(values).to_numpy(zero_copy_only=False), dtype=bool)
    bad = present & ~np.isfinite(array)
    if bad.any():
        why = "NaN or infinite: send a finite number (null: missing)"
        errors.append(_error(f"records.{int(np.argmax(bad))}.{name}", why))
    big = present & np.isfinite(array) & (np.abs(array) > FLOAT32_MAX)
    if big.any():
        at = int(np.argmax(big))
        why = f"{array[at]!r} is past float32's range (+-{FLOAT32_MAX:.4g})"
        errors.append(_error(f"records.{at}.{name}", why))
    return values.to_pylist()


def _categories(
    column: pa.ChunkedArray, name: str, limit: int, errors: list[dict[str, str]]
) -> list[Any]:
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    if pa.types.is_boolean(kind):
        return [None if v is None else ("true" if v else "false") for v in column.to_pylist()]
    if pa.types.is_integer(kind):
        column = pc.cast(column, pa.string())
    elif not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
        errors.append({"field": f"records.{name}", "message": f"{kind} column: send strings"})
        return []
    lengths = pc.utf8_length(column).to_numpy(zero_copy_only=False)
    long = np.nan_to_num(np.asarray(lengths, dtype=np.float64), nan=0.0) > limit
    if long.any():
        errors.append({"field": f"records.{int(np.argmax(long))}.{name}",
                       "message": f"longer than {limit} characters"})  # fmt: skip
    return column.to_pylist()


def answers_stream(out: np.ndarray, request_ids: list[str], scorer: Scorer) -> bytes:
    """The answers as an Arrow stream: request_id, prediction, probability_<class> (classes)."""
    columns: dict[str, Any] = {REQUEST_ID: pa.array(request_ids, pa.string())}
    if scorer.classes is None:
        columns[PREDICTION] = pa.array(np.asarray(out, dtype=np.float64).reshape(-1))
    else:
        columns[PREDICTION] = pa.array(scorer.predictions(out))
        for k, label in enumerate(scorer.classes):
            columns[f"{PROBABILITY}{label}"] = pa.array(np.asarray(out[:, k], dtype=np.float64))
    table = pa.table(columns)
    return write(table.replace_schema_metadata({"version": str(scorer.version)}))


def labels(table: pa.Table, schemas: Schemas) -> list[tuple[str, Any]]:
    """The (request id, label) pairs of an Arrow feedback body: `request_id` and `label` (or the
    target's name) columns; labels of the model's classes, or finite numbers."""
    target = "label" if "label" in table.column_names else schemas.target
    missing = [c for c in (REQUEST_ID, target) if c not in table.column_names]
    if missing or not 1 <= table.num_rows <= 10_000:
        what = f"columns {missing} missing" if missing else f"{table.num_rows} rows (1 to 10,000)"
        raise BadRequest(422, f"labels: {what}",
                         errors=[{"field": "labels", "message": what}])  # fmt: skip
    ids, values = table[REQUEST_ID].to_pylist(), table[target].to_pylist()
    errors = []
    for i, (rid, label) in enumerate(zip(ids, values, strict=True)):
        if not isinstance(rid, str) or not 1 <= len(rid) <= MAX_ID_LENGTH:
            errors.append(_error(f"labels.{i}.request_id", "not a request id"))
        if schemas.classes is not None and (label is None or label not in schemas.classes):
            why = f"{label!r} is not a class; classes: {schemas.classes}"
            errors.append(_error(f"labels.{i}.label", why))
        elif schemas.classes is None and not _finite_number(label):
            errors.append(_error(f"labels.{i}.label", f"{label!r}: send a finite number"))
    if errors:
        raise BadRequest(422, "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5]),
                         errors=errors)  # fmt: skip
    return list(zip(ids, values, strict=True))


def _error(field: str, message: str) -> dict[str, str]:
    return {"field": field, "message": message}


def _finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)
