"""Global chronological train/valid/test split and seeded fixed-size subsets.

**Split.** Samples are ordered by ``(timestamp, sample_id)`` (the target's time; ties by the
stable sample id) and cut into three contiguous blocks. With ``n`` samples and fractions
``(a, b, c)``: ``n_train = floor(a*n)``, ``n_valid = floor(b*n)``, ``n_test = n - n_train - n_valid``
(the remainder of the rounding goes to test). This reproduces ReLLa's ML-1M split:
970,009 -> 776,007 / 97,000 / 97,002. A tiny epsilon guards the floors against float error
(``0.29 * 100`` is ``28.999…``).

**Subsets.** ``subset(table, size, seed, stream)`` keeps the first ``size`` indices of a seeded
permutation of the rows, so for a fixed seed smaller sizes are nested in larger ones (ReLLa's
"N-shot = first N of the pool"). The kept rows stay in their chronological order. Each split
draws from its own stream (``numpy`` ``default_rng([seed, stream])``) so train/valid/test
subsets are independent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from distrec.errors import DataError

SPLITS = ("train", "valid", "test")
_EPS = 1e-9


def split_sizes(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Sizes of (train, valid, test) for ``n`` samples under the documented rounding."""
    if len(fractions) != 3:
        raise ValueError(f"three split fractions needed, got {list(fractions)}")
    n_train = min(n, math.floor(fractions[0] * n + _EPS))
    n_valid = min(n - n_train, math.floor(fractions[1] * n + _EPS))
    return n_train, n_valid, n - n_train - n_valid


def chronological_split(
    samples: pa.Table, fractions: Sequence[float] = (0.8, 0.1, 0.1), *, where: str = "samples"
) -> dict[str, pa.Table]:
    """Split ``samples`` (needs ``timestamp`` and ``sample_id``) into ``{"train","valid","test"}``.

    Each split is a contiguous block of the (timestamp, sample_id) order, in that order.
    Raises DataError naming ``where`` (the dataset and its filters) if a split whose fraction
    is positive ends up empty.
    """
    order = np.lexsort((samples.column("sample_id").to_numpy(), samples.column("timestamp").to_numpy()))
    sizes = split_sizes(samples.num_rows, fractions)
    bounds = np.cumsum((0,) + sizes)
    in_order = bool(np.array_equal(order, np.arange(len(order))))  # built samples are: slices, no copies
    out = {}
    for name, frac, lo, hi in zip(SPLITS, fractions, bounds[:-1], bounds[1:]):
        if hi == lo and frac > 0:
            raise DataError(
                f"{where}: split '{name}' is empty after filtering "
                f"({samples.num_rows} samples, fractions {list(fractions)})"
            )
        out[name] = samples.slice(lo, hi - lo) if in_order else samples.take(pa.array(order[lo:hi], type=pa.int64()))
    return out


def subset(table: pa.Table, size: int | None, seed: int, stream: int = 0, *, where: str = "split") -> pa.Table:
    """The first ``size`` rows of a seeded permutation of ``table``, kept in table order.

    ``size=None`` returns ``table``. Asking for more rows than ``table`` has raises DataError
    naming ``where``.
    """
    if size is None:
        return table
    if size < 0 or size > table.num_rows:
        raise DataError(f"{where}: asked for a subset of {size} rows but it has {table.num_rows}")
    perm = np.random.default_rng([seed, stream]).permutation(table.num_rows)
    return table.take(pa.array(np.sort(perm[:size]), type=pa.int64()))


def apply_subsets(
    splits: dict[str, pa.Table], sizes: dict[str, int | None], seed: int, *, where: str = "samples"
) -> dict[str, pa.Table]:
    """Apply :func:`subset` to each split with its own stream (train 0, valid 1, test 2)."""
    return {
        name: subset(table, sizes.get(name), seed, SPLITS.index(name), where=f"{where} [{name}]")
        for name, table in splits.items()
    }
