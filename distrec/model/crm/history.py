"""The history a DIN reads: each sample's last ``hist_len`` items, as ids and a mask."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distrec.errors import DataError


def _list_parts(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.int64)


def history_matrix(table: pa.Table, hist_len: int, history: str = "recent") -> tuple[np.ndarray, np.ndarray]:
    """``(ids int64 [N, hist_len], mask bool [N, hist_len])``: each sample's last ``hist_len``
    history items (oldest first, right-padded with 0).

    ``history="retrieved"``: the items at ``history_indices`` (a SUBR folder), the last
    ``hist_len`` of them. Raises DataError without that column or with an index outside the
    row's ``history_item_ids``."""
    offsets, flat = _list_parts(table.column("history_item_ids"))
    if history == "retrieved":
        if "history_indices" not in table.column_names:
            raise DataError("DIN history='retrieved' needs a SUBR folder (a 'history_indices' column)")
        sel_off, sel = _list_parts(table.column("history_indices"))
        row = np.repeat(np.arange(offsets.size - 1), np.diff(sel_off))
        if sel.size and (sel.min() < 0 or (sel >= np.diff(offsets)[row]).any()):
            raise DataError("history_indices point outside history_item_ids")
        flat = flat[offsets[:-1][row] + sel]
        offsets = sel_off
    n = offsets.size - 1
    lengths = np.diff(offsets)
    take = np.minimum(lengths, hist_len)
    ids = np.zeros((n, hist_len), dtype=np.int64)
    mask = np.zeros((n, hist_len), dtype=bool)
    row = np.repeat(np.arange(n), take)
    col = np.arange(int(take.sum())) - np.repeat(np.cumsum(take) - take, take)
    src = np.repeat(offsets[1:] - take, take) + col
    ids[row, col] = flat[src]
    mask[row, col] = True
    return ids, mask
