"""Sample building, k-core and split on hand-built tables with hand-derived expectations."""

from __future__ import annotations

import random
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pytest

from distrec.data.kcore import iterative_kcore
from distrec.data.samples import build_ctr_samples, build_generative_samples
from distrec.data.schema import CTR_SAMPLES, GENERATIVE_SAMPLES, INTERACTIONS, ITEMS, USERS, CanonicalTables
from distrec.data.split import apply_subsets, chronological_split, split_sizes, subset
from distrec.errors import DataError


def tables_of(rows: list[tuple[int, int, float, int]]) -> CanonicalTables:
    """CanonicalTables from (user, item, rating, timestamp) rows; items/users empty."""
    u, i, r, t = zip(*rows) if rows else ((), (), (), ())
    inter = pa.Table.from_pydict(
        {"user_id": list(u), "item_id": list(i), "rating": list(r), "timestamp": list(t)}, schema=INTERACTIONS
    )
    return CanonicalTables(inter, ITEMS.empty_table(), USERS.empty_table(), source="hand-built")


# Rows deliberately out of order. The global (timestamp, user, item) order is:
#   0: u1 i12 r4.0 t50 | 1: u1 i10 r5.0 t100 | 2: u1 i11 r3.0 t100 (tie with 1, item 10 < 11)
#   3: u2 i20 r4.0 t100 | 4: u2 i21 r1.0 t150 | 5: u1 i13 r4.0 t200
HAND = [
    (1, 13, 4.0, 200),
    (2, 21, 1.0, 150),
    (1, 11, 3.0, 100),
    (2, 20, 4.0, 100),
    (1, 10, 5.0, 100),
    (1, 12, 4.0, 50),
]


def test_ctr_samples_hand_example():
    got = build_ctr_samples(tables_of(HAND), min_history=2, label_threshold=4.0)
    assert got.schema == CTR_SAMPLES
    # user 2 has at most 1 earlier rating -> no samples; label 1 iff rating >= 4.0 (4.0 counts)
    assert got.to_pylist() == [
        dict(sample_id=2, user_id=1, item_id=11, rating=3.0, timestamp=100, label=0,
             history_item_ids=[12, 10], history_ratings=[4.0, 5.0]),
        dict(sample_id=5, user_id=1, item_id=13, rating=4.0, timestamp=200, label=1,
             history_item_ids=[12, 10, 11], history_ratings=[4.0, 5.0, 3.0]),
    ]


def test_ctr_samples_min_history_one_and_cap():
    got = build_ctr_samples(tables_of(HAND), min_history=1, label_threshold=4.5, max_history_stored=2)
    assert got.column("sample_id").to_pylist() == [1, 2, 4, 5]
    assert got.column("label").to_pylist() == [1, 0, 0, 0]
    assert got.column("history_item_ids").to_pylist() == [[12], [12, 10], [20], [10, 11]]
    assert got.column("history_ratings").to_pylist() == [[4.0], [4.0, 5.0], [4.0], [5.0, 3.0]]


def test_ctr_samples_none_when_no_user_has_enough_history():
    got = build_ctr_samples(tables_of(HAND), min_history=4, label_threshold=4.0)
    assert got.num_rows == 0 and got.schema == CTR_SAMPLES


def test_generative_samples_hand_example_capped():
    got = build_generative_samples(tables_of(HAND), max_history=2)
    assert got.schema == GENERATIVE_SAMPLES
    assert got.to_pylist() == [
        dict(sample_id=1, user_id=1, item_id=10, timestamp=100, history_item_ids=[12]),
        dict(sample_id=2, user_id=1, item_id=11, timestamp=100, history_item_ids=[12, 10]),
        dict(sample_id=4, user_id=2, item_id=21, timestamp=150, history_item_ids=[20]),
        dict(sample_id=5, user_id=1, item_id=13, timestamp=200, history_item_ids=[10, 11]),
    ]


def _random_rows(seed: int, n: int, users: int, items: int, times: int) -> list[tuple[int, int, float, int]]:
    rng = random.Random(seed)
    return [(rng.randrange(users), rng.randrange(items), float(rng.randint(1, 5)), rng.randrange(times)) for _ in range(n)]


