"""DIN CRM: shapes, masking, id mapping, history building, a learnable task, save/load."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
import torch

from distrec.data import storage
from distrec.data.schema import CTR_SAMPLES, ITEMS, USERS
from distrec.errors import DataError
from distrec.model.crm import DIN, DinConfig
from distrec.model.crm.history import history_matrix

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster

CATALOG = np.arange(100, 140, dtype=np.int64)  # 40 items: 100..119 group 0, 120..139 group 1


def small_cfg(**kw) -> DinConfig:
    base = {"embed_dim": 8, "hist_len": 10, "attn_hidden": 16, "hidden_size": 32, "mlp_layers": 2, "epochs": 4,
                "batch_size": 64, "lr": 1e-2, "dropout": 0.0, "seed": 7}
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


def din_job(tmp_path, name: str, *extra: str, **train):
    """The CRM job of a default config, small DIN settings, on 2 ranks; ``train``: TrainConfig
    fields to replace (checkpoint_every, ...)."""
    import dataclasses

    from distrec.config import load_job_config
    from distrec.train.artefacts import crm_job

    cfg = small_cfg()
    crm = [f"crm.{k}={v}" for k, v in dataclasses.asdict(cfg).items()]
    job = crm_job(load_job_config(None, [*crm, *extra]))
    ray = dataclasses.replace(job.ray, storage_path=str(tmp_path / "runs"), run_name=name)
    return dataclasses.replace(job, ray=ray, train=dataclasses.replace(job.train, **train))


def oracle_weights(prepared, cfg: DinConfig, steps: int, world: int) -> dict[str, torch.Tensor]:
    """An independent single process: the same init seed, the same global batches (the loop's
    seeded epoch permutation, rows [s·G, (s+1)·G)), mean BCE over each, AdamW(lr) step."""
    from distrec.train.data_stream import epoch_order

    table = storage.open_split(prepared, "train")
    ids, mask = history_matrix(table, cfg.hist_len)
    target = torch.from_numpy(table.column("item_id").to_numpy())
    label = torch.from_numpy(table.column("label").to_numpy().astype(np.float32))
    torch.manual_seed(cfg.seed)
    model = DIN(np.sort(CATALOG), cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    order = epoch_order(len(table), cfg.seed, 0)
    for s in range(steps):
        idx = torch.from_numpy(order[s * cfg.batch_size:(s + 1) * cfg.batch_size])
        logit, _ = model(torch.from_numpy(ids)[idx], torch.from_numpy(mask)[idx], target[idx])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, label[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.state_dict()


@pytest.mark.ray
def test_the_loop_trains_the_din_as_one_process_would_and_exports_it(tmp_path, ray_local):
    """4 steps on 2 ranks (ZeRO stage 0, gloo) equal a single process on the same global
    batches; the exported folder reproduces the run's own test predictions and sklearn's AUC.
    (Later steps drift apart at float precision: Adam turns the summation-order noise of
    near-zero gradients into ±lr updates, so the comparison stops at 4 steps.)"""
    from sklearn.metrics import roc_auc_score

    from distrec.model.crm.artefact import load_din
    from distrec.train.launcher import run_job

    prepared = write_learnable(tmp_path / "prepared")
    run = run_job(din_job(tmp_path, "four-steps", epochs=1, max_steps=4), prepared=prepared)
    assert run.metrics["train"]["steps"] == 4 and run.metrics["train"]["best_step"] == 4
    model = load_din(run.run_dir / "din")
    oracle = oracle_weights(prepared, model.config, 4, world=2)
    for name, tensor in model.state_dict().items():
        assert torch.allclose(tensor, oracle[name], rtol=0, atol=1e-5), (name, (tensor - oracle[name]).abs().max())

    test = storage.open_split(prepared, "test")
    ids, mask = history_matrix(test, model.config.hist_len)
    with torch.no_grad():
        logit, _ = model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(test.column("item_id").to_numpy()))
    probs = torch.sigmoid(logit).numpy()
    import pyarrow.parquet as pq

    written = pq.read_table(run.run_dir / "predictions_test.parquet").to_pydict()
    by_id = dict(zip(written["sample_id"], written["p_yes"]))
    got = np.array([by_id[i] for i in test.column("sample_id").to_pylist()])
    assert np.allclose(got, probs, atol=1e-6)
    labels = test.column("label").to_numpy()
    assert run.metrics["test"]["auc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-6)


@pytest.mark.ray
def test_din_learns_selects_the_best_epoch_and_stops_early(tmp_path, ray_local):
    """4 epochs at lr 1e-2 learn the synthetic task (valid AUC > 0.9, test > 0.85) and the kept
    state is the best validation's; at lr 0 no validation improves on the first, so patience 1
    stops after epoch 2 with epoch 1's state."""
    from distrec.eval.tensorboard import read_scalars
    from distrec.train.launcher import run_job

    prepared = write_learnable(tmp_path / "prepared")
    run = run_job(din_job(tmp_path, "learn"), prepared=prepared)
    per_epoch = run.metrics["train"]["steps"] // 4
    scalars = read_scalars(run.run_dir / "tensorboard")
    valid = dict(scalars["eval/valid_auc"])
    final = valid.pop(0)  # the selected state's evaluation is logged at step 0
    assert sorted(valid) == [per_epoch * e for e in (1, 2, 3, 4)]
    # a forward over the valid rows logs its speed; the selected state is validated again only if
    # it is not the last one validated
    forwards = sorted(step for step, _ in scalars["throughput/eval_valid_rows_per_s"])
    assert forwards == [0] * (run.metrics["train"]["best_step"] != 4 * per_epoch) + sorted(valid)
    assert final == pytest.approx(max(valid.values()), abs=1e-6)
    assert run.metrics["valid"]["auc"] == pytest.approx(max(valid.values()), abs=1e-6)
    assert run.metrics["valid"]["auc"] > 0.9
    assert run.metrics["train"]["best_step"] == max(valid, key=valid.get)
    assert run.metrics["test"]["auc"] > 0.85

    still = run_job(din_job(tmp_path, "still", lr=0.0, patience=1), prepared=prepared)
    assert still.metrics["train"]["stopped_early"] == 1
    assert still.metrics["train"]["steps"] == 2 * per_epoch and still.metrics["train"]["best_step"] == per_epoch
    forwards = sorted(s for s, _ in read_scalars(still.run_dir / "tensorboard")["throughput/eval_valid_rows_per_s"])
    assert forwards == [0, per_epoch, 2 * per_epoch]  # the kept state is epoch 1's: validated again


