"""The non-finite score check every metric path runs before it computes anything.

A NaN or infinite model output (diverged training, an overflow in low precision) would
otherwise surface as sklearn's bare "Input contains NaN" on every rank (CTR), or silently
turn into arbitrary faiss neighbours (grounded ranking). The check names where it happened
(split and step) and the first sample, so the run can be traced back to the state that
produced it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from distrec.errors import ModelError


def evaluation_point(split: Optional[str], step: Optional[int]) -> str:
    """``"split 'valid', step 7"``; without a step, the final evaluation of the selected state."""
    if split is None:
        return ""
    when = f"step {step}" if step is not None else "final evaluation of the selected state"
    return f"split '{split}', {when}"


def require_finite(
    values,
    ids: Optional[Sequence] = None,
    *,
    where: str = "",
    what: str = "score",
    id_name: str = "sample id",
) -> None:
    """Raise ModelError if any row of ``values`` holds NaN or ±inf.

    Args:
        values: ``[n]`` scores or ``[n, d]`` vectors (a row is bad if any entry is).
        ids: ``[n]`` ids naming the rows (sample ids, item ids); None names row positions.
        where: the evaluation point, e.g. :func:`evaluation_point`'s text.
        what: what one row is ("score", "item embedding").
        id_name: how an id is called in the message.

    Raises:
        ModelError: ``"<where>: 1 of 4 scores is not finite; the first is sample id 2 (nan) ..."``.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return
    finite = np.isfinite(arr)
    rows_ok = finite if arr.ndim <= 1 else finite.reshape(arr.shape[0], -1).all(axis=1)
    if rows_ok.all():
        return
    bad = np.flatnonzero(~np.atleast_1d(rows_ok))
    first = int(bad[0])
    name = f"{id_name} {ids[first]}" if ids is not None else f"row {first}"
    value = f" ({float(arr.reshape(-1)[first])})" if arr.ndim <= 1 else ""
    n, k = int(np.atleast_1d(rows_ok).size), int(bad.size)
    prefix = f"{where}: " if where else ""
    raise ModelError(
        f"{prefix}{k} of {n} {what}s {'is' if k == 1 else 'are'} not finite; the first is {name}{value}. "
        "The model produced NaN or infinite outputs (diverged training or an overflow in low "
        "precision); metrics over them would be meaningless"
    )
