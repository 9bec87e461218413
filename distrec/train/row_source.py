"""Random access to a split's token shards: a worker reads only the record batches its rows live in.

Each training worker opens the token cache's Arrow IPC files of a split (:mod:`distrec.train.token_cache`)
and asks for its own rows of every global batch (:func:`distrec.train.data_stream.train_micro_batches`):
:meth:`ShardRows.take` finds each row's record batch (128 rows) by binary search over the
batches' first rows, reads just that batch (the IPC file footer locates it: one seek and one read)
and keeps the last ``cached_groups`` batches. A worker therefore holds a file handle per shard, a
few batches and the epoch's row permutation (8 bytes a row), not the split: its host memory does
not grow with the dataset.

Why Arrow IPC read through ordinary file reads: Parquet has no cheaper unit of random access than
a row group, and decoding a 1,024-row group to use one row ran at ~260 rows/s a rank (measured,
``jobs/bench/rank_memory.py``); a memory-mapped IPC file reads as fast but every page a worker
touches stays resident, so its RSS climbs towards the file size over an epoch. Plain reads of
small IPC batches do neither (~9,000 random rows/s on this machine's disk, flat memory).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc


def column_to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A column as the loop's numpy form: scalars as an array, lists as an object array of arrays."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        offsets = array.offsets.to_numpy()
        values = array.values.to_numpy(zero_copy_only=False)
        out = np.empty(len(array), dtype=object)
        out[:] = [values[offsets[i]:offsets[i + 1]] for i in range(len(array))]
        return out
    return array.to_numpy(zero_copy_only=False)


BATCH_ROWS_KEY = b"distrec.batch_rows"  # schema metadata: every record batch has this many rows but the last


def _batch_rows(handle) -> list[int]:
    """Rows of each record batch of an IPC file: from the ``distrec.batch_rows`` schema metadata
    that :func:`~distrec.train.token_cache.write_split` writes, else by reading every batch (a
    file written elsewhere: batch sizes cannot be guessed from the first one)."""
    n = handle.num_record_batches
    size = (handle.schema.metadata or {}).get(BATCH_ROWS_KEY)
    if size is None:
        return [handle.get_batch(j).num_rows for j in range(n)]
    size, total = int(size), handle.count_rows()
    return [min(size, total - j * size) for j in range(n)]


class ShardRows:
    """Rows ``0 .. num_rows-1`` of the Arrow IPC ``files`` (in order), read a record batch at a time.

    Args:
        files: the split's shards, in row order.
        limit: expose only the first ``limit`` rows.
        cached_groups: record batches kept (least recently used dropped).
    """

    def __init__(self, files: Sequence[str | Path], limit: int | None = None, cached_groups: int = 16) -> None:
        self.files = [Path(f) for f in files]
        self._handles = [ipc.open_file(pa.OSFile(str(f))) for f in self.files]
        groups, starts, total = [], [], 0
        for i, handle in enumerate(self._handles):
            for j, rows in enumerate(_batch_rows(handle)):
                groups.append((i, j))
                starts.append(total)
                total += rows
        self._groups, self._starts = groups, np.asarray(starts, dtype=np.int64)
        self.num_rows = total if limit is None else min(limit, total)
        schema = self._handles[0].schema if self._handles else pa.schema([])
        self.columns = list(schema.names)
        self._dtypes = {f.name: np.dtype(object) if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)
                        else np.dtype(f.type.to_pandas_dtype()) for f in schema}
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._cached_groups = cached_groups

    def __len__(self) -> int:
        return self.num_rows

    def __contains__(self, column: str) -> bool:
        return column in self.columns

    def head(self, n: int) -> ShardRows:
        """The first ``n`` rows, sharing this reader's files and cache."""
        view = object.__new__(ShardRows)
        view.__dict__.update(self.__dict__)
        view.num_rows = min(n, self.num_rows)
        return view

    def _group(self, g: int) -> dict[str, np.ndarray]:
        if g in self._cache:
            self._cache.move_to_end(g)
            return self._cache[g]
        file, group = self._groups[g]
        batch = self._handles[file].get_batch(group)
        decoded = {name: column_to_numpy(batch.column(name)) for name in batch.schema.names}
        self._cache[g] = decoded
        if len(self._cache) > self._cached_groups:
            self._cache.popitem(last=False)
        return decoded

    def take(self, idx: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Columns of rows ``idx`` (in that order), as ``{name: array}``; IndexError past ``num_rows``."""
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_rows):
            raise IndexError(f"rows {idx.min()}..{idx.max()} asked of {self.num_rows}")
        group_of = np.searchsorted(self._starts, idx, side="right") - 1
        parts: dict[str, list] = {name: [None] * len(idx) for name in self.columns}
        for g in np.unique(group_of):
            where = np.flatnonzero(group_of == g)
            decoded = self._group(int(g))
            local = idx[where] - self._starts[g]
            for name in self.columns:
                values = decoded[name][local]
                for k, w in enumerate(where):
                    parts[name][w] = values[k]
        out = {}
        for name, values in parts.items():
            if self._dtypes[name] == object:
                out[name] = np.empty(len(values), dtype=object)
                out[name][:] = values
            else:
                out[name] = np.asarray(values, dtype=self._dtypes[name])
        return out

    def lengths(self, name: str = "input_ids") -> np.ndarray:
        """``(num_rows,)`` int32 lengths of a list column, read one record batch at a time."""
        out = np.empty(self.num_rows, dtype=np.int32)
        for g, (file, group) in enumerate(self._groups):
            lo = int(self._starts[g])
            if lo >= self.num_rows:
                break
            lens = np.diff(self._handles[file].get_batch(group).column(name).offsets.to_numpy())
            out[lo:lo + len(lens)] = lens[: self.num_rows - lo]
        return out

    def column(self, name: str) -> np.ndarray:
        """One whole scalar column (``sample_id``, ``user_id``, ...), read a record batch at a time
        without decoding the others."""
        out = np.empty(self.num_rows, dtype=self._dtypes[name])
        for g, (file, group) in enumerate(self._groups):
            lo = int(self._starts[g])
            if lo >= self.num_rows:
                break
            values = column_to_numpy(self._handles[file].get_batch(group).column(name))
            out[lo:lo + len(values)] = values[: self.num_rows - lo]
        return out