def _naive_histories(rows, min_history, cap):
    """Reference: a per-row Python loop over the sorted rows (independent of the vectorised code)."""
    ordered = sorted(rows, key=lambda r: (r[3], r[0], r[1]))
    seen: dict[int, list] = defaultdict(list)
    out = []
    for pos, (u, i, r, t) in enumerate(ordered):
        if len(seen[u]) >= min_history:
            hist = seen[u] if cap is None else seen[u][-cap:]
            out.append((pos, u, i, r, t, [h[0] for h in hist], [h[1] for h in hist]))
        seen[u].append((i, r))
    return out


@pytest.mark.parametrize("cap, chunk", [(None, 1 << 24), (3, 1 << 24), (None, 7), (3, 1)])
def test_ctr_samples_match_naive_loop_on_random_ties(cap, chunk, monkeypatch):
    """Also with the histories gathered a few entries at a time (``chunk``): the same lists."""
    monkeypatch.setattr("distrec.data.samples._CHUNK_VALUES", chunk)
    # few distinct timestamps -> many ties within and across users; no duplicate (u, i, t) keys
    rows = list({(u, i, t): (u, i, r, t) for u, i, r, t in _random_rows(0, 600, 15, 40, 30)}.values())
    got = build_ctr_samples(tables_of(rows), min_history=5, label_threshold=4.0, max_history_stored=cap)
    expected = _naive_histories(rows, 5, cap)
    assert got.num_rows == len(expected) > 0
    assert got.column("sample_id").to_pylist() == [e[0] for e in expected]
    assert got.column("item_id").to_pylist() == [e[2] for e in expected]
    assert got.column("label").to_pylist() == [int(e[3] >= 4.0) for e in expected]
    assert got.column("history_item_ids").to_pylist() == [e[5] for e in expected]
    assert got.column("history_ratings").to_pylist() == [e[6] for e in expected]
    assert chunk > 1000 or got.column("history_item_ids").num_chunks > 10


def test_generative_matches_naive_loop():
    rows = list({(u, i, t): (u, i, r, t) for u, i, r, t in _random_rows(1, 400, 12, 30, 50)}.values())
    got = build_generative_samples(tables_of(rows), max_history=4)
    expected = _naive_histories(rows, 1, 4)
    assert got.column("sample_id").to_pylist() == [e[0] for e in expected]
    assert got.column("history_item_ids").to_pylist() == [e[5] for e in expected]
    assert got.num_rows == len(rows) - len({r[0] for r in rows})


# ---------------------------------------------------------------- k-core

def test_kcore_cascade_drops_a_user():
    # k=2: item z has one interaction -> dropped -> user C is left with one -> dropped.
    A, B, C, x, y, z = 1, 2, 3, 10, 11, 12
    rows = [(A, x, 1.0, 1), (A, y, 1.0, 2), (B, x, 1.0, 3), (B, y, 1.0, 4), (C, x, 1.0, 5), (C, z, 1.0, 6)]
    got = iterative_kcore(tables_of(rows).interactions, 2)
    assert list(zip(got.column("user_id").to_pylist(), got.column("item_id").to_pylist())) == [
        (A, x), (A, y), (B, x), (B, y)
    ]
    assert iterative_kcore(tables_of(rows).interactions, 0).num_rows == 6
    assert iterative_kcore(tables_of(rows).interactions, 3).num_rows == 0


def _naive_kcore(rows, k):
    rows = list(rows)
    while True:
        uc, ic = defaultdict(int), defaultdict(int)
        for u, i, *_ in rows:
            uc[u] += 1
            ic[i] += 1
        kept = [r for r in rows if uc[r[0]] >= k and ic[r[1]] >= k]
        if len(kept) == len(rows):
            return kept
        rows = kept


