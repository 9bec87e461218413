"""Exactly once per epoch, for 1 and 2 ranks and sample counts that do not divide evenly.

The stream rule (``train.data_stream``): an epoch is a seeded permutation; optimiser step ``s``
takes rows ``[s·G, (s+1)·G)`` with ``G = world·micro·accum``; the ``n mod G`` rows left at the
end sit out that epoch (a fresh permutation next epoch). Checked here against that rule written
out independently, for the training stream and the padded evaluation stream.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from distrec.train.data_stream import epoch_order, eval_batches, train_micro_batches
from distrec.train.faults import consumed, record


def rows(n: int) -> dict[str, np.ndarray]:
    return {"sample_id": np.arange(1000, 1000 + n), "x": np.arange(n) * 2}


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("n", [64, 70, 79, 17])
def test_every_rank_takes_equal_steps_and_each_sample_is_seen_at_most_once(world, n):
    micro, accum, seed = 4, 2, 3
    g = world * micro * accum
    for epoch in range(3):
        per_rank = [list(train_micro_batches(rows(n), r, world, micro, accum, seed, epoch, 0)) for r in range(world)]
        assert len({len(steps) for steps in per_rank}) == 1  # equal step counts on every rank
        assert len(per_rank[0]) == n // g
        seen = Counter(int(i) for steps in per_rank for mbs in steps for mb in mbs for i in mb["sample_id"])
        assert all(c == 1 for c in seen.values())  # no duplicates at shard or step boundaries
        expected = 1000 + epoch_order(n, seed, epoch)[: (n // g) * g]
        assert sorted(seen) == sorted(expected.tolist())  # exactly the rule's rows; the remainder sits out
        for steps in per_rank:  # columns stay aligned with their rows
            for mbs in steps:
                for mb in mbs:
                    assert np.array_equal(mb["x"], (mb["sample_id"] - 1000) * 2)


def test_remainder_rows_change_between_epochs():
    n, g = 70, 16
    left_out = [set(epoch_order(n, 3, e)[(n // g) * g:].tolist()) for e in range(4)]
    assert all(len(s) == n % g for s in left_out)
    assert len(set.union(*left_out)) > n % g  # not the same rows every epoch


@pytest.mark.parametrize("world", [1, 2])
def test_resuming_mid_epoch_continues_with_exactly_the_unconsumed_rows(world):
    n, micro, accum = 79, 4, 2
    full = [mb for r in range(world) for step in train_micro_batches(rows(n), r, world, micro, accum, 5, 1, 0)
            for mb in step]
    head = [mb for r in range(world) for step in list(train_micro_batches(rows(n), r, world, micro, accum, 5, 1, 0))[:3]
            for mb in step]
    tail = [mb for r in range(world) for step in train_micro_batches(rows(n), r, world, micro, accum, 5, 1, 3)
            for mb in step]
    ids = lambda mbs: sorted(int(i) for mb in mbs for i in mb["sample_id"])  # noqa: E731
    assert ids(head + tail) == ids(full)
    assert not set(ids(head)) & set(ids(tail))


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("n", [1, 15, 16, 33])
def test_evaluation_covers_every_row_once_with_equal_forwards(world, n):
    batch = 8
    real: list[int] = []
    forwards = []
    for r in range(world):
        got = list(eval_batches(rows(n), r, world, batch))
        forwards.append(len(got))
        for b, n_real in got:
            assert len(b["sample_id"]) == batch  # padded to a full batch
            real.extend(int(i) for i in b["sample_id"][:n_real])
    assert len(set(forwards)) == 1
    assert sorted(real) == list(range(1000, 1000 + n))


def test_consumption_records_keep_the_last_run_of_a_step(tmp_path):
    record(tmp_path, 0, 0, 1, [1, 2])
    record(tmp_path, 1, 0, 1, [3, 4])
    record(tmp_path, 0, 0, 2, [9, 9])  # lost when the worker died: re-run below
    record(tmp_path, 0, 0, 2, [5, 6])
    record(tmp_path, 0, 1, 1, [2, 1])
    by_epoch, raw = consumed(tmp_path)
    assert raw == 5
    assert sorted(by_epoch[0]) == [1, 2, 3, 4, 5, 6] and sorted(by_epoch[1]) == [1, 2]


def _lengths(n: int, seed: int = 9) -> np.ndarray:
    return np.random.default_rng(seed).integers(20, 400, size=n)


@pytest.mark.parametrize("world,n,group_steps", [(1, 70, 2), (2, 200, 3), (2, 333, 32)])
def test_length_grouped_epochs_train_the_same_rows_once_and_resume_exactly(world, n, group_steps):
    """Grouping reorders the epoch's rows, never changes which rows train or how many steps."""
    micro, accum, seed = 4, 2, 3
    lengths = _lengths(n)
    for epoch in range(2):
        plain = [list(train_micro_batches(rows(n), r, world, micro, accum, seed, epoch, 0)) for r in range(world)]
        grouped = [list(train_micro_batches(rows(n), r, world, micro, accum, seed, epoch, 0, lengths, group_steps))
                   for r in range(world)]
        ids = lambda per_rank: sorted(int(i) for steps in per_rank for mbs in steps for mb in mbs for i in mb["sample_id"])  # noqa: E731
        assert ids(grouped) == ids(plain) and len(set(ids(grouped))) == len(ids(grouped))
        assert [len(s) for s in grouped] == [len(s) for s in plain]
        again = [list(train_micro_batches(rows(n), r, world, micro, accum, seed, epoch, 0, lengths, group_steps))
                 for r in range(world)]
        tail = [list(train_micro_batches(rows(n), r, world, micro, accum, seed, epoch, 3, lengths, group_steps))
                for r in range(world)]
        for r in range(world):
            flat = lambda steps: [i for mbs in steps for mb in mbs for i in mb["sample_id"].tolist()]  # noqa: E731
            assert flat(again[r]) == flat(grouped[r])  # deterministic
            assert flat(tail[r]) == flat(grouped[r][3:])  # a resume at step 3 continues the same order


