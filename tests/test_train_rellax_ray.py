"""Full ReLLaX (SUBR + SPA + CFLoRA) under Ray Train with 2 DeepSpeed ZeRO-3 workers on a tiny Llama.

``distrec train`` itself builds the SUBR folder (Ray Data + the offline MiniLM encoder) and the
DIN (on the full ML-100K training split) before the workers start. The independent check: the
exported artefacts (CFLoRA folder, projector, DIN), loaded into one plain process without
DeepSpeed, reproduce the run's test predictions; so the partitioned SPA embedding
replacement, the per-instance G and their export agree with the unpartitioned model.
Both precisions run: fp32, and bf16 (DeepSpeed's bf16 mode over a bf16 backbone, no patched
package), whose reproduction is bounded by bf16 rounding instead of fp32's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from distrec.config import load_job_config
from distrec.train.launcher import run_job

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]
RELLAX = ["subr.enabled=true", "subr.k=3", "subr.pca_dim=32", "spa.enabled=true", "adapter.kind=cflora",
          "adapter.cflora.mode=generated", "crm.epochs=1", "crm.hidden_size=32", "train.max_steps=4",
          "train.eval_every=100"]


PRECISION = {"fp32": [], "bf16": ["deepspeed.precision=bf16", "model.dtype=bf16"]}
# |p_yes(run) - p_yes(plain reproduction)|: fp32 differs only in reduction order, so fp32 is
# what proves the wiring; bf16 also in the rounding of bf16 matmuls over partitioned vs whole
# weights and over other padded widths, which depends on the CPU's bf16 kernels. Measured on
# the 32 test rows: at most 1.6e-3 on an earlier machine; 7.8e-3 and 1.4e-2 (3 of 32 rows over
# 5e-3) on this one, with the pre-2026-11-30 code too. One bf16 ulp of a logit near 1 is 7.8e-3.
REPRODUCTION_ATOL = {"fp32": 2e-5, "bf16": 2e-2}


@pytest.fixture(scope="module", params=list(PRECISION))
def rellax_run(request, ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"rellax-{request.param}")
    job = load_job_config(REPO / "jobs" / "tiny.yaml", [f"ray.storage_path={root}", "ray.run_name=rellax",
                                                      f"crm.path={root / 'din'}", *RELLAX, *PRECISION[request.param]])
    return job, run_job(job)


def test_rellax_run_trains_and_exports_every_part(rellax_run):
    job, result = rellax_run
    run = result.run_dir
    adapter_cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["peft_type"] == "CFLORA" and adapter_cfg["mode"] == "generated"
    assert adapter_cfg["d_instance"] == 32
    projector = load_file(str(run / "spa" / "projector.safetensors"))
    assert projector["fc1.weight"].shape == (64, 32)  # [d_llm, d_crm] of the tiny model and the DIN
    assert projector["fc2.weight"].shape == (64, 64)
    assert np.isfinite(result.metrics["test"]["logloss"])
    reports = [json.loads(p.read_text()) for p in sorted((run / "diagnostics").glob("partition_rank*.json"))]
    for name in ("projector.fc1.weight", "llm.model.layers.0.self_attn.q_proj.gate.fc1.weight"):
        local = [r["params"][name][0] for r in reports]
        full = reports[0]["params"][name][1]
        assert all(n <= -(-full // 2) for n in local) and sum(local) >= full, (name, local, full)
    params = reports[0]["params"]
    assert params["llm.model.layers.0.self_attn.q_proj.base.weight"][2] == {"fp32": "float32", "bf16": "bfloat16"}[job.model.dtype]
    for trained in ("llm.model.layers.0.self_attn.q_proj.lora_A.weight", "llm.model.layers.0.self_attn.q_proj.gate.fc1.weight",
                    "projector.fc1.weight"):  # mixed precision: what is trained stays fp32 over a bf16 base
        assert params[trained][2] == "float32", trained


def test_prompts_carry_retrieved_items_and_placeholders(rellax_run):
    from distrec.eval.tensorboard import read_texts

    _, result = rellax_run
    prompt = read_texts(result.run_dir / "tensorboard")["samples/prompt"][0]
    shown = [line for line in prompt.splitlines() if line[:2] in {f"{i}." for i in range(1, 10)}]
    assert 1 <= len(shown) <= 3 and all(line.endswith(" [hist]") for line in shown), prompt
    assert prompt.count(" [target]") == 1


def test_exported_rellax_reproduces_the_runs_predictions_without_deepspeed(rellax_run, one_thread):
    from distrec.data import storage
    from distrec.data.prompts import Catalog
    from distrec.data.tokenize import ctr_label_ids, tokenize_batch
    from tiny_models import cflora_adapter

    from distrec.model.backbone import build_model, load_tokenizer
    from distrec.model.crm.features import CrmFeatures
    from distrec.model.rellax import BatchConditioning
    from distrec.model.soft_prompts import HIST_TOKEN, TARGET_TOKEN, Projector, SoftPromptLM, add_placeholder_tokens
    from distrec.objectives.tasks import Batchify, CtrTask
    from distrec.train.artefacts import ensure_prepared, retrieval_dir
    from distrec.train.data_stream import to_column

    job, result = rellax_run
    run = result.run_dir
    tokenizer = load_tokenizer(job.model)
    llm = build_model(job.model)
    ids = add_placeholder_tokens(tokenizer, llm)
    adapter = cflora_adapter()
    adapter.load(llm, run / "adapter")
    projector = Projector(32, 64)
    projector.load_state_dict(load_file(str(run / "spa" / "projector.safetensors")))
    model = SoftPromptLM(llm, projector, ids).eval()
    crm = CrmFeatures(job.crm.path)

    folder = retrieval_dir(job, ensure_prepared(job))
    table = storage.open_split(folder, "test")
    catalog = Catalog.for_dataset(job.data.dataset, storage.open_table(folder, "items"), storage.open_table(folder, "users"))
    cols = tokenize_batch(table, catalog, tokenizer, job.prompt, "ctr", *ctr_label_ids(tokenizer, job.prompt),
                          markers=(HIST_TOKEN, TARGET_TOKEN))
    batch = {k: to_column(v) for k, v in cols.items()}
    task = CtrTask(*ctr_label_ids(tokenizer, job.prompt), Batchify(tokenizer.pad_token_id, torch.device("cpu")),
                   BatchConditioning(crm, True, adapter.instance))
    rows = task.eval_rows(model, batch, len(batch["sample_id"]))
    mine = dict((r[0], r[3]) for r in rows)
    preds = pq.read_table(run / "predictions_test.parquet").to_pandas()
    assert len(preds) == len(mine) == 32
    np.testing.assert_allclose(preds.p_yes.to_numpy(), [mine[s] for s in preds.sample_id],
                               atol=REPRODUCTION_ATOL[job.model.dtype])


def test_distrec_predict_reproduces_the_runs_test_predictions(rellax_run, tmp_path):
    """Train/serve parity for ReLLaX: rows of (user_id, item_id, timestamp) go through SUBR, the
    CRM features, SPA and the generated CFLoRA context inside Ray Data actors."""
    import pyarrow.parquet as pq

    from distrec.data import storage
    from distrec.predict.driver import predict
    from distrec.predict.pipeline import PredictOptions
    from distrec.train.artefacts import ensure_prepared

    job, result = rellax_run
    rows = storage.open_split(ensure_prepared(job), "test").select(["sample_id", "user_id", "item_id", "timestamp"])
    pq.write_table(rows, tmp_path / "rows.parquet")
    predict(str(result.run_dir), str(tmp_path / "rows.parquet"), str(tmp_path / "out"),
            PredictOptions(actors=2, chunk_rows=16, progress=False))
    got = pq.read_table(tmp_path / "out").to_pandas().merge(
        pq.read_table(result.run_dir / "predictions_test.parquet").to_pandas(), on="sample_id", suffixes=("", "_run"))
    assert len(got) == 32
    atol = 1e-5 if job.model.dtype == "fp32" else REPRODUCTION_ATOL["bf16"]
    np.testing.assert_allclose(got.p_yes, got.p_yes_run, atol=atol)