def test_five_core_property_and_matches_naive():
    rows = _random_rows(2, 3000, 400, 400, 10_000)  # ~7.5 per user/item: a real cascade
    got = iterative_kcore(tables_of(rows).interactions, 5)
    users = np.unique(got.column("user_id").to_numpy(), return_counts=True)[1]
    items = np.unique(got.column("item_id").to_numpy(), return_counts=True)[1]
    assert got.num_rows > 0 and users.min() >= 5 and items.min() >= 5
    naive = _naive_kcore(rows, 5)
    assert got.num_rows == len(naive) < len(rows)
    assert got.column("timestamp").to_pylist() == [r[3] for r in naive]  # same rows, same order

    # the generative builder applies it too
    gen = build_generative_samples(tables_of(rows), max_history=10, kcore=5)
    assert gen.num_rows == got.num_rows - len(users)


# ---------------------------------------------------------------- split

def _samples(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    ts = rng.integers(0, n // 3 + 1, n)  # many ties
    return pa.table({"sample_id": np.arange(n, dtype=np.int64)[::-1].copy(), "timestamp": ts,
                     "label": rng.integers(0, 2, n).astype(np.int8)})


def test_split_sizes_rounding():
    assert split_sizes(37, [0.8, 0.1, 0.1]) == (29, 3, 5)  # floor, floor, remainder
    assert split_sizes(970_009, [0.8, 0.1, 0.1]) == (776_007, 97_000, 97_002)  # ReLLa ML-1M
    assert split_sizes(100, [0.71, 0.29, 0.0]) == (71, 29, 0)  # 0.29*100 = 28.999...
    assert split_sizes(10, [1.0, 0.0, 0.0]) == (10, 0, 0)


def test_chronological_split_order_and_sizes():
    s = _samples(1001)
    parts = chronological_split(s, [0.8, 0.1, 0.1])
    assert [parts[k].num_rows for k in ("train", "valid", "test")] == [800, 100, 101]
    tr, va, te = (parts[k].column("timestamp").to_numpy() for k in ("train", "valid", "test"))
    assert tr.max() <= va.min() and va.max() <= te.min() and tr.max() <= te.min()
    keys = np.concatenate([np.stack([p.column("timestamp").to_numpy(), p.column("sample_id").to_numpy()], 1)
                           for p in parts.values()])
    assert sorted(map(tuple, keys)) == list(map(tuple, keys))  # ties broken by sample_id
    assert sorted(np.concatenate([p.column("sample_id").to_numpy() for p in parts.values()])) == list(range(1001))


def test_empty_split_raises_naming_dataset():
    with pytest.raises(DataError, match=r"toy \(kcore=5\).*'valid' is empty after filtering"):
        chronological_split(_samples(5), [0.8, 0.1, 0.1], where="toy (kcore=5)")
    parts = chronological_split(_samples(5), [0.8, 0.0, 0.2], where="toy")  # zero fraction: allowed
    assert parts["valid"].num_rows == 0 and parts["test"].num_rows == 1


def test_seeded_subsets_nest_and_keep_order():
    train = chronological_split(_samples(500), [0.8, 0.1, 0.1])["train"]
    small, big = subset(train, 50, seed=7), subset(train, 200, seed=7)
    ids = lambda t: t.column("sample_id").to_pylist()  # noqa: E731
    assert set(ids(small)) < set(ids(big)) and len(ids(small)) == 50
    assert subset(train, 50, seed=7).equals(small)  # deterministic
    assert set(ids(subset(train, 50, seed=8))) != set(ids(small))
    pos = {sid: k for k, sid in enumerate(ids(train))}
    assert [pos[s] for s in ids(big)] == sorted(pos[s] for s in ids(big))  # chronological order kept
    assert subset(train, None, seed=7) is train
    with pytest.raises(DataError, match="subset of 401 rows but it has 400"):
        subset(train, 401, seed=7)
    parts = apply_subsets(chronological_split(_samples(500), [0.8, 0.1, 0.1]), {"train": 20, "test": 10}, seed=7)
    assert [parts[k].num_rows for k in ("train", "valid", "test")] == [20, 50, 10]
    assert parts["train"].equals(subset(train, 20, seed=7))
