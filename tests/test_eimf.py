"""EIMF building blocks (methods.md §4 "EIMF"): backbones, losses, selection, evaluation, training."""

from __future__ import annotations

from collections.abc import Sequence

import copy
import math

import numpy as np
import pyarrow as pa
import pytest
from eimf_toy import toy_items, toy_samples
import torch

from distrec.model.interests.backbones import (
    ComiRecDR,
    ComiRecSA,
    ItemIndex,
    build_backbone,
    squash,
)
from distrec.config.eimf import (
    BackboneConfig,
    EimfConfig,
    EimfEvalConfig,
    EimfTrainConfig,
    EsimConfig,
    RecLossConfig,
    SelectionConfig,
    eimf_config_from_dict,
)
from distrec.interests.evaluate import (
    evaluate_retrieval,
    merged_topn,
    retrieval_metrics,
)
from distrec.model.interests.losses import (
    NegativeSampler,
    Pairs,
    alignment_loss,
    auxiliary_losses,
    match_interests,
    sampled_softmax_loss,
)
from distrec.model.interests.eimf import (
    EimfModel,
    SemanticBank,
    build_model,
    encode_samples,
    make_batch,
    make_labels,
    step,
)
from eimf_oracle import train_eimf
from distrec.interests.typical_users import (
    latest_sequences,
    select_from_model,
    select_typical_users,
)

pytestmark = pytest.mark.usefixtures("one_thread")

N_ITEMS, N_USERS, D_SEM = 48, 40, 8


@pytest.fixture(scope="module")
def items() -> pa.Table:
    return toy_items(N_ITEMS)


@pytest.fixture(scope="module")
def samples() -> pa.Table:
    return toy_samples(N_USERS, N_ITEMS)


def labels_for(user_ids, m: int = 3, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "user_id": pa.array(np.asarray(user_ids, dtype=np.int64)),
            "interest_vectors": [[rng.normal(size=D_SEM).astype(np.float32).tolist() for _ in range(m)] for _ in user_ids],
        }
    )


def small_cfg(kind: str = "sa", lp: float = 0.5, la: float = 0.5, steps: int = 6, sampler: str = "log_uniform") -> EimfConfig:
    return EimfConfig(
        backbone=BackboneConfig(kind=kind, num_interests=4, dim=16, max_len=10),
        loss=RecLossConfig(sampler=sampler, num_negatives=24),
        esim=EsimConfig(lambda_pred=lp, lambda_align=la),
        train=EimfTrainConfig(batch_size=32, max_steps=steps, epochs=5, seed=7, device="cpu", log_every=1),
    )


