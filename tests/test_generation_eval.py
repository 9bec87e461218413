"""Equal, padded per-rank shares for collective forwards, and prompt recovery from token rows."""

from __future__ import annotations

import numpy as np

from distrec.eval.generation import equal_share, prompt_texts


def test_equal_share_covers_every_index_once_with_equal_lengths():
    for n in (0, 1, 5, 6, 7):
        shares = [equal_share(n, r, 3) for r in range(3)]
        assert len({len(idx) for idx, _ in shares}) == 1  # same number of forwards on every rank
        real = np.concatenate([idx[:k] for idx, k in shares])
        assert sorted(real.tolist()) == list(range(n))


def test_prompt_texts_keep_only_unlabelled_tokens():
    class Tok:
        def decode(self, ids, skip_special_tokens=False):
            return " ".join(map(str, ids))

    rows = prompt_texts(Tok(), [np.array([5, 6, 7, 8])], [np.array([-100, -100, 7, 8])])
    assert rows == ["5 6"]
