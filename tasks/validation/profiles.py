"""What a table holds, column by column, and which table a suite learns its profile from.

reference = reference_profile(settings)   # validation.reference, the champion's sample, None
profile(table)                            # kind, null share, range, distinct count, top values
known_columns(settings.dataset, profile=reference_table, table=new_data)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from tasks import data, files, registry

if TYPE_CHECKING:
    from tasks.settings import DatasetConfig, Settings

MAX_DOMAIN = 1000  # a categorical column with more distinct values gets no domain check


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
    model = settings.dataset.name
    champion = registry.champion(root=settings.home, model=model)
    if champion is not None:
        sample = champion.file(files.REFERENCE)
        if files.exists(sample):
            what = f"the champion's ({model} v{champion.version}) sample"
            table = _read_reference(sample, what=what)
            return Reference(table, f"champion {model} v{champion.version}: {sample}")
    return Reference(None, "the data itself (no validation.reference, no champion sample yet)")


def known_columns(dataset: DatasetConfig, *, profile: pa.Table, table: pa.Table) -> pa.Schema:
    """The columns the config's names are checked against, with the profile's types.

    Inferred features come from the profile alone, so a feature that vanished from the new data
    is a validation failure, not a feature quietly dropped. Declared columns may be in the
    profile or, new since, in the data: a declared column the new data lost or retyped is then a
    validation failure too (GX names it), and only a name found in neither is a config error.
    """
    if dataset.features is None or profile is table:
        return profile.schema
    added = [field for field in table.schema if field.name not in profile.schema.names]
    return pa.schema([*profile.schema, *added])


def _read_reference(location: str, *, what: str) -> pa.Table:
    try:
        return data.read_table(location)
    except data.DataError as exc:
        raise data.DataError(f"{what}: {exc}") from None


# Profiles -----------------------------------------------------------------------------------------


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
