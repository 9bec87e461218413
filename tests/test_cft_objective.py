"""CFT objective (spec methods.md §1.3, §4 "CFT"): token weights, effect-loss algebra,
reductions, global normalisation across micro-batches, gradient switches, and the
left-padded single-forward plumbing on a tiny random Llama (no downloads)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from tiny_models import float64_llama, norms_in_float64

from distrec.objectives.cft import (
    IGNORE_INDEX,
    cft_logits,
    cft_loss_sums,
    combine,
    keep_length,
    label_normalisers,
    pack_branches,
    shared_prefix_lengths,
    response_labels,
    response_logits,
    split_branches,
    stack_branches,
    token_weights,
)

V = 11


def row_mask(n_prompt: int, n_label: int, n_pad: int = 0) -> torch.Tensor:
    return torch.tensor([False] * (n_pad + n_prompt) + [True] * n_label)


# ---------------------------------------------------------------------------- weights


@pytest.mark.parametrize(
    "n, expected",
    [
        (1, [1.0]),
        (2, [1.0, 0.25]),
        (5, [1.0, 0.8125, 0.625, 0.4375, 0.25]),
        (8, [1.0 - i * 0.75 / 7 for i in range(8)]),
    ],
)
def test_linear_weights_hand_values(n, expected):
    mask = row_mask(n_prompt=3, n_label=n, n_pad=2).unsqueeze(0)
    w = token_weights(mask)
    assert w.dtype == torch.float32 and not w.requires_grad
    assert torch.all(w[0, :5] == 0)  # pad + prompt
    assert torch.allclose(w[0, 5:], torch.tensor(expected), atol=1e-7)
    if n >= 2:
        steps = w[0, 5:].diff()
        assert torch.allclose(steps, torch.full_like(steps, -(1 - 0.25) / (n - 1)), atol=1e-7)


def test_weights_per_row_and_zero_off_labels():
    mask = torch.stack([row_mask(2, 5), row_mask(5, 2), row_mask(6, 1)])
    w = token_weights(mask)
    assert torch.allclose(w[0, 2:], torch.tensor([1.0, 0.8125, 0.625, 0.4375, 0.25]))
    assert torch.allclose(w[1, 5:], torch.tensor([1.0, 0.25]))
    assert w[2, 6] == 1.0
    assert torch.all(w[~mask] == 0)
    assert torch.all(token_weights(torch.zeros(2, 4, dtype=torch.bool)) == 0)


def test_linear_beta_parameter_and_uniform():
    mask = row_mask(1, 3).unsqueeze(0)
    assert torch.allclose(token_weights(mask, beta=0.5)[0, 1:], torch.tensor([1.0, 0.75, 0.5]))
    assert torch.all(token_weights(mask, beta=1.0)[0, 1:] == 1)
    assert torch.all(token_weights(mask, rule="uniform")[0, 1:] == 1)
    with pytest.raises(ValueError):
        token_weights(mask, rule="cubic")


def test_legacy_weights_hand_values():
    mask = row_mask(2, 4).unsqueeze(0)
    # w_t = 1 - t / (3.6 * 4) = 1 - t / 14.4
    expected = [1 - 1 / 14.4, 1 - 2 / 14.4, 1 - 3 / 14.4, 1 - 4 / 14.4]
    w = token_weights(mask, rule="legacy")
    assert torch.allclose(w[0, 2:], torch.tensor(expected), atol=1e-6)
    assert torch.all(w[0, :2] == 0)
    assert math.isclose(float(w[0, -1]), 1 - 1 / 3.6, rel_tol=1e-6)
    w2 = token_weights(mask, beta=2.0, rule="legacy")
    assert torch.allclose(w2[0, 2:], torch.tensor([1 - 1 / 8, 1 - 2 / 8, 1 - 3 / 8, 1 - 4 / 8]))


# ----------------------------------------------------------------------- effect algebra


def rand_case(seed=0, B=3, n=5):
    g = torch.Generator().manual_seed(seed)
    z_f = torch.randn(B, n, V, generator=g) * 2
    z_cf = torch.randn(B, n, V, generator=g) * 2
    labels = torch.randint(0, V, (B, n), generator=g)
    labels[0, :2] = IGNORE_INDEX  # shorter response in row 0
    labels[2, :1] = IGNORE_INDEX
    return z_f, z_cf, labels


def per_token_lc(z_f, z_cf, labels):
    w = torch.ones(labels.shape)
    valid = labels != IGNORE_INDEX
    out = []
    for b, t in valid.nonzero().tolist():
        one = torch.zeros_like(w)
        one[b, t] = 1.0
        out.append(float(cft_loss_sums(z_f, z_cf, labels, one)["lc_sum"]))
    return torch.tensor(out)


def test_lc_invariant_to_per_position_constants():
    z_f, z_cf, labels = rand_case()
    base = per_token_lc(z_f, z_cf, labels)
    c = torch.randn(z_f.shape[0], z_f.shape[1], 1) * 5  # differs per position
    assert torch.allclose(per_token_lc(z_f + c, z_cf, labels), base, atol=1e-5)
    assert torch.allclose(per_token_lc(z_f, z_cf - 3 * c, labels), base, atol=1e-5)


def test_lc_equals_probability_ratio_formula():
    z_f, z_cf, labels = rand_case(1)
    got = per_token_lc(z_f, z_cf, labels)
    p_f, p_cf = torch.softmax(z_f.double(), -1), torch.softmax(z_cf.double(), -1)
    ratio = p_f / p_cf
    want = []
    for b, t in (labels != IGNORE_INDEX).nonzero().tolist():
        y = labels[b, t]
        want.append(-math.log(float(ratio[b, t, y] / ratio[b, t].sum())))
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float32), atol=1e-5)


def test_constant_cf_logits_give_lc_equal_ln():
    z_f, _, labels = rand_case(2)
    z_cf = torch.randn(z_f.shape[0], z_f.shape[1], 1).expand_as(z_f)  # constant over the vocab
    s = cft_loss_sums(z_f, z_cf, labels)
    assert torch.allclose(s["lc_sum"], s["ln_sum"], atol=1e-5)


# --------------------------------------------------------------------------- reductions


def test_lambda_zero_is_weighted_sft():
    z_f, z_cf, labels = rand_case(3)
    valid = labels != IGNORE_INDEX
    w = token_weights(valid)
    ce = F.cross_entropy(z_f.reshape(-1, V), labels.reshape(-1), reduction="none").reshape(labels.shape)
    want = (w * ce).sum() / w.sum()
    s = cft_loss_sums(z_f, z_cf, labels, w)
    assert torch.allclose(combine(s, lam=0.0), want, atol=1e-6)
    assert not torch.allclose(combine(s, lam=0.1), want)
    assert torch.allclose(combine(s, lam=0.1), want + 0.1 * s["lc_sum"] / w.sum())


def test_lambda_zero_beta_one_is_mean_token_ce():
    z_f, z_cf, labels = rand_case(4)
    w = token_weights(labels != IGNORE_INDEX, beta=1.0)
    s = cft_loss_sums(z_f, z_cf, labels, w)
    want = F.cross_entropy(z_f.reshape(-1, V), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    assert torch.allclose(combine(s, lam=0.0), want, atol=1e-6)
    # weight_both=False: L_n is the plain mean token CE whatever the weights
    s25 = cft_loss_sums(z_f, z_cf, labels)
    assert torch.allclose(combine(s25, lam=0.0, weight_both=False), want, atol=1e-6)


def test_eval_loss_excludes_lc_and_needs_no_cf_branch():
    z_f, z_cf, labels = rand_case(5)
    s = cft_loss_sums(z_f, z_cf, labels)
    s_no_cf = cft_loss_sums(z_f, None, labels)
    assert float(s_no_cf["lc_sum"]) == 0.0
    assert torch.allclose(eval_loss(s), s["ln_sum"] / s["weight_sum"])
    assert torch.allclose(eval_loss(s_no_cf), eval_loss(s))
    assert not torch.allclose(eval_loss(s), combine(s, lam=0.1))
    assert torch.allclose(eval_loss(s, weight_both=False), s["ln_plain_sum"] / s["tokens"])


def test_sums_and_normalisers_bookkeeping():
    z_f, z_cf, labels = rand_case(6)
    s = cft_loss_sums(z_f, z_cf, labels)
    norm = label_normalisers(labels)
    assert float(s["tokens"]) == float((labels != IGNORE_INDEX).sum()) == float(norm["tokens"])
    assert torch.allclose(s["weight_sum"], norm["weight_sum"])
    # Rows with n = 3, 5, 4 label tokens
    expected_w = (1 + 0.625 + 0.25) + (1 + 0.8125 + 0.625 + 0.4375 + 0.25) + (1 + 0.75 + 0.5 + 0.25)
    assert math.isclose(float(norm["weight_sum"]), expected_w, rel_tol=1e-6)


def test_token_level_normalisation_reweights_by_length():
    """Σw·ℓ/Σw over the batch, not a mean of per-sequence losses (spec §4 CFT.5)."""
    z_f, z_cf, labels = rand_case(7)
    w = token_weights(labels != IGNORE_INDEX)
    ce = F.cross_entropy(z_f.reshape(-1, V), labels.reshape(-1), reduction="none").reshape(labels.shape)
    per_seq = ((w * ce).sum(1) / w.sum(1)).mean()
    got = combine(cft_loss_sums(z_f, z_cf, labels, w), lam=0.0)
    assert torch.allclose(got, (w * ce).sum() / w.sum(), atol=1e-6)
    assert not torch.allclose(got, per_seq, atol=1e-4)


# ------------------------------------------------------------- global normalisation / grads


class TinyLinearLM(torch.nn.Module):
    """Logits = features @ W: enough parameters to compare gradients."""

    def __init__(self, d=6):
        super().__init__()
        g = torch.Generator().manual_seed(11)
        self.W = torch.nn.Parameter(torch.randn(d, V, generator=g))

    def forward(self, x):
        return x @ self.W


def feature_batch(seed=8, B=4, n=6, d=6):
    g = torch.Generator().manual_seed(seed)
    x_f, x_cf = torch.randn(B, n, d, generator=g), torch.randn(B, n, d, generator=g)
    labels = torch.randint(0, V, (B, n), generator=g)
    for b, n_ignored in enumerate([0, 3, 1, 4]):  # unequal response lengths
        labels[b, :n_ignored] = IGNORE_INDEX
    return x_f, x_cf, labels


@pytest.mark.parametrize("weight_both", [True, False])
def test_microbatch_split_equals_whole_batch(weight_both):
    x_f, x_cf, labels = feature_batch()
    lam = 0.1

    model = TinyLinearLM()
    whole = combine(cft_loss_sums(model(x_f), model(x_cf), labels), lam, weight_both)
    whole.backward()
    g_whole = model.W.grad.clone()

    parts = [slice(0, 1), slice(1, 4)]  # unequal micro-batches ("ranks")
    model.W.grad = None
    sums = [cft_loss_sums(model(x_f[p]), model(x_cf[p]), labels[p]) for p in parts]
    summed = add_sums(*sums)
    assert torch.allclose(combine(summed, lam, weight_both), whole, atol=1e-6)

    # Grad accumulation: each micro-batch backwards its share with the global normalisers.
    norms = add_sums(*[label_normalisers(labels[p]) for p in parts])
    shares = []
    for p in parts:
        share = combine(cft_loss_sums(model(x_f[p]), model(x_cf[p]), labels[p]), lam, weight_both, norms)
        share.backward()
        shares.append(share.detach())
    assert torch.allclose(sum(shares), whole.detach(), atol=1e-6)
    assert torch.allclose(model.W.grad, g_whole, atol=1e-6)


def test_cf_grad_switch():
    z_f, z_cf, labels = rand_case(9)
    for cf_grad in (True, False):
        zf = z_f.clone().requires_grad_(True)
        zc = z_cf.clone().requires_grad_(True)
        combine(cft_loss_sums(zf, zc, labels, cf_grad=cf_grad)).backward()
        assert zf.grad is not None and zf.grad.abs().sum() > 0
        if cf_grad:
            assert zc.grad is not None and zc.grad.abs().sum() > 0
        else:
            assert zc.grad is None


def test_nan_logits_off_labels_do_not_leak():
    z_f, z_cf, labels = rand_case(10)
    z_f = z_f.clone()
    z_f[labels == IGNORE_INDEX] = float("nan")
    zf = z_f.requires_grad_(True)
    loss = combine(cft_loss_sums(zf, z_cf, labels))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zf.grad).all()


# ------------------------------------------------------------------ tiny Llama plumbing


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


PAD, EOS = 0, 1


def left_padded(rows: list[list[int]], resp_lens: list[int]):
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), PAD)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE_INDEX)
    for i, (r, k) in enumerate(zip(rows, resp_lens)):
        ids[i, T - len(r):] = torch.tensor(r)
        mask[i, T - len(r):] = 1
        labels[i, T - k:] = torch.tensor(r[-k:])
    return ids, mask, labels


def cft_rows():
    """Factual prompts (with history) longer than counterfactual ones; shared responses."""
    g = torch.Generator().manual_seed(3)
    resp = [[5, 6, 7, EOS], [8, 9, EOS], [10, 11, 12, 13, 14, EOS]]
    f_prompt_lens, cf_prompt_lens = [9, 12, 6], [4, 3, 5]
    rand = lambda n: torch.randint(2, 40, (n,), generator=g).tolist()
    f = left_padded([rand(p) + r for p, r in zip(f_prompt_lens, resp)], [len(r) for r in resp])
    cf = left_padded([rand(p) + r for p, r in zip(cf_prompt_lens, resp)], [len(r) for r in resp])
    return f, cf


def test_response_logits_equal_full_sequence_slice(llama):
    (ids, mask, labels), _ = cft_rows()
    n = keep_length(labels)
    assert n == 6
    T = ids.shape[1]
    with torch.no_grad():
        full = llama(input_ids=ids, attention_mask=mask,
                     position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
        got = response_logits(llama, ids, mask, n)
    assert got.shape == (3, n, 40)
    assert torch.allclose(got, full[:, T - n - 1:T - 1], atol=1e-5)
    y = response_labels(labels, n)
    # column j of the logits predicts token T-n+j, which is exactly y[:, j]
    assert torch.equal(y, labels[:, T - n:])
    assert torch.equal(y[y != IGNORE_INDEX], ids[:, T - n:][y != IGNORE_INDEX])
    with pytest.raises(ValueError):
        response_labels(labels, n - 1)


def test_stack_branches_aligns_responses_and_matches_separate_forwards(llama):
    (f_ids, f_mask, f_lab), (cf_ids, cf_mask, cf_lab) = cft_rows()
    ids, mask = stack_branches(f_ids, f_mask, cf_ids, cf_mask, PAD)
    B, T = f_ids.shape[0], max(f_ids.shape[1], cf_ids.shape[1])
    assert ids.shape == mask.shape == (2 * B, T)
    n = keep_length(f_lab)
    top, bottom = split_branches(ids)
    # response tokens sit in the same columns of both halves
    assert torch.equal(top[:, -n:][response_labels(f_lab, n) != IGNORE_INDEX],
                       bottom[:, -n:][response_labels(f_lab, n) != IGNORE_INDEX])
    assert torch.equal(mask.sum(1), torch.cat([f_mask.sum(1), cf_mask.sum(1)]))

    with torch.no_grad():
        z_f, z_cf, y = cft_logits(llama, f_ids, f_mask, f_lab, cf_ids, cf_mask, PAD, cf_labels=cf_lab)
        sep_f = response_logits(llama, f_ids, f_mask, n)
        sep_cf = response_logits(llama, cf_ids, cf_mask, n)
        z_f2, z_cf2, _ = cft_logits(llama, f_ids, f_mask, f_lab, cf_ids, cf_mask, PAD, stacked=False)
    at = y != IGNORE_INDEX
    assert torch.allclose(z_f[at], sep_f[at], atol=1e-5)
    assert torch.allclose(z_cf[at], sep_cf[at], atol=1e-5)
    assert torch.allclose(z_f2[at], sep_f[at], atol=1e-6) and torch.allclose(z_cf2[at], sep_cf[at], atol=1e-6)
    assert not torch.allclose(z_f[at], z_cf[at])  # the history changes the prediction


def test_cft_logits_end_to_end_backward(llama):
    (f_ids, f_mask, f_lab), (cf_ids, cf_mask, cf_lab) = cft_rows()
    llama.zero_grad()
    z_f, z_cf, y = cft_logits(llama, f_ids, f_mask, f_lab, cf_ids, cf_mask, PAD)
    loss = combine(cft_loss_sums(z_f, z_cf, y))
    loss.backward()
    assert torch.isfinite(loss)
    assert llama.model.embed_tokens.weight.grad.abs().sum() > 0
    llama.zero_grad()
    # misaligned counterfactual labels are refused
    bad = cf_lab.clone()
    bad[0, -2] = 3
    with pytest.raises(ValueError):
        cft_logits(llama, f_ids, f_mask, f_lab, cf_ids, cf_mask, PAD, cf_labels=bad)


def eval_loss(
    sums: Mapping[str, torch.Tensor],
    weight_both: bool = True,
    normalisers: Mapping[str, torch.Tensor | float] | None = None,
) -> torch.Tensor:
    """The oracle of the evaluation loss: = ``L_n`` only (the authors add ``L_c`` only in training); weighted as
    in training when ``weight_both`` (the authors' eval loss carries the weights too)."""
    return combine(sums, lam=0.0, weight_both=weight_both, normalisers=normalisers)


def add_sums(*parts: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Key-wise sum of several :func:`cft_loss_sums` / :func:`label_normalisers` dicts."""
    if not parts:
        raise ValueError("add_sums needs at least one dict")
    keys = parts[0].keys()
    return {k: sum((p[k] for p in parts[1:]), parts[0][k]) for k in keys}


def shared_prefix_rows():
    """Counterfactual prompts that begin with the factual prompt's first tokens (one preamble for
    both branches): row 0 shares 4 tokens then differs; row 1 is the factual row without its
    history, so it shares its whole prompt (3 tokens); row 2 shares nothing."""
    f, cf, resp = _shared_prefix_lists()
    return left_padded(f, [len(r) for r in resp]), left_padded(cf, [len(r) for r in resp])


def _shared_prefix_lists():
    resp = [[5, 6, 7, EOS], [8, 9, EOS], [10, 11, 12, 13, 14, EOS]]
    f = [[20, 21, 22, 23, 30, 31, 32, 24], [25, 26, 27, 33, 34, 35, 36, 37], [28, 29, 38]]
    cf = [[20, 21, 22, 23, 24, 39], [25, 26, 27], [2, 3, 4, 5]]
    return [p + r for p, r in zip(f, resp)], [p + r for p, r in zip(cf, resp)], resp


def _loss_and_grads(model, trainable, rows=cft_rows, **layout):
    (f_ids, f_mask, f_lab), (cf_ids, cf_mask, _) = rows()
    model.zero_grad()
    z_f, z_cf, y = cft_logits(model, f_ids, f_mask, f_lab, cf_ids, cf_mask, PAD, **layout)
    loss = combine(cft_loss_sums(z_f, z_cf, y), lam=0.1)
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in trainable]


@pytest.mark.parametrize("rows", [cft_rows, shared_prefix_rows])
def test_packed_branches_give_the_separate_forwards_loss_and_gradients(rows):
    """Packing (one row per instance, the shared prefix computed once) against the reference of
    two plain forwards, each row in its own left-padded batch, and against the stacked [2B, T]
    layout: equal to float64 rounding."""
    model = norms_in_float64(float64_llama())
    params = [p for p in model.parameters()]
    ref_loss, ref_grads = _loss_and_grads(model, params, rows, stacked=False)
    for layout in ({"pack": True}, {"pack": False}):
        loss, grads = _loss_and_grads(model, params, rows, **layout)
        assert loss == pytest.approx(ref_loss, rel=1e-12, abs=1e-12), layout
        for g, r in zip(grads, ref_grads):
            assert torch.allclose(g, r, rtol=1e-9, atol=1e-12), layout


def test_shared_prefix_with_stock_norms_agrees_to_float32_rounding():
    model = float64_llama()
    params = [p for p in model.parameters()]
    ref_loss, ref_grads = _loss_and_grads(model, params, shared_prefix_rows, stacked=False)
    loss, grads = _loss_and_grads(model, params, shared_prefix_rows, pack=True)
    assert loss == ref_loss  # the forward is exact: only the norms' backward rounds
    worst = max(float(((g - r).abs() / (r.abs().max() + 1e-30)).max()) for g, r in zip(grads, ref_grads))
    assert 0 < worst < 1e-6


def test_shared_prefix_lengths_by_hand():
    (f_ids, f_mask, f_lab), (cf_ids, cf_mask, _) = shared_prefix_rows()
    # common prefixes: 4, 3 (row 1's whole prompt), 0; each capped at its counterfactual length
    # (10, 6, 10) minus its scored tokens minus 1
    labelled = (f_lab != IGNORE_INDEX).sum(1)
    assert labelled.tolist() == [4, 3, 6]
    assert shared_prefix_lengths(f_ids, f_mask, cf_ids, cf_mask, labelled).tolist() == [4, 2, 0]
    assert shared_prefix_lengths(f_ids, f_mask, cf_ids, cf_mask, 6).tolist() == [3, 0, 0]
    assert shared_prefix_lengths(f_ids, f_mask, cf_ids, cf_mask, 1).tolist() == [4, 3, 0]


def test_packed_rows_share_the_prefix_and_continue_its_positions():
    (f_ids, f_mask, f_lab), (cf_ids, cf_mask, _) = shared_prefix_rows()
    n = keep_length(f_lab)
    ids, positions, mask, keep = pack_branches(f_ids, f_mask, cf_ids, cf_mask, n, (f_lab != IGNORE_INDEX).sum(1))
    t_f = f_ids.shape[1]  # row 0: 8 prompt + 4 response tokens
    # tails of 10 - 4 = 6, 6 - 2 = 4 and 10 - 0 tokens: 10 columns after the factual 12
    assert t_f == 12 and ids.shape == positions.shape == (3, t_f + 10) and mask.shape == (3, 1, 22, 22)
    assert ids[0, t_f + 4:].tolist() == [24, 39, 5, 6, 7, EOS]
    assert positions[0, t_f:].tolist() == [0, 0, 0, 0, 4, 5, 6, 7, 8, 9]  # continues after the 4 shared
    assert positions[2, t_f:].tolist() == list(range(10))
    row0 = mask[0, 0]
    f_first = t_f - 12  # row 0's factual tokens start at column 0
    tail_first = t_f + 4
    assert row0[tail_first, f_first:f_first + 4].all() and not row0[tail_first, f_first + 4:t_f].any()
    assert row0[tail_first, t_f:tail_first + 1].tolist() == [False] * 4 + [True]
    assert not row0[:t_f, t_f:].any()  # the factual segment never sees the tail
    assert keep.tolist() == [*range(t_f - n - 1, t_f - 1), *range(22 - n - 1, 22 - 1)]
    with pytest.raises(ValueError, match="segment widths"):
        pack_branches(f_ids, f_mask, cf_ids, cf_mask, cf_ids.shape[1])


@pytest.mark.parametrize("rows", [cft_rows, shared_prefix_rows])
def test_packed_branches_carry_cflora_instances_per_row(rows):
    """CFLoRA (generated): one h_u per instance serves both of its segments and the prefix they
    share; the packed loss and adapter gradients equal those of separate forwards under the same h_u."""
    from tiny_models import cflora_adapter

    adapter = cflora_adapter(d_instance=6, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"],
                             mode="generated")
    model = adapter.attach(norms_in_float64(float64_llama())).double()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable
    h_u = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with adapter.instance(h_u):
        ref_loss, ref_grads = _loss_and_grads(model, trainable, rows, stacked=False)
        loss, grads = _loss_and_grads(model, trainable, rows, pack=True)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("pack, expected", [(True, 12 + 11 + 9 + (10 - 4) + (6 - 2) + (10 - 0)), (False, None)])
def test_generative_task_reports_the_tokens_its_forward_runs(pack, expected):
    """The loop's ``data/forward_tokens``: packed, the factual rows plus the counterfactual tails
    (the shared prefixes by hand: 4, 2, 0); otherwise the task says nothing and the loop counts
    every row's ids."""
    from distrec.config import CftConfig
    from distrec.objectives.tasks import Batchify, GenerativeTask

    f, cf, resp = _shared_prefix_lists()
    mb = {"input_ids": f, "cf_input_ids": cf, "labels": [[IGNORE_INDEX] * (len(x) - len(r)) + r for x, r in zip(f, resp)]}
    task = GenerativeTask(CftConfig(pack=pack), Batchify(PAD, torch.device("cpu")))
    _, stats = task.micro_loss(float64_llama(), mb, task.normalisers([mb]))
    assert stats.get("forward_tokens") == expected