@pytest.mark.ray
def test_killed_din_run_resumes_mid_epoch_to_the_identical_model(tmp_path, ray_local):
    """SIGKILL of the last rank after step 9 (checkpoints every 4 steps, an epoch of 26): the
    restarted group resumes from step 8 and ends with the uninterrupted run's weights, having
    trained on every sample of the epoch exactly once."""
    from safetensors.torch import load_file

    from distrec.eval.tensorboard import read_texts
    from distrec.train.faults import consumed
    from distrec.train.launcher import run_job

    prepared = write_learnable(tmp_path / "prepared")
    base = din_job(tmp_path, "din-base", epochs=1, checkpoint_every=4, patience=None)
    plain = run_job(base, prepared=prepared)
    killed_job = din_job(tmp_path, "din-killed", "ray.max_failures=1", epochs=1, checkpoint_every=4, patience=None)
    killed_job = dataclasses.replace(killed_job, debug=dataclasses.replace(killed_job.debug, kill_at_steps=[9],
                                                                           record_samples=True))
    killed = run_job(killed_job, prepared=prepared)
    assert any("resumed at step 8" in t for t in read_texts(killed.run_dir / "tensorboard")["events/resume"])
    a, b = load_file(str(plain.run_dir / "din" / "din.safetensors")), load_file(str(killed.run_dir / "din" / "din.safetensors"))
    for name in a:
        assert torch.equal(a[name], b[name]), name
    by_epoch, _ = consumed(killed.run_dir)
    n_used = (storage.read_manifest(prepared)["splits"]["train"]["rows"] // 64) * 64
    assert sorted(by_epoch) == [0]
    for epoch, ids in by_epoch.items():
        assert len(ids) == len(set(ids)) == n_used, epoch