def test_length_grouping_cuts_padding():
    """Each micro-batch's rows come from one length-sorted window: far less padding than random."""
    from distrec.train.data_stream import padding_counts

    n, world, micro, accum = 4096, 2, 4, 2
    lengths = _lengths(n)
    data = {"sample_id": np.arange(n), "input_ids": np.array([np.zeros(k) for k in lengths], dtype=object)}

    def fraction(grouped: bool) -> float:
        pad = slots = 0
        for r in range(world):
            for mbs in train_micro_batches(data, r, world, micro, accum, 0, 0, 0, lengths if grouped else None, 32):
                p, s = padding_counts(mbs)
                pad, slots = pad + p, slots + s
        return pad / slots

    plain, grouped = fraction(False), fraction(True)
    # Random micro-batches of 4 lengths uniform on [20, 400): E[max] = 20 + 380·4/5, mean 210, so
    # padding ≈ 1 - 210/324 ≈ 0.35; sorted windows of 512 rows leave a few tokens a row.
    assert 0.30 < plain < 0.40 and grouped < 0.02, (plain, grouped)


def test_shard_rows_lengths_equal_the_list_lengths(tmp_path):
    import pyarrow as pa
    import pyarrow.ipc as ipc

    from distrec.train.row_source import ShardRows

    lengths = _lengths(3000)
    table = pa.table({"sample_id": np.arange(3000), "input_ids": pa.array([[1] * int(k) for k in lengths], pa.list_(pa.int32()))})
    for name, part, chunk in (("a", table.slice(0, 1200), 500), ("b", table.slice(1200), 700)):
        with pa.OSFile(str(tmp_path / f"{name}.arrow"), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
            writer.write_table(part, max_chunksize=chunk)
    source = ShardRows([tmp_path / "a.arrow", tmp_path / "b.arrow"])
    assert source.lengths().tolist() == lengths.tolist()
    assert source.head(1300).lengths().tolist() == lengths[:1300].tolist()
