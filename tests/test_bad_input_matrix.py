"""Bad input on the run path (issue 8's matrix, the cases not covered by the loader, storage,
config, tokenizer, SUBR, SPA and CFLoRA test files; README "Bad input" lists all of them):
each is an error that names the key, file or tensor, raised before anything is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from distrec.config import ModelConfig, RayConfig, load_job_config
from distrec.errors import ConfigError, DataError, ModelError

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "jobs" / "tiny.yaml"


def test_gpu_requested_on_a_machine_without_one(ray_local):
    from distrec.train.launcher import check_gpus

    if ray_local.cluster_resources().get("GPU", 0) >= 2:
        pytest.skip("this machine has GPUs")
    with pytest.raises(ConfigError, match=r"ray.use_gpu=true needs 2 GPUs .* has 0"):
        check_gpus(RayConfig(num_workers=2, use_gpu=True))
    check_gpus(RayConfig(num_workers=2, use_gpu=False))  # no GPU asked: fine


@pytest.mark.parametrize("name", ["/no/such/model", "./models/missing", "~/nowhere/llama"])
def test_model_folder_that_does_not_exist(name):
    from distrec.model.backbone import resolve_model_dir

    with pytest.raises(ModelError, match="model.name_or_path: local model folder does not exist"):
        resolve_model_dir(ModelConfig(name_or_path=name))


def test_model_folder_without_config(tmp_path):
    from distrec.model.backbone import resolve_model_dir

    with pytest.raises(ModelError, match=f"{tmp_path} exists but has no config.json"):
        resolve_model_dir(ModelConfig(name_or_path=str(tmp_path)))


def test_selected_weights_from_a_different_adapter_shape(tmp_path):
    from peft import LoraConfig, get_peft_model
    from tiny_models import tiny_llama

    from distrec.train.checkpoint import load_selected, save_selected

    def lora(r):
        return get_peft_model(tiny_llama(), LoraConfig(r=r, lora_alpha=8, target_modules=["q_proj"]))

    small = lora(4)
    save_selected({n: p.detach() for n, p in small.named_parameters() if p.requires_grad}, tmp_path, True)
    assert set(load_selected(lora(4), tmp_path)) == {n for n, p in small.named_parameters() if p.requires_grad}
    with pytest.raises(ModelError, match=r"lora_A.default.weight' has shape \(4, .*the model's is \(8, "):
        load_selected(lora(8), tmp_path)
    other = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["v_proj"]))
    with pytest.raises(ModelError, match="has no tensor .*v_proj.*different model or adapter"):
        load_selected(other, tmp_path)
    with pytest.raises(ModelError, match="no selected weights"):
        load_selected(small, tmp_path / "elsewhere")


def test_truncated_parquet_shard_is_named_before_a_run_starts(tmp_path):
    from distrec.data import storage

    t = pa.table({"sample_id": np.arange(100), "user_id": np.arange(100)})
    out = tmp_path / "prep"
    storage.write_prepared(out, {"train": t, "valid": t.slice(0, 10)}, items=pa.table({"item_id": [1]}),
                                 users=pa.table({"user_id": [1]}), meta={"dataset": "x", "task": "ctr"}, num_shards=2)
    shard = sorted((out / "train").glob("part-*.parquet"))[1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(DataError, match=f"{shard}: sha256 .* does not match"):
        storage.verify(out)


def test_train_split_smaller_than_one_step():
    from distrec.train.launcher import check_one_step

    job = load_job_config(TINY, ["train.micro_batch_size=8", "train.grad_accum=4"])
    manifest = {"splits": {"train": {"rows": 63}}}
    with pytest.raises(DataError, match=r"63 rows, fewer than one optimiser step of 64 .*ray.num_workers=2"):
        check_one_step(manifest, job, Path("/prep"))
    check_one_step({"splits": {"train": {"rows": 64}}}, job, Path("/prep"))


def test_crm_folder_missing_or_of_the_wrong_width(tmp_path):
    from tiny_models import tiny_llama

    from distrec.model.adapters import make_adapter
    from distrec.model.crm import DIN, DinConfig
    from distrec import atomic
    from distrec.model.crm.artefact import load_din, write_din
    from distrec.model.rellax import assemble

    with pytest.raises(ModelError, match=f"{tmp_path}: not a DIN folder"):
        load_din(tmp_path)
    model = DIN(np.arange(1, 10), DinConfig(hidden_size=16, embed_dim=4))
    with atomic.staged(tmp_path / "din") as folder:
        write_din(folder, model.state_dict(), model.config)
    din = tmp_path / "din"
    job = load_job_config(TINY, ["adapter.kind=cflora", "crm.hidden_size=32"])
    adapter = make_adapter(job.adapter, d_instance=job.crm.hidden_size)
    llm = adapter.attach(tiny_llama())
    with pytest.raises(ModelError, match="d_instance=32 but the CRM .* has hidden_size 16"):
        assemble(job, llm, None, adapter, din, torch.device("cpu"))
    with pytest.raises(ModelError, match="needs a trained CRM"):
        assemble(job, llm, None, adapter, None, torch.device("cpu"))


def test_retrieved_positions_outside_the_history():
    from distrec.data.prompts import shown_positions

    with pytest.raises(DataError, match=r"history_indices \[0, 5\] must be distinct positions in 0..3"):
        shown_positions(4, 3, [0, 5])
    with pytest.raises(DataError, match="must be distinct"):
        shown_positions(4, 3, [1, 1])
