"""train.share_prefix: a micro-batch's common prompt prefix runs once (objectives.shared_prefix).

Reference: the plain left-padded forward of the same rows. In float64 with float64 norms the
logits, losses and gradients agree to float64 rounding; the token counts are counted by hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import float64_llama, norms_in_float64

from distrec.data.batching import left_pad
from distrec.objectives.cft import IGNORE_INDEX, cft_logits, cft_loss_sums, combine, shared_cft_logits
from distrec.objectives.ctr import answer_logits, shared_answer_logits
from distrec.objectives.shared_prefix import _trunk, enable_trunk_attention, group_prefix

PAD, EOS = 0, 1
HEADER = [5, 6, 7, 8]  # the template's opening, common to every prompt
CTR_ROWS = [HEADER + [9, 10, 11], HEADER + [12, 13], HEADER + [14, 15, 16, 17, 18], HEADER + [19]]
RESPONSES = [[30, 31, EOS], [32, EOS], [33, 34, 35, EOS], [36, EOS]]
FACTUAL = [HEADER + [20, 21] + RESPONSES[0], HEADER + [22] + RESPONSES[1],
           HEADER + [23, 24, 25, 26] + RESPONSES[2], HEADER + [27, 28] + RESPONSES[3]]
# The counterfactual prompts share the header's first two tokens with the factual ones, then
# their own instruction (3 tokens); only the responses differ between instances.
COUNTERFACTUAL = [[5, 6, 37, 38, 39] + r for r in RESPONSES]


def labelled(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, mask = left_pad(rows, PAD)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for i, r in enumerate(RESPONSES):
        labels[i, ids.shape[1] - len(r):] = torch.tensor(r)
    return ids, mask, labels


@pytest.fixture()
def model():
    model = norms_in_float64(float64_llama())
    enable_trunk_attention(model)
    return model


def grads_of(model, loss_fn) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad()
    loss = loss_fn()
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in model.parameters()]


def assert_same(got, want):
    assert got[0] == pytest.approx(want[0], rel=1e-12, abs=1e-12)
    for g, w in zip(got[1], want[1]):
        assert torch.allclose(g, w, rtol=1e-9, atol=1e-12)


def test_group_prefix_by_hand():
    ids, mask = left_pad(CTR_ROWS, PAD)
    assert group_prefix(ids, mask, need=1) == 4  # the header; the shortest row keeps its last token
    assert group_prefix(ids, mask, need=2) == 3  # [5, 6, 7, 8, 19] must keep 2 tokens of its own
    assert group_prefix(ids, mask, need=torch.tensor([1, 1, 1, 5])) == 0
    assert group_prefix(ids, mask, need=1, last=6) == 3  # the last 6 of 9 columns lie after it
    different, dmask = left_pad([[5, 6, 7], [4, 6, 7]], PAD)
    assert group_prefix(different, dmask, need=1) == 0


def test_trunk_of_two_groups_continues_the_positions_where_the_second_departs():
    ids, positions, visible, mask = _trunk([torch.tensor([5, 6, 7, 8]), torch.tensor([5, 6, 37, 38, 39])])
    assert ids.tolist() == [5, 6, 7, 8, 37, 38, 39]
    assert positions.tolist() == [0, 1, 2, 3, 2, 3, 4]
    assert visible.int().tolist() == [[1, 1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 1, 1, 1]]
    assert mask[4].int().tolist() == [1, 1, 0, 0, 1, 0, 0]  # token 37 sees 5, 6 and itself
    assert mask[3].int().tolist() == [1, 1, 1, 1, 0, 0, 0]


def test_ctr_answer_logits_loss_and_gradients_equal_the_plain_forward(model):
    ids, mask = left_pad(CTR_ROWS, PAD)
    answers = torch.tensor([3, 4, 3, 4])
    ce = torch.nn.functional.cross_entropy
    with torch.no_grad():
        plain = answer_logits(model, ids, mask)
        shared, n_tokens = shared_answer_logits(model, ids, mask)
    assert torch.allclose(shared, plain, rtol=1e-12, atol=1e-12)
    assert n_tokens == 4 + (3 + 2 + 5 + 1)  # the header once, then each row's tail
    want = grads_of(model, lambda: ce(answer_logits(model, ids, mask), answers))
    assert_same(grads_of(model, lambda: ce(shared_answer_logits(model, ids, mask)[0], answers)), want)


@pytest.mark.parametrize("with_cf, share_factual", [(False, True), (True, True), (True, False)])
def test_sft_and_cft_losses_and_gradients_equal_the_plain_forwards(model, with_cf, share_factual):
    """``share_factual=False`` is CFT's default without ``train.share_prefix`` (``cft.share_cf_prompt``):
    only the counterfactual prompt joins the trunk, every factual row runs whole."""
    f_ids, f_mask, f_labels = labelled(FACTUAL)
    cf_ids, cf_mask, _ = labelled(COUNTERFACTUAL) if with_cf else (None, None, None)

    def loss(shared: bool):
        if shared:
            z_f, z_cf, y, _ = shared_cft_logits(model, f_ids, f_mask, f_labels, cf_ids, cf_mask, share_factual)
        else:
            z_f, z_cf, y = cft_logits(model, f_ids, f_mask, f_labels, cf_ids, cf_mask, PAD, stacked=False)
        return combine(cft_loss_sums(z_f, z_cf, y), lam=0.1)

    assert_same(grads_of(model, lambda: loss(True)), grads_of(model, lambda: loss(False)))
    with torch.no_grad():
        n_tokens = shared_cft_logits(model, f_ids, f_mask, f_labels, cf_ids, cf_mask, share_factual)[3]
    factual = 4 + sum(len(r) - 4 for r in FACTUAL) if share_factual else sum(len(r) for r in FACTUAL)
    # the counterfactual rows: 37, 38 join the trunk (5, 6 are there already when the factual header
    # is; else they join it too); 39 predicts each response's first token, so it stays in every row's
    # tail with the response
    trunk_cf = 2 if share_factual else 4
    assert n_tokens == factual + (trunk_cf + sum(1 + len(r) for r in RESPONSES) if with_cf else 0)


def test_nothing_shared_falls_back_to_the_plain_forward(model):
    one, one_mask = left_pad(CTR_ROWS[:1], PAD)
    assert shared_answer_logits(model, one, one_mask) is None
    apart, apart_mask = left_pad([[2, 3, 4], [3, 3, 4]], PAD)
    assert shared_answer_logits(model, apart, apart_mask) is None


def test_a_trunk_row_of_padding_queries_stays_finite(model):
    """Rows of very different lengths: the short rows' tail columns are mostly masked (their own
    header and padding), which must neither produce NaN nor change the real rows."""
    rows = [HEADER + list(range(9, 29)), HEADER + [30]]
    ids, mask = left_pad(rows, PAD)
    with torch.no_grad():
        got, _ = shared_answer_logits(model, ids, mask)
        want = answer_logits(model, ids, mask)
    assert torch.isfinite(got).all() and torch.allclose(got, want, rtol=1e-12, atol=1e-12)


def test_activation_checkpointing_recomputes_the_packed_row_to_the_same_gradients(model):
    ids, mask = left_pad(CTR_ROWS, PAD)
    answers = torch.tensor([3, 4, 3, 4])
    ce = torch.nn.functional.cross_entropy
    want = grads_of(model, lambda: ce(answer_logits(model, ids, mask), answers))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()  # checkpointing acts in training mode; the model has no dropout
    assert_same(grads_of(model, lambda: ce(shared_answer_logits(model, ids, mask)[0], answers)), want)


def test_a_model_without_trunk_attention_is_refused():
    ids, mask = left_pad(CTR_ROWS, PAD)
    with pytest.raises(RuntimeError, match="enable_trunk_attention"):
        shared_answer_logits(float64_llama(), ids, mask)


@pytest.mark.parametrize("extra, key", [
    (["spa.enabled=true"], "spa.enabled"),
    (["adapter.kind=cflora", "adapter.cflora.mode=generated"], "generated"),
])
def test_share_prefix_refuses_rows_that_differ_from_the_first_token(extra, key):
    from distrec.config import load_job_config
    from distrec.errors import ConfigError

    with pytest.raises(ConfigError, match="tiny.yaml.*train.share_prefix") as err:
        load_job_config(Path(__file__).resolve().parents[1] / "jobs" / "tiny.yaml", ["train.share_prefix=true", *extra])
    assert key in str(err.value)


def test_cft_task_runs_the_counterfactual_prompt_once_by_default(model):
    """``cft.share_cf_prompt`` (default): the task's loss equals the packed branches' (``false``) to
    float64 rounding, and ``data/forward_tokens`` counts every factual token, the counterfactual
    prompt once (5, 6, 37, 38) and each instance's 39 + response."""
    from distrec.config import CftConfig
    from distrec.objectives.tasks import Batchify, GenerativeTask

    labels = [[IGNORE_INDEX] * (len(x) - len(r)) + r for x, r in zip(FACTUAL, RESPONSES)]
    mb = {"input_ids": FACTUAL, "cf_input_ids": COUNTERFACTUAL, "labels": labels}
    out = {}
    for share in (True, False):
        task = GenerativeTask(CftConfig(), Batchify(PAD, torch.device("cpu")), share_cf_prompt=share)
        out[share] = task.micro_loss(model, mb, task.normalisers([mb]))
    assert float(out[True][0].detach()) == pytest.approx(float(out[False][0].detach()), rel=1e-12)
    assert out[True][1]["forward_tokens"] == sum(map(len, FACTUAL)) + 4 + sum(1 + len(r) for r in RESPONSES)
    # packed: each instance's counterfactual row after the two header tokens it shares with its factual row
    assert out[False][1]["forward_tokens"] == sum(map(len, FACTUAL)) + 4 * 3 + sum(len(r) for r in RESPONSES)
