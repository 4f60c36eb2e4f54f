"""Data access through pyarrow: read Parquet from a file, a folder or a URI; split; fingerprint.

    table = read_table("data/churn.parquet")          # or a hive-partitioned folder, file://, s3://
    parts = split(table, dataset=settings.dataset, config=settings.split)

Every read goes through `pyarrow.fs`, so a local path and a bucket take the same code path.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from tasks.errors import DriftloopError

if TYPE_CHECKING:
    from tasks.settings import DatasetConfig, SplitConfig

ColumnKind = Literal["integer", "float", "boolean", "string", "timestamp", "other"]


class DataError(DriftloopError, ValueError):
    """The data cannot be read; the message names the file and the problem in one line."""


class Splits(NamedTuple):
    train: pa.Table
    validation: pa.Table
    holdout: pa.Table


def resolve(source: str) -> tuple[pafs.FileSystem, str]:
    """The file system and path behind a local path or a URI (file://, s3://, gs://)."""
    if "://" not in source:
        return pafs.LocalFileSystem(), str(source)
    try:
        return pafs.FileSystem.from_uri(source)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise DataError(f"{source}: cannot open this URI: {_first_line(exc)}") from None


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


def fingerprint(table: pa.Table) -> str:
    """A content hash of the rows and schema: the same for a re-read, new when any row changes.

    Row order does not matter (a folder read in another order is the same data set).
    """
    rows = pd.util.hash_pandas_object(table.to_pandas(), index=False).to_numpy()
    digest = hashlib.sha256(table.schema.to_string(show_schema_metadata=False).encode())
    digest.update(np.sort(rows).tobytes())
    return digest.hexdigest()[:16]


def split(table: pa.Table, *, dataset: DatasetConfig, config: SplitConfig) -> Splits:
    """A deterministic train / validation / holdout split.

    Each unit (an id where ids repeat, otherwise a distinct row) gets a seeded hash score, so the
    assignment does not depend on row order and duplicate rows never straddle two splits. Units
    are ranked by score within each stratum (the class for classification, a target decile for
    regression), so every split keeps the class balance.
    """
    frame = table.to_pandas()
    if dataset.id is not None and frame[dataset.id].duplicated().any():
        keys = pd.util.hash_pandas_object(frame[dataset.id], index=False).to_numpy()
    else:
        keys = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    unit_keys, unit_of_row = np.unique(keys, return_inverse=True)
    strata = _strata(frame[dataset.target], task=dataset.task)
    unit_stratum = pd.Series(strata).groupby(unit_of_row).min().to_numpy()
    score = _mix(unit_keys ^ np.uint64(config.seed))
    rank = pd.Series(score).groupby(unit_stratum).rank(method="first", pct=True).to_numpy()
    unit_split = np.where(
        rank <= config.holdout, 2, np.where(rank <= config.holdout + config.validation, 1, 0)
    )
    row_split = unit_split[unit_of_row]
    parts = [table.filter(pa.array(row_split == i)) for i in range(3)]
    return Splits(*parts)


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


def _starts_like_parquet(fs: pafs.FileSystem, path: str) -> bool:
    with fs.open_input_file(path) as handle:
        return bool(handle.read(4) == b"PAR1")


def _explain(exc: Exception) -> str:
    text = _first_line(exc)
    if "magic bytes" in text or "minimum file footer" in text:
        return "not Parquet (no Parquet magic bytes; is it CSV or another format?)"
    return text


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
