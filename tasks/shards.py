"""Each worker's rows: its shard of an encoded split, and the stream of batches it trains on.

Ingest. The driver fits the preprocessing on the training split, encodes both splits once and
writes them as Parquet under the run's storage folder: one fixed-size-list column per input kind,
rows shuffled, row groups of equal size in a multiple of the worker count. Each worker reads only
its own row groups (`rank::world_size`) with pyarrow straight into tensors, once, and iterates
in-memory batches (one shuffled gather per pass, then contiguous slices). Measured by
bench/bench_train.py on 2 busy cores (850k rows, 128-row batches per worker; bench/RESULTS.md),
against reading the same Parquet with pyarrow straight into tensors: the first epoch (read +
batches) 0.75x of that read in a fresh process (0.17x of a warm process, which no longer pays
this VM's first touch of fresh memory), later epochs 1.1x (the tensors are reused), Ray Data's
`get_dataset_shard` + `iter_torch_batches` 0.016x (0.12-0.21x in STACK.md with larger batches).
The price is that a
worker's shard must fit in its memory, which holds for the tabular sizes driftloop targets
(1M rows x 20 features is 80 MB of float32). The data lies under the run's Ray Train storage,
which every node sees (a bucket URI or a shared folder; Ray Train requires it for checkpoints
anyway), and is read through `pyarrow.fs`; the driver deletes it when the run ends.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tasks import files


@dataclass(frozen=True)
class Shard:
    numeric: torch.Tensor
    categorical: torch.Tensor
    target: torch.Tensor
    weight: torch.Tensor  # per row (float32); ones where the split has no weights

    def __len__(self) -> int:
        return int(self.target.shape[0])

    @property
    def parts(self) -> tuple[torch.Tensor, ...]:
        return (self.numeric, self.categorical, self.target, self.weight)

    def take(self, index: torch.Tensor) -> Shard:
        """The rows at `index`, copied (numpy's take is several times faster on CPU here)."""
        if index.device.type != "cpu":
            return Shard(*(t.index_select(0, index) for t in self.parts))
        rows = index.numpy()
        return Shard(*(torch.from_numpy(np.take(t.numpy(), rows, axis=0)) for t in self.parts))

    def slice(self, start: int, stop: int) -> Shard:
        return Shard(*(t[start:stop] for t in self.parts))

    def to(self, device: torch.device) -> Shard:
        return Shard(*(t.to(device) for t in self.parts))


def read_shard(path: str, *, rank: int, world_size: int) -> Shard:
    """This worker's row groups (`rank::world_size`) of an encoded split, as tensors."""
    fs, fs_path = files.resolve(path)
    parquet = pq.ParquetFile(fs_path, filesystem=fs, pre_buffer=True)
    table = parquet.read_row_groups(list(range(rank, parquet.num_row_groups, world_size)))
    n = table.num_rows
    numeric = _matrix(table, "numeric", np.float32, n)
    categorical = _matrix(table, "categorical", np.int64, n)
    target = table.column("target").to_numpy()
    weight = (
        table.column("weight").to_numpy()
        if "weight" in table.column_names
        else np.ones(n, dtype=np.float32)
    )
    with warnings.catch_warnings():  # Arrow buffers are read-only; nothing writes into them
        warnings.simplefilter("ignore", UserWarning)
        return Shard(
            torch.from_numpy(numeric),
            torch.from_numpy(categorical),
            torch.from_numpy(target),
            torch.from_numpy(weight),
        )


def _matrix(table: pa.Table, column: str, dtype: type, rows: int) -> np.ndarray:
    if column not in table.column_names:
        return np.zeros((rows, 0), dtype=dtype)
    lists = table.column(column).combine_chunks()
    return lists.values.to_numpy().reshape(rows, lists.type.list_size)


def count_rows(path: str) -> int:
    """The rows of an encoded split, from its Parquet footer."""
    fs, fs_path = files.resolve(path)
    return int(pq.ParquetFile(fs_path, filesystem=fs).metadata.num_rows)


class BatchStream:
    """A worker's batches as an endless stream of seeded passes over its shard.

    Pass p is the shard in a permutation seeded by (seed, p, rank); pass 0 keeps the stored order
    (`write_encoded` wrote the rows in a seeded random order), which spares a gather of the whole
    shard. A pass is `len(shard) // batch` full batches (the remainder waits for another pass in
    another order), and step s is batch s % per_pass of pass s // per_pass: any step can be
    drawn at any time, which is what resuming at a checkpoint's step needs.
    """

    def __init__(self, shard: Shard, *, batch: int, seed: int, rank: int) -> None:
        self.shard = shard
        self.batch = max(1, min(batch, len(shard)))
        self.per_pass = max(1, len(shard) // self.batch)
        self.seed, self.rank = seed, rank
        self._pass, self._rows = 0, shard

    def at(self, step: int) -> Shard:
        index, i = divmod(step, self.per_pass)
        if index != self._pass:
            self._pass, self._rows = index, self.shard
            if index > 0:
                generator = torch.Generator().manual_seed(_seed((self.seed, index, self.rank)))
                order = torch.randperm(len(self.shard), generator=generator)
                self._rows = self.shard.take(order.to(self.shard.target.device))
        return self._rows.slice(i * self.batch, (i + 1) * self.batch)


def _seed(parts: tuple[int, ...]) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])
