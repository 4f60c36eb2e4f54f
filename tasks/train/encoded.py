"""The encoded splits a Ray Train run reads, and where its storage is.

    paths = write_splits({"train": (train, weights), "validation": (validation, None)}, pre,
                         data_dir=files.join(storage, run, "data"), shards=2)

Each split is encoded once by the driver (`Preprocessor.transform`), its rows shuffled, written as
Parquet in row groups that split evenly over the workers (each reads its own: `tasks.shards`),
under the run's storage, which every node sees: a bucket URI or a shared folder.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks import files
from tasks.model import Preprocessor

ROWS_PER_GROUP = 131_072  # Parquet row group size cap: the unit a worker reads


def write_splits(
    parts: dict[str, tuple[pa.Table, np.ndarray | None]],
    pre: Preprocessor,
    *,
    data_dir: str,
    shards: int,
) -> dict[str, str]:
    """Each split (with its weights) encoded under `data_dir`, in row groups that split evenly
    over `shards`."""
    return {
        part: write_encoded(
            table,
            pre,
            files.join(data_dir, f"{part}.parquet"),
            shards=shards,
            seed=i,
            weights=weights,
        )
        for i, (part, (table, weights)) in enumerate(parts.items())
    }


def write_encoded(
    table: pa.Table,
    pre: Preprocessor,
    location: str | os.PathLike[str],
    *,
    shards: int,
    seed: int = 0,
    weights: np.ndarray | None = None,
) -> str:
    """Encode `table` and write it, rows shuffled, in row groups that split evenly over `shards`.

    `location` is a path or a URI (written through `pyarrow.fs`). Columns: `numeric` and
    `categorical` (fixed-size lists, so a reader gets one contiguous buffer per kind),
    `target`, and `weight` (float32) where `weights` are given. Written in place, not renamed:
    only this run's workers read it, after this returns.
    """
    encoded = pre.transform(table)
    target = pre.encode_target(table)
    order = np.random.default_rng(seed).permutation(table.num_rows)
    columns: dict[str, pa.Array] = {}
    for key, values in (("numeric", encoded.numeric), ("categorical", encoded.categorical)):
        if values.shape[1]:
            flat = pa.array(values[order].reshape(-1))
            columns[key] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
    columns["target"] = pa.array(target[order])
    if weights is not None:
        columns["weight"] = pa.array(np.asarray(weights, dtype=np.float32)[order])
    encoded_table = pa.table(columns)
    groups = shards * max(1, -(-table.num_rows // (shards * ROWS_PER_GROUP)))
    bounds = np.linspace(0, table.num_rows, groups + 1).astype(int)
    where = os.fspath(location)
    fs, path = files.resolve(where)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with pq.ParquetWriter(path, encoded_table.schema, filesystem=fs) as writer:
        for lo, hi in itertools.pairwise(bounds):
            writer.write_table(encoded_table.slice(lo, hi - lo), row_group_size=max(hi - lo, 1))
    return where


def storage_location(location: str) -> str:
    """Ray Train storage as Ray takes it: a URI as it is, a local path made absolute."""
    return location.rstrip("/") if "://" in location else str(Path(location).resolve())


def as_location(storage: str, fs_path: str) -> str:
    """A path on the storage's file system as a location like `storage`: a path, or a URI with
    the storage's scheme and options."""
    if "://" not in storage:
        return fs_path
    scheme, _, rest = storage.partition("://")
    _, mark, query = rest.partition("?")
    return f"{scheme}://{fs_path}{mark}{query}"


def remove(location: str) -> None:
    fs, path = files.resolve(location)
    with contextlib.suppress(OSError):
        fs.delete_dir(path)
