"""Data access through pyarrow: read Parquet from a file, a folder or a URI; split; fingerprint.

    table = read_table("data/churn.parquet")          # or a hive-partitioned folder, file://, s3://
    parts = split(table, dataset=settings.dataset, config=settings.split)

Every read goes through `pyarrow.fs`, so a local path and a bucket take the same code path.
"""

from __future__ import annotations

import hashlib
from typing import Literal, NamedTuple, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tasks.calibration import effective_rows
from tasks.errors import DataError as DataError  # re-exported: what reading data raises
from tasks.files import first_line, resolve


class Contract(Protocol):
    """What a split reads of the data contract (tasks.settings.DatasetConfig has it)."""

    @property
    def target(self) -> str: ...
    @property
    def task(self) -> str: ...
    @property
    def id(self) -> str | None: ...
    @property
    def timestamp(self) -> str | None: ...


class Fractions(Protocol):
    """The split's shares and seed (tasks.settings.SplitConfig has them)."""

    @property
    def validation(self) -> float: ...
    @property
    def holdout(self) -> float: ...
    @property
    def seed(self) -> int: ...


# Training rows kept with each version: the next run's validation profile, the drift reference
REFERENCE_ROWS = 20_000
ColumnKind = Literal["integer", "float", "boolean", "string", "timestamp", "other"]


class Splits(NamedTuple):
    train: pa.Table
    validation: pa.Table
    holdout: pa.Table


def dataset(source: str) -> pads.Dataset:
    """A pyarrow dataset over a Parquet file or folder (hive partitions become columns)."""
    fs, path = resolve(source)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{source}: no such file or directory")
    if info.type == pafs.FileType.File and info.size == 0:
        raise DataError(f"{source}: the file is empty (0 bytes), not a Parquet file")
    try:
        found = pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive")
    except (pa.ArrowInvalid, OSError) as exc:
        if info.type == pafs.FileType.File and _starts_like_parquet(fs, path):
            reason = "truncated or corrupt (it starts like Parquet but its footer is unreadable)"
            raise DataError(f"{source}: not a readable Parquet file: {reason}") from None
        raise DataError(f"{source}: not a readable Parquet file: {_explain(exc)}") from None
    if info.type == pafs.FileType.Directory and not found.files:
        raise DataError(f"{source}: the directory holds no Parquet files")
    return found


def read_schema(source: str) -> pa.Schema:
    """The schema of the data, read from file footers only."""
    return dataset(source).schema


