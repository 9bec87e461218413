"""Random access to a split's token shards: a worker decodes only the row groups its rows live in.

Each training worker opens the token cache's Parquet files of a split (:mod:`distrec.train.token_cache`)
and asks for its own rows of every global batch (:func:`distrec.train.data_stream.train_micro_batches`):
:meth:`ShardRows.take` finds each row's row group by binary search over the groups' first rows,
decodes that group (pyarrow: a row group is Parquet's unit of independent decoding) and keeps the
last ``cached_groups`` decoded groups. A worker therefore holds the file metadata, a few decoded
groups and the epoch's row permutation (8 bytes a row), not the split: its host memory does not
grow with the dataset. Parquet row groups rather than memory-mapped Arrow IPC: the shards stay
compressed on shared storage, and pages the worker has read do not stay resident as they would
in a mapping.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


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


class ShardRows:
    """Rows ``0 .. num_rows-1`` of the Parquet ``files`` (in order), read a row group at a time.

    Args:
        files: the split's shards, in row order.
        limit: expose only the first ``limit`` rows.
        cached_groups: decoded row groups kept (least recently used dropped).
    """

    def __init__(self, files: Sequence[str | Path], limit: int | None = None, cached_groups: int = 16) -> None:
        self.files = [Path(f) for f in files]
        self._handles = [pq.ParquetFile(f) for f in self.files]
        groups, starts, total = [], [], 0
        for i, handle in enumerate(self._handles):
            for j in range(handle.metadata.num_row_groups):
                groups.append((i, j))
                starts.append(total)
                total += handle.metadata.row_group(j).num_rows
        self._groups, self._starts = groups, np.asarray(starts, dtype=np.int64)
        self.num_rows = total if limit is None else min(limit, total)
        schema = self._handles[0].schema_arrow if self._handles else pa.schema([])
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
        table = self._handles[file].read_row_group(group)
        decoded = {name: column_to_numpy(table.column(name)) for name in table.column_names}
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

    def column(self, name: str) -> np.ndarray:
        """One whole column (for small scalar columns such as ``sample_id``)."""
        return self.take(np.arange(self.num_rows))[name]
