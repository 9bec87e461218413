"""DIN CRM: shapes, masking, id mapping, history building, a learnable task, save/load."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from distrec.data import storage
from distrec.data.schema import CTR_SAMPLES, ITEMS, USERS
from distrec.errors import DataError
from distrec.model.crm import DIN, DinConfig
from distrec.model.crm.train_din import history_matrix, load_din, train_din

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster

CATALOG = np.arange(100, 140, dtype=np.int64)  # 40 items: 100..119 group 0, 120..139 group 1


def small_cfg(**kw) -> DinConfig:
    base = {"embed_dim": 8, "hist_len": 10, "attn_hidden": 16, "hidden_size": 32, "mlp_layers": 2, "epochs": 4,
                "batch_size": 64, "lr": 1e-2, "dropout": 0.0, "seed": 7, "device": "cpu"}
    return DinConfig(**{**base, **kw})


def test_forward_shapes_and_item_embeddings():
    torch.manual_seed(0)
    model = DIN(CATALOG, small_cfg()).eval()
    hist = torch.tensor([[100, 101, 102, 0], [130, 131, 0, 0], [0, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    logit, rep = model(hist, mask, torch.tensor([103, 132, 110]))
    assert logit.shape == (3,) and rep.shape == (3, 32) and torch.isfinite(logit).all()
    emb = model.item_embeddings(torch.tensor([[100, 139], [105, 999]]))
    assert emb.shape == (2, 2, 8)
    assert torch.equal(emb[1, 1], torch.zeros(8))  # unknown id -> the zero padding row
    assert model.rows(torch.tensor([100, 139, 99, 140])).tolist() == [1, 40, 0, 0]


def test_masked_positions_do_not_change_the_output():
    torch.manual_seed(0)
    model = DIN(CATALOG, small_cfg()).eval()
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    target = torch.tensor([120, 101])
    a = model(torch.tensor([[100, 101, 0, 0], [125, 0, 0, 0]]), mask, target)
    b = model(torch.tensor([[100, 101, 133, 117], [125, 104, 999, 111]]), mask, target)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # padding width does not matter either
    c = model(torch.tensor([[100, 101], [125, 0]]), mask[:, :2], target)
    assert torch.allclose(a[0], c[0], atol=1e-6)
    # an empty history is fine (zero interest), and differs from a real one
    empty = model(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.bool), target)
    assert torch.isfinite(empty[0]).all() and not torch.equal(empty[0], a[0])


def test_history_matrix_recent_and_retrieved():
    table = pa.table({
        "history_item_ids": [[1, 2, 3, 4, 5], [7], []],
        "history_indices": pa.array([[0, 2, 4], [0], []], type=pa.list_(pa.int32())),
    })
    ids, mask = history_matrix(table, 3)
    assert ids.tolist() == [[3, 4, 5], [7, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[True] * 3, [True, False, False], [False] * 3]
    ids, mask = history_matrix(table, 2, "retrieved")
    assert ids.tolist() == [[3, 5], [7, 0], [0, 0]]
    with pytest.raises(DataError, match="history_indices"):
        history_matrix(table.drop_columns(["history_indices"]), 2, "retrieved")


def write_learnable(root, n=2400, seed=0):
    """Users prefer one of two item groups and mostly consumed it; label = target in that group."""
    rng = np.random.default_rng(seed)
    groups = {int(i): int(i >= 120) for i in CATALOG}
    rows = []
    for s in range(n):
        user = int(rng.integers(0, 200))
        pref = user % 2
        length = int(rng.integers(3, 25))
        own = CATALOG[20 * pref: 20 * pref + 20]
        other = CATALOG[20 * (1 - pref): 20 * (1 - pref) + 20]
        hist = [int(rng.choice(own) if rng.random() < 0.8 else rng.choice(other)) for _ in range(length)]
        target = int(rng.choice(CATALOG))
        label = int(groups[target] == pref)
        rows.append({"sample_id": s, "user_id": user, "item_id": target, "rating": 4.0 if label else 2.0,
                     "timestamp": s, "label": label, "history_item_ids": hist,
                     "history_ratings": [4.0] * length})
    samples = pa.Table.from_pylist(rows, schema=CTR_SAMPLES)
    items = pa.Table.from_pylist([{"item_id": int(i), "title": f"Item {i}", "categories": [], "source_id": str(i)}
                                  for i in CATALOG], schema=ITEMS)
    users = pa.Table.from_pylist([{"user_id": u, "source_id": str(u)} for u in range(200)], schema=USERS)
    a, b = int(n * 0.7), int(n * 0.85)
    storage.write_prepared(root, {"train": samples.slice(0, a), "valid": samples.slice(a, b - a),
                                  "test": samples.slice(b)}, items=items, users=users,
                           meta={"dataset": "synthetic", "task": "ctr"}, num_shards=2)
    return root


def test_train_din_learns_selects_on_valid_and_round_trips(tmp_path):
    prepared = write_learnable(tmp_path / "prepared")
    cfg = small_cfg()
    metrics = train_din(prepared, cfg, tmp_path / "din")
    first_auc = metrics["history"][0]["valid_auc"]
    assert metrics["valid"]["auc"] > 0.9, metrics["history"]
    assert metrics["valid"]["auc"] == max(h["valid_auc"] for h in metrics["history"])
    assert metrics["valid"]["auc"] >= first_auc
    assert metrics["test"]["auc"] > 0.85 and np.isfinite(metrics["test"]["logloss"])
    assert metrics["best_epoch"] in range(1, cfg.epochs + 1)
    saved = json.loads((tmp_path / "din" / "metrics.json").read_text())
    assert saved["best_epoch"] == metrics["best_epoch"]
    assert json.loads((tmp_path / "din" / "din_config.json").read_text())["config"]["hidden_size"] == 32

    model = load_din(tmp_path / "din")
    table = storage.open_split(prepared, "test")
    ids, mask = history_matrix(table, cfg.hist_len)
    target = torch.from_numpy(table.column("item_id").to_numpy())
    logit, rep = model(torch.from_numpy(ids), torch.from_numpy(mask), target)
    from distrec.model.crm.train_din import _tensors, predict

    probs = predict(model, _tensors(table, cfg))
    assert np.allclose(torch.sigmoid(logit).detach().numpy(), probs, atol=1e-6)
    from distrec.metrics.ctr_metrics import ctr_metrics

    assert ctr_metrics(table.column("label").to_numpy(), probs, table.column("user_id").to_numpy())["auc"] == pytest.approx(metrics["test"]["auc"])
    again = load_din(tmp_path / "din")
    l2, r2 = again(torch.from_numpy(ids), torch.from_numpy(mask), target)
    assert torch.equal(logit, l2) and torch.equal(rep, r2)
    assert torch.equal(model.item_embeddings(torch.tensor([100, 139])), again.item_embeddings(torch.tensor([100, 139])))

    # same seed, same result (no output folder this time; each epoch's shuffle depends only on
    # (seed, epoch), so a 2-epoch run must repeat the first two epochs exactly)
    repeat = train_din(prepared, small_cfg(epochs=2))
    assert repeat["history"] == metrics["history"][:2]