def read_table(source: str, *, columns: list[str] | None = None) -> pa.Table:
    """All rows of the data (optionally only some columns) as one Arrow table."""
    found = dataset(source)
    try:
        return found.to_table(columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{source}: corrupt or truncated Parquet data: {_explain(exc)}") from None


def sample_parquet(
    table: pa.Table, *, rows: int, seed: int = 0, weights: np.ndarray | None = None
) -> bytes:
    """A seeded sample of at most `rows` rows, in their order, as the bytes of a Parquet file.

    `weights` (one per row, >= 0): drawn without replacement with chances in proportion to them
    (Efraimidis-Spirakis), and no more rows than their effective number (sum(w)^2 / sum(w^2)):
    the sample is the table as a weighted training saw it, not a copy of its rare rows."""
    count = min(table.num_rows, rows)
    rng = np.random.default_rng(seed)
    if weights is None:
        picked = np.sort(rng.choice(table.num_rows, size=count, replace=False))
    else:
        w = np.asarray(weights, dtype=np.float64)
        count = min(count, max(round(effective_rows(w)), 1), int((w > 0).sum()))
        with np.errstate(divide="ignore"):
            keys = np.log(rng.random(table.num_rows)) / w  # -inf where w == 0: never drawn
        picked = np.sort(np.argsort(-keys)[:count])
    sink = pa.BufferOutputStream()
    pq.write_table(table.take(pa.array(picked)), sink)
    return bytes(sink.getvalue())


def column_kind(dtype: pa.DataType) -> ColumnKind:
    """The coarse kind of an Arrow type, as the data contract sees it."""
    if pa.types.is_dictionary(dtype):
        return column_kind(dtype.value_type)
    if pa.types.is_boolean(dtype):
        return "boolean"
    if pa.types.is_integer(dtype):
        return "integer"
    if pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return "float"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "string"
    if pa.types.is_timestamp(dtype) or pa.types.is_date(dtype):
        return "timestamp"
    return "other"


def infer_features(schema: pa.Schema, *, exclude: set[str]) -> tuple[list[str], list[str]]:
    """Numeric and categorical feature columns of a schema, leaving out the given columns.

    Integers and floats are numeric; strings, dictionaries and booleans are categorical;
    timestamps and nested types are not features.
    """
    numeric, categorical = [], []
    for field in schema:
        if field.name in exclude:
            continue
        kind = column_kind(field.type)
        if kind in ("integer", "float"):
            numeric.append(field.name)
        elif kind in ("string", "boolean"):
            categorical.append(field.name)
    return numeric, categorical


def fingerprint(table: pa.Table, *, hashes: np.ndarray | None = None) -> str:
    """A content hash of the rows and schema: the same for a re-read, new when any row changes.

    Row order does not matter (a folder read in another order is the same data set). `hashes`:
    the table's `row_hashes`, when the caller has them already (a split needs them too).
    """
    hashes = _rows_hashed(table, hashes)
    schema = pa.schema([field.with_type(_canonical(field.type)) for field in table.schema])
    text = schema.to_string(show_schema_metadata=False, show_field_metadata=False)
    digest = hashlib.sha256(text.encode())
    digest.update(np.sort(hashes).tobytes())
    return digest.hexdigest()[:16]


def _rows_hashed(table: pa.Table, hashes: np.ndarray | None) -> np.ndarray:
    if hashes is None:
        return row_hashes(table)
    if hashes.shape != (table.num_rows,) or hashes.dtype != np.uint64:
        raise ValueError(
            f"hashes must be the table's row_hashes: {table.num_rows} uint64 values, "
            f"not {hashes.shape} {hashes.dtype}"
        )
    return hashes


def row_hashes(table: pa.Table) -> np.ndarray:
    """A 64-bit hash of each row over every column (uint64), computed from the Arrow values.

    Lossless where a pandas conversion is not: 2**53 and 2**53 + 1 differ, a null differs from
    NaN and from the string "None", and list, map and struct columns hash like any other.
    """
    out = np.zeros(table.num_rows, dtype=np.uint64)
    if table.num_rows == 0:
        return out
    for index, column in enumerate(table.columns):
        values = np.concatenate([_value_hashes(chunk) for chunk in column.chunks])
        out = _mix(out ^ _mix(values + np.uint64(index)))
    return out


def split(
    table: pa.Table,
    *,
    dataset: Contract,
    config: Fractions,
    hashes: np.ndarray | None = None,
) -> Splits:
    """A deterministic train / validation / holdout split.

    Each unit (an id, or a distinct row where there is no id or the id is null) gets a seeded
    hash score, so the assignment does not depend on row order, no id spans two splits and
    duplicate rows never straddle two splits. Where the contract has a `timestamp`, the holdout
    is the newest units (by their newest row; ties by score; a row without a time counts as the
    oldest): a model is judged on the period after the one it learned from, as the field does
    for temporal data. The other units are ranked by score within each stratum (the class for
    classification, a target decile for regression), so every split keeps the class balance.
    `hashes`: the table's `row_hashes`, when the caller has them already.

    Raises:
        DataError: a part would be empty (too few distinct units for the fractions).
    """
    hashes = None if hashes is None else _rows_hashed(table, hashes)  # checked once
    keys = _unit_keys(table, id_column=dataset.id, hashes=hashes)
    unit_keys, unit_of_row = np.unique(keys, return_inverse=True)
    strata = _strata(table[dataset.target].to_pandas(), task=dataset.task)
    unit_stratum = pd.Series(strata).groupby(unit_of_row).min().to_numpy()
    score = _mix(unit_keys ^ np.uint64(config.seed))
    column = dataset.timestamp
    if column is not None and column in table.column_names:
        held = _newest(_unit_times(table[column], unit_of_row, len(unit_keys)), score,
                       share=config.holdout)  # fmt: skip
        rest = np.flatnonzero(~held)
        rank = np.ones(len(unit_keys))
        rank[rest] = (
            pd.Series(score[rest]).groupby(unit_stratum[rest]).rank(method="first", pct=True)
        ).to_numpy()
        share = config.validation / (1 - config.holdout)
        unit_split = np.where(held, 2, np.where(rank <= share, 1, 0))
    else:
        rank = pd.Series(score).groupby(unit_stratum).rank(method="first", pct=True).to_numpy()
        unit_split = np.where(
            rank <= config.holdout, 2, np.where(rank <= config.holdout + config.validation, 1, 0)
        )
    row_split = unit_split[unit_of_row]
    parts = Splits(*[table.filter(pa.array(row_split == i)) for i in range(3)])
    _check_parts(parts, units=len(unit_keys), id_column=dataset.id, config=config)
    return parts


def _unit_times(column: pa.ChunkedArray, unit_of_row: np.ndarray, units: int) -> np.ndarray:
    """Each unit's newest time (microseconds; the oldest possible for a unit without one)."""
    micros = pc.cast(column, pa.timestamp("us")) if not pa.types.is_timestamp(column.type) \
        else column.cast(pa.timestamp("us", tz=column.type.tz))  # fmt: skip
    values = pc.fill_null(micros.cast(pa.int64()), np.iinfo(np.int64).min).to_numpy()
    newest = np.full(units, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(newest, unit_of_row, values)
    return newest


def _newest(times: np.ndarray, score: np.ndarray, *, share: float) -> np.ndarray:
    """A mask of the newest `share` of the units (ties by score)."""
    count = round(share * len(times))
    held = np.zeros(len(times), dtype=bool)
    if count:
        held[np.lexsort((score, times))[-count:]] = True
    return held


def _unit_keys(table: pa.Table, *, id_column: str | None, hashes: np.ndarray | None) -> np.ndarray:
    """One key per row: its id's hash; where there is no id (or it is null), the row's own."""
    if id_column is None:
        return row_hashes(table) if hashes is None else hashes
    ids = row_hashes(table.select([id_column]))
    null = table[id_column].is_null().to_numpy(zero_copy_only=False)
    if null.any():  # hash only the rows without an id, unless every row's hash is at hand
        own = row_hashes(table.filter(pa.array(null))) if hashes is None else hashes[null]
        ids[null] = _mix(own ^ _NULL_ID)
    return ids


def _check_parts(parts: Splits, *, units: int, id_column: str | None, config: Fractions) -> None:
    """An empty part would train, gate or judge on nothing: refuse it, with the counts."""
    sizes = {name: part.num_rows for name, part in zip(parts._fields, parts, strict=True)}
    if all(sizes.values()):
        return
    unit = f"distinct {id_column!r} values (a null id counts per row)" if id_column else "rows"
    shown = ", ".join(f"{name} {rows}" for name, rows in sizes.items())
    raise DataError(
        f"split: {sum(sizes.values())} rows with {units} {unit} give {shown} rows; each part "
        f"needs at least one (split.validation {config.validation}, split.holdout "
        f"{config.holdout}): more data is needed"
    )


def _strata(target: pd.Series, *, task: str) -> np.ndarray:
    if task == "classification":
        return pd.factorize(target, sort=True)[0]
    ranks = target.rank(method="first", pct=True).fillna(0).to_numpy()
    return np.minimum((ranks * 10).astype(np.int64), 9)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: turns related keys into independent-looking uint64 scores."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


_NULL = np.uint64(0x9E3779B97F4A7C15)  # the hash of a null value, of any type
_SALT = np.uint64(0x2545F4914F6CDD1D)  # splitmix maps 0 to 0: move valid values off that point
_NULL_ID = np.uint64(0xD6E8FEB86659FD93)  # salts the row key of a row whose id is null


def _canonical(kind: pa.DataType) -> pa.DataType:
    """The type without the name of list items, which Parquet changes ("item" -> "element")."""
    if pa.types.is_struct(kind):
        return pa.struct([field.with_type(_canonical(field.type)) for field in kind])
    if pa.types.is_fixed_size_list(kind):
        return pa.list_(_canonical(kind.value_type), kind.list_size)
    if pa.types.is_large_list(kind):
        return pa.large_list(_canonical(kind.value_type))
    if pa.types.is_list(kind):
        return pa.list_(_canonical(kind.value_type))
    return kind


def _value_hashes(array: pa.Array) -> np.ndarray:
    """A uint64 per value, from the Arrow bits (nulls get `_NULL`, whatever their slot holds)."""
    array = array.storage if isinstance(array, pa.ExtensionArray) else array
    kind = array.type
    if pa.types.is_dictionary(kind):
        array = array.dictionary_decode()
    elif (
        pa.types.is_fixed_size_list(kind)
        or pa.types.is_list_view(kind)
        or pa.types.is_large_list_view(kind)
    ):
        array = array.cast(pa.large_list(kind.value_field))
    elif pa.types.is_string_view(kind) or pa.types.is_binary_view(kind):
        array = array.cast(pa.large_binary())
    kind = array.type
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    if len(array) == 0 or pa.types.is_null(kind):
        values = np.zeros(len(array), dtype=np.uint64)
    elif pa.types.is_struct(kind):
        values = np.zeros(len(array), dtype=np.uint64)
        for index, child in enumerate(array.flatten()):
            values = _mix(values ^ _mix(_value_hashes(child) + np.uint64(index)))
    elif isinstance(array, pa.ListArray | pa.LargeListArray):  # maps too
        values = _list_hashes(array)
    elif _byte_width(kind) is None:  # strings, binary and anything exotic
        values = _object_hashes(array)
    else:
        values = _fixed_width_hashes(array)
    return np.where(valid, _mix(values ^ _SALT), _NULL)


def _byte_width(kind: pa.DataType) -> int | None:
    """Bytes per value of a fixed-width type (booleans: 0, they are bit-packed); None otherwise."""
    try:
        bits = int(kind.bit_width)
    except ValueError:
        return None
    return bits // 8 if bits % 8 == 0 or bits == 1 else None


def _fixed_width_hashes(array: pa.Array) -> np.ndarray:
    """The raw bits of each value (ints, floats, decimals, timestamps...) folded into 64."""
    width = _byte_width(array.type)
    if not width:  # boolean
        return array.fill_null(False).to_numpy(zero_copy_only=False).astype(np.uint64)
    raw = np.frombuffer(
        array.buffers()[1], dtype=np.uint8, count=(array.offset + len(array)) * width
    )
    rows = raw[array.offset * width :].reshape(len(array), width)
    padded = np.zeros((len(array), -(-width // 8) * 8), dtype=np.uint8)
    padded[:, :width] = rows
    words = padded.view("<u8")
    out = words[:, 0].copy()
    for k in range(1, words.shape[1]):
        out = _mix(out) ^ words[:, k]
    return out


def _list_hashes(array: pa.ListArray | pa.LargeListArray) -> np.ndarray:
    """Order-sensitive: each element's hash mixed with its position, summed per list."""
    offsets = array.offsets.to_numpy().astype(np.int64)
    lengths = np.diff(offsets)
    first, last = int(offsets[0]), int(offsets[-1])
    child = _value_hashes(array.values.slice(first, last - first))
    owner = np.repeat(np.arange(len(array)), lengths)
    position = np.arange(first, last) - offsets[:-1][owner]
    element = _mix(child ^ _mix(position.astype(np.uint64) + _NULL))
    total = np.concatenate([[np.uint64(0)], np.cumsum(element, dtype=np.uint64)])
    with np.errstate(over="ignore"):
        sums = total[offsets[1:] - first] - total[offsets[:-1] - first]
    return _mix(sums ^ lengths.astype(np.uint64))


def _object_hashes(array: pa.Array) -> np.ndarray:
    """Strings and binary by their bytes (pandas' seeded SipHash); other types by their repr."""
    filled = array
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        filled = array.fill_null("")
    elif pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type):
        filled = array.fill_null(b"")
    else:
        filled = pa.array([repr(v) for v in array.to_pylist()], pa.string())
    values = filled.to_numpy(zero_copy_only=False).astype(object)
    return pd.util.hash_array(values, categorize=True)


def _starts_like_parquet(fs: pafs.FileSystem, path: str) -> bool:
    with fs.open_input_file(path) as handle:
        return bool(handle.read(4) == b"PAR1")


def _explain(exc: Exception) -> str:
    text = first_line(exc)
    if "magic bytes" in text or "minimum file footer" in text:
        return "not Parquet (no Parquet magic bytes; is it CSV or another format?)"
    return text