def batch_of(n: int = 5, length: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(1, N_ITEMS + 1, (n, length), generator=g)
    lens = torch.randint(1, length + 1, (n,), generator=g)
    mask = torch.arange(length)[None, :] < lens[:, None]
    return hist * mask, mask


# ----------------------------------------------------------------------------- backbones


@pytest.mark.parametrize("kind", ["sa", "dr"])
def test_backbone_shapes_and_padding_invariance(kind):
    torch.manual_seed(0)
    cfg = BackboneConfig(kind=kind, num_interests=4, dim=16, max_len=10)
    bb = build_backbone(N_ITEMS, cfg)
    assert isinstance(bb, ComiRecSA if kind == "sa" else ComiRecDR)
    hist, mask = batch_of()
    out = bb(hist, mask)
    assert out.shape == (5, 4, 16)
    assert torch.isfinite(out).all()
    noisy = torch.where(mask, hist, torch.randint(1, N_ITEMS + 1, hist.shape))  # junk in padded slots
    torch.testing.assert_close(bb(noisy, mask), out)
    assert bb.score_all(hist, mask).shape == (5, N_ITEMS)
    if kind == "dr":  # squashed capsules have norm < 1
        assert (out.norm(dim=-1) < 1).all()


def test_squash_and_readout():
    s = torch.tensor([[3.0, 4.0]])
    torch.testing.assert_close(squash(s).norm(dim=-1), torch.tensor([25.0 / 26.0]))
    interests = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    target = torch.tensor([[0.1, 2.0], [3.0, 0.0]])
    chosen, idx = ComiRecSA.readout(interests, target)
    assert idx.tolist() == [1, 0]
    torch.testing.assert_close(chosen, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


def test_item_index_round_trip(items):
    index = ItemIndex.from_items(items)
    rows = index.rows([100, 147, 120])
    assert rows.tolist() == [1, 48, 21]
    assert index.item_ids(np.array([1, 48, 0])).tolist() == [100, 147, -1]
    from distrec.errors import DataError

    with pytest.raises(DataError, match="item_id 999"):
        index.rows([999])


# ----------------------------------------------------------------------------- L_rec


def test_sampled_softmax_hand_computed():
    readout = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    pos = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # positive logits 2, 2
    neg = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # rows 5 and 9
    target_rows = torch.tensor([3, 9])
    neg_rows = torch.tensor([5, 9])
    lq_pos = torch.tensor([0.5, 0.2])
    lq_neg = torch.tensor([0.1, 0.2])
    got = sampled_softmax_loss(readout, pos, neg, target_rows, neg_rows, lq_pos, lq_neg, remove_accidental_hits=True)
    # row 0: logits [2-0.5, 1-0.1, 0-0.2]; row 1: [2-0.2, 2-0.1, (hit: masked)]
    r0 = -1.5 + math.log(math.exp(1.5) + math.exp(0.9) + math.exp(-0.2))
    r1 = -1.8 + math.log(math.exp(1.8) + math.exp(1.9))
    assert got.item() == pytest.approx((r0 + r1) / 2, abs=1e-6)
    plain = sampled_softmax_loss(readout, pos, neg, target_rows, neg_rows, remove_accidental_hits=False)
    r1_plain = -2 + math.log(math.exp(2) + math.exp(2) + math.exp(2))
    r0_plain = -2 + math.log(math.exp(2) + math.exp(1) + math.exp(0))
    assert plain.item() == pytest.approx((r0_plain + r1_plain) / 2, abs=1e-6)


def test_negative_sampler_seeded_and_proposals():
    counts = np.array([1, 50, 3, 50, 0])
    a = NegativeSampler(5, 1000, "log_uniform", counts=counts, seed=3)
    b = NegativeSampler(5, 1000, "log_uniform", counts=counts, seed=3)
    sa = a.sample()
    assert torch.equal(sa, b.sample())
    assert int(sa.min()) >= 1 and int(sa.max()) <= 5
    assert float(a.q.sum()) == pytest.approx(1.0)
    # popularity rank: rows 2 and 4 (count 50, tie -> lower row first) get the two largest q
    assert torch.argsort(a.q, descending=True, stable=True)[:2].tolist() == [1, 3]
    torch.testing.assert_close(a.log_expected_count(torch.tensor([2])), torch.log(a.q[1:2] * 1000).float())
    u = NegativeSampler(5, 10, "uniform", seed=0)
    torch.testing.assert_close(u.q, torch.full((5,), 0.2, dtype=torch.float64))


# ----------------------------------------------------------------------------- ESIM losses


def test_matching_hungarian_beats_greedy():
    # cosines [[.6, .5], [.5, .05]]: greedy takes .6 then .05 (0.65); Hungarian .5 + .5 (1.0)
    beh = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]])
    sem = torch.tensor([[[0.6, 0.5, math.sqrt(1 - 0.36 - 0.25), 0.0], [0.5, 0.05, 0.0, math.sqrt(1 - 0.25 - 0.0025)]]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    h = match_interests(beh, sem, mask, "hungarian")
    g = match_interests(beh, sem, mask, "greedy")
    assert list(zip(h.k.tolist(), h.m.tolist())) == [(0, 1), (1, 0)]
    assert list(zip(g.k.tolist(), g.m.tolist())) == [(0, 0), (1, 1)]
    # fewer semantic than behavioural interests: min(K, M) pairs; masked rows none
    mask2 = torch.tensor([[True, False]])
    assert len(match_interests(beh, sem, mask2, "hungarian")) == 1
    assert len(match_interests(beh, sem, torch.zeros(1, 2, dtype=torch.bool), "greedy")) == 0


def _esim_forward(model: EimfModel, n: int, typical: list[bool], seed: int = 0):
    hist, mask = batch_of(n, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    sem = torch.randn(n, 3, D_SEM, generator=g)
    sem_mask = torch.tensor(typical)[:, None].expand(n, 3).clone()
    out = model(hist, mask, sem=sem)
    return out, sem, sem_mask


def test_aux_losses_zero_without_typical_users():
    torch.manual_seed(0)
    model = build_model(N_ITEMS, small_cfg(), semantic_dim=D_SEM)
    out, sem, sem_mask = _esim_forward(model, 4, [False] * 4)
    assert out["interests"].shape == (4, 4, 16)
    assert out["pred"].shape == (4, 4, D_SEM)  # behavioural -> semantic
    assert out["sem_proj"].shape == (4, 3, 16)  # semantic -> d
    l_pred, l_align, pairs = auxiliary_losses(out["interests"], out["pred"], out["sem_proj"], sem, sem_mask, EsimConfig())
    assert len(pairs) == 0 and l_pred.item() == 0.0 and l_align.item() == 0.0


def test_aux_losses_ignore_non_typical_rows():
    torch.manual_seed(0)
    model = build_model(N_ITEMS, small_cfg(), semantic_dim=D_SEM)
    hist, mask = batch_of(4)
    sem = torch.randn(4, 3, D_SEM)
    sem_mask = torch.tensor([True, False, True, False])[:, None].expand(4, 3).clone()
    interests = model.backbone(hist, mask).detach().requires_grad_(True)
    pred, proj = model.heads.pred(interests), model.heads.align(sem)
    l_pred, l_align, pairs = auxiliary_losses(interests, pred, proj, sem, sem_mask, EsimConfig())
    assert set(pairs.b.tolist()) == {0, 2} and len(pairs) == 6
    (l_pred + l_align).backward()
    assert interests.grad[[1, 3]].abs().sum().item() == 0.0
    assert interests.grad[[0, 2]].abs().sum().item() > 0.0
    # the values do not depend on the non-typical rows at all
    sem2 = sem.clone()
    sem2[[1, 3]] = torch.randn(2, 3, D_SEM)
    with torch.no_grad():
        l_pred2, l_align2, _ = auxiliary_losses(interests, pred, model.heads.align(sem2), sem2, sem_mask, EsimConfig())
    assert l_pred2.item() == pytest.approx(l_pred.item()) and l_align2.item() == pytest.approx(l_align.item())


def test_step_without_typical_users_is_rec_only(items, samples):
    cfg = small_cfg()
    index = ItemIndex.from_items(items)
    data = encode_samples(samples, index, cfg.backbone.max_len)
    bank = SemanticBank(labels_for([10_000, 10_001]))  # users not in the batch
    torch.manual_seed(0)
    model = build_model(index.num_items, cfg, bank.dim)
    idx = np.arange(16)
    batch, labels = make_batch(data, idx, torch.device("cpu")), make_labels(bank, data.user_id[idx], torch.device("cpu"))
    _, parts = step(model, batch, labels, cfg=cfg, sampler=None)
    assert parts["loss_pred"] == 0.0 and parts["loss_align"] == 0.0 and parts["n_typical"] == 0.0
    assert parts["loss"] == parts["loss_rec"]


def test_alignment_lowers_matched_distance():
    torch.manual_seed(0)
    beh = torch.nn.Parameter(torch.randn(6, 4, 16))
    head = torch.nn.Linear(D_SEM, 16)
    sem = torch.randn(6, 3, D_SEM)
    mask = torch.ones(6, 3, dtype=torch.bool)
    pairs = match_interests(beh.detach(), head(sem).detach(), mask, "hungarian")

    def dist() -> float:
        with torch.no_grad():
            zb = torch.nn.functional.normalize(beh[pairs.b, pairs.k], dim=-1)
            zs = torch.nn.functional.normalize(head(sem)[pairs.b, pairs.m], dim=-1)
            return float((1 - (zb * zs).sum(-1)).mean())

    before = dist()
    opt = torch.optim.Adam([beh, *head.parameters()], lr=0.05)
    for _ in range(15):
        loss = alignment_loss(beh, head(sem), pairs, tau=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert dist() < 0.5 * before


def test_alignment_loss_single_pair_and_empty():
    beh = torch.randn(1, 2, 4)
    proj = torch.randn(1, 2, 4)
    one = Pairs(torch.tensor([0]), torch.tensor([0]), torch.tensor([1]))
    assert alignment_loss(beh, proj, one).item() == pytest.approx(0.0, abs=1e-6)  # no negatives
    empty = Pairs(*(torch.zeros(0, dtype=torch.long),) * 3)
    assert alignment_loss(beh, proj, empty).item() == 0.0


# ----------------------------------------------------------------------------- training


def _backbone_state(model: EimfModel) -> dict:
    return {k: v.clone() for k, v in model.backbone.state_dict().items()}


@pytest.mark.parametrize("kind", ["sa", "dr"])
def test_zero_lambdas_reduce_to_backbone(items, samples, kind):
    typical = labels_for(range(0, N_USERS, 2))
    base, _ = train_eimf(samples, items, small_cfg(kind, lp=0.0, la=0.0))
    zero, m0 = train_eimf(samples, items, small_cfg(kind, lp=0.0, la=0.0), typical)
    assert zero.heads is not None and m0["typical_fraction"] == pytest.approx(0.5)
    sb, sz = _backbone_state(base), _backbone_state(zero)
    assert all(torch.equal(sb[k], sz[k]) for k in sb)
    aux, m1 = train_eimf(samples, items, small_cfg(kind), typical)
    assert m1["loss_pred"] > 0 and m1["loss_align"] > 0
    assert not all(torch.equal(sb[k], v) for k, v in _backbone_state(aux).items())


def test_training_is_deterministic_and_logs(items, samples):
    typical = labels_for(range(0, N_USERS, 3))
    cfg = small_cfg("sa", sampler="uniform")
    a, ma = train_eimf(samples, items, cfg, typical)
    b, mb = train_eimf(samples, items, cfg, typical)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert ma["steps"] == 6 and len(ma["history"]) == 6
    assert [h["loss"] for h in ma["history"]] == [h["loss"] for h in mb["history"]]


def test_serving_identical_without_esim(items, samples):
    cfg = small_cfg("dr")
    model, _ = train_eimf(samples, items, cfg, labels_for(range(0, N_USERS, 2)))
    full = evaluate_retrieval(model, samples, items, EimfEvalConfig(ks=[5, 20]), return_topn=True)
    # a fresh model without heads, fed only the backbone's weights: no labels, no LLM, no heads
    bare = build_model(ItemIndex.from_items(items).num_items, cfg, semantic_dim=None)
    bare.backbone.load_state_dict(model.serving_model().state_dict())
    stripped = copy.deepcopy(model)
    stripped.heads = None
    for other in (bare, bare.backbone, stripped):
        got = evaluate_retrieval(other, samples, items, EimfEvalConfig(ks=[5, 20]), return_topn=True)
        assert np.array_equal(got["topn_item_ids"], full["topn_item_ids"])
        assert {k: v for k, v in got.items() if not k.startswith("topn")} == {
            k: v for k, v in full.items() if not k.startswith("topn")
        }


# ----------------------------------------------------------------------------- evaluation


def test_metrics_hand_computed():
    top = np.array([[5, 6, 7], [5, 6, 7], [5, 6, 7], [5, 6, 7]])
    targets = np.array([5, 7, 9, 6])
    m = retrieval_metrics(top, targets, ks=[1, 2, 3])
    assert m["recall@1"] == m["hr@1"] == 0.25
    assert m["recall@2"] == 0.5 and m["recall@3"] == 0.75
    assert m["ndcg@1"] == pytest.approx(0.25)
    assert m["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert m["ndcg@3"] == pytest.approx((1 + 1 / math.log2(3) + 0.5) / 4)


def test_merged_retrieval_hand_case():
    # two interests; item scores by max: item0: max(1, 0)=1, item1: max(0, 3)=3, item2: max(2, 2)=2
    interests = np.array([[[1.0, 0.0], [0.0, 1.0]]], dtype=np.float32)
    items = np.array([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]], dtype=np.float32)
    top, scores = merged_topn(interests, items, 3)
    assert top.tolist() == [[1, 2, 0]] and scores.tolist() == [[3.0, 2.0, 1.0]]
    top_ex, _ = merged_topn(interests, items, 3, exclude=[np.array([1])])
    assert top_ex.tolist() == [[2, 0, -1]]
    m = retrieval_metrics(np.array([[11, 12, 10]]), np.array([12]), ks=[1, 2])
    assert m["recall@1"] == 0.0 and m["recall@2"] == 1.0 and m["ndcg@2"] == pytest.approx(1 / math.log2(3))


@pytest.mark.parametrize("exclude", [False, True])
def test_faiss_equals_brute_force(exclude):
    rng = np.random.default_rng(0)
    interests = rng.normal(size=(30, 4, 16)).astype(np.float32)
    items = rng.normal(size=(200, 16)).astype(np.float32)
    ex = [rng.choice(200, size=rng.integers(0, 10), replace=False) for _ in range(30)] if exclude else None
    top, sc = merged_topn(interests, items, 50, ex)
    ref, ref_sc = brute_force_topn(interests, items, 50, ex)
    assert np.array_equal(top, ref)
    np.testing.assert_allclose(sc, ref_sc, rtol=1e-5, atol=1e-5)
    if exclude:
        assert all(not np.isin(top[i], ex[i]).any() for i in range(30))


def test_recall_non_decreasing_in_k(items, samples):
    torch.manual_seed(0)
    model = build_model(N_ITEMS, small_cfg())
    ks = [1, 5, 10, 20, 48]
    m = evaluate_retrieval(model, samples, items, EimfEvalConfig(ks=ks))
    rec = [m[f"recall@{k}"] for k in ks]
    assert rec == sorted(rec) and rec[-1] == 1.0  # K = |catalogue| retrieves everything
    assert m["n"] == samples.num_rows
    ex = evaluate_retrieval(model, samples, items, EimfEvalConfig(ks=ks, exclude_history=True))
    assert [ex[f"recall@{k}"] for k in ks] == sorted(ex[f"recall@{k}"] for k in ks)


# ----------------------------------------------------------------------------- typical users


def test_selection_deterministic_and_sized():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=5, size=(4, 8))
    reps = (centres[np.arange(80) % 4] + rng.normal(size=(80, 8))).astype(np.float32)
    uids = np.arange(1000, 1080)[::-1].copy()  # unsorted input ids
    a = select_typical_users(uids, reps, n_clusters=4, per_cluster=3, niter=10, seed=5)
    b = select_typical_users(uids, reps, n_clusters=4, per_cluster=3, niter=10, seed=5)
    assert len(a) == 12 and np.array_equal(a.user_ids, b.user_ids) and np.array_equal(a.clusters, b.clusters)
    assert np.all(np.diff(a.user_ids) > 0)
    assert sorted(np.bincount(a.clusters).tolist()) == [3, 3, 3, 3]
    mem = select_typical_users(uids, reps, n_clusters=4, per_cluster=3, niter=10, seed=5, assign="members")
    assert len(mem) == 12  # well-separated clusters of 20
    assert a.to_table().column_names == ["user_id", "cluster", "distance"]
    # all users asked for: everyone, once
    every = select_typical_users(uids, reps, n_clusters=4, per_cluster=100, niter=5, seed=5)
    assert np.array_equal(every.user_ids, np.sort(uids))


def test_selection_ties_broken_by_user_id():
    reps = np.zeros((6, 2), dtype=np.float32)  # all identical: every distance ties
    sel = select_typical_users(np.array([9, 3, 7, 1, 5, 2]), reps, n_clusters=1, per_cluster=3, niter=2, seed=0)
    assert sel.user_ids.tolist() == [1, 2, 3]


def test_select_from_model_and_latest_sequences(items, samples):
    uids, seqs = latest_sequences(samples, history_len=10, include_target=True)
    assert uids.tolist() == list(range(N_USERS)) and all(len(s) == 10 for s in seqs)
    torch.manual_seed(0)
    model = build_model(N_ITEMS, small_cfg())
    for rep in ("interests", "items"):
        cfg = SelectionConfig(n_clusters=4, per_cluster=2, niter=5, representation=rep)
        a = select_from_model(model, samples, items, cfg)
        assert len(a) == 8 and np.array_equal(a.user_ids, select_from_model(model, samples, items, cfg).user_ids)


def test_config_from_dict():
    cfg = eimf_config_from_dict({"backbone": {"kind": "dr", "num_interests": 8}, "esim": {"matching": "greedy"}})
    assert cfg.backbone.kind == "dr" and cfg.backbone.num_interests == 8 and cfg.esim.matching == "greedy"
    from distrec.errors import ConfigError

    with pytest.raises(ConfigError):
        eimf_config_from_dict({"backbone": {"knd": "sa"}})


def brute_force_topn(
    interests: np.ndarray, items: np.ndarray, n: int, exclude: Sequence[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The oracle for :func:`merged_topn`: score every item by max over interests, sort."""
    scores = np.einsum("bkd,nd->bkn", interests, items).max(axis=1).astype(np.float32)
    if exclude is not None:
        for i, ex in enumerate(exclude):
            scores[i, np.asarray(ex, dtype=np.int64)] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, : min(n, items.shape[0])]
    top_scores = np.take_along_axis(scores, order, axis=1)
    return np.where(np.isfinite(top_scores), order, -1).astype(np.int64), top_scores
