"""``distrec export --run RUN --merged OUT`` on run folders built by hand (no training).

Truth: PEFT's own ``PeftModel`` (unmerged LoRA) and distrec's unmerged CFLoRA layers on a fresh
copy of the base model; the merged folder is loaded by a separate Python process in which
importing distrec fails, with plain ``AutoModelForCausalLM``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from distrec.cli import app
from distrec.config import load_job_config
from distrec.config_loader import to_dict
from distrec.errors import ModelError
from distrec.export import export_merged
from distrec.model.adapters import make_adapter
from distrec.model.backbone import resolve_model_dir

pytestmark = pytest.mark.usefixtures("one_thread")

JOB = Path(__file__).parents[1] / "jobs" / "tiny.yaml"
TOKENS = torch.tensor([[1, 520, 33, 9001, 17, 4000, 250], [7, 7, 12000, 3, 48000, 60, 2]])
METRICS = {"valid": {"auc": 0.5812, "logloss": 0.6931},
           "test": {"auc": 0.6234, "logloss": 0.6817, "ci": {"auc": [0.5511, 0.7002]},
                    "bootstrap": {"level": 0.95, "method": "percentile", "resamples": 2000, "seed": 0, "users": 31}}}


def base_model():
    from transformers import AutoModelForCausalLM

    job = load_job_config(JOB)
    return AutoModelForCausalLM.from_pretrained(resolve_model_dir(job.model), dtype=torch.float32).eval()


def make_run(root: Path, *overrides: str) -> Path:
    """A finished run folder: config_train.yaml, metrics_train.json and an adapter exported by
    the adapter's own ``export`` (as training does) with non-zero random weights."""
    job = load_job_config(JOB, list(overrides))
    run = root / "runs" / "my-run" / "distrec"
    run.mkdir(parents=True)
    torch.manual_seed(0)
    adapter = make_adapter(job.adapter, d_instance=job.crm.hidden_size)
    model = adapter.attach(base_model())
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    adapter.export(model, run / "adapter", lambda params: contextlib.nullcontext(), True)
    (run / "config_train.yaml").write_text(yaml.safe_dump(to_dict(job), sort_keys=False))
    (run / "metrics_train.json").write_text(json.dumps(METRICS))
    return run


@torch.no_grad()
def logits(model) -> np.ndarray:
    return model(input_ids=TOKENS).logits.float().numpy()


def plain_load_logits(out: Path, tmp: Path) -> np.ndarray:
    """Logits of ``out`` loaded by ``AutoModelForCausalLM`` in a process where distrec cannot be imported."""
    script = (
        "import sys; sys.modules['distrec'] = None\n"
        "import numpy as np, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()\n"
        f"AutoTokenizer.from_pretrained({str(out)!r})\n"
        f"ids = torch.tensor({TOKENS.tolist()})\n"
        "with torch.no_grad(): z = m(input_ids=ids).logits.float().numpy()\n"
        f"np.save({str(tmp / 'plain.npy')!r}, z)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    return np.load(tmp / "plain.npy")


def no_leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_lora_merged_loads_without_distrec_and_matches_peft(tmp_path):
    from peft import PeftModel

    run = make_run(tmp_path)
    out = tmp_path / "served"
    result = CliRunner().invoke(app, ["export", "--run", str(run), "--merged", str(out)])
    assert result.exit_code == 0, result.output
    assert not (out / "adapter_config.json").exists()  # a plain model, not a PEFT folder

    merged = plain_load_logits(out, tmp_path)
    reference = logits(PeftModel.from_pretrained(base_model(), str(run / "adapter")).eval())
    base = logits(base_model())
    # fp32: W0·x + s·B·(A·x) and (W0 + s·B·A)·x round differently, by ~1e-7 of the logits' scale
    scale = max(1.0, float(np.max(np.abs(reference))))
    assert np.max(np.abs(merged - reference)) <= 1e-5 * scale, (np.max(np.abs(merged - reference)), scale)
    assert np.max(np.abs(reference - base)) > 1e-2  # the adapter really changes the outputs

    card = (out / "README.md").read_text()
    for needle in ("LoRA r=4, alpha=8", "CTR yes/no", "dataset: `ml-100k`", "task: `ctr`", "test.auc", "0.6234",
                   "[0.5511, 0.7002]", f"distrec export --run {run} --merged {out}", "name_or_path: tiny",
                   "library_name: transformers"):
        assert needle in card, needle


def test_cflora_static_g_merges_to_the_unmerged_layers(tmp_path):
    from tiny_models import cflora_adapter


    run = make_run(tmp_path, "adapter.kind=cflora", "adapter.cflora.mode=static")
    out = tmp_path / "served"
    export_merged(run, out)
    from transformers import AutoModelForCausalLM

    merged = logits(AutoModelForCausalLM.from_pretrained(out).eval())
    unmerged = logits(cflora_adapter().load(base_model(), run / "adapter").eval())
    scale = max(1.0, float(np.max(np.abs(unmerged))))
    assert np.max(np.abs(merged - unmerged)) <= 1e-5 * scale, (np.max(np.abs(merged - unmerged)), scale)
    assert np.max(np.abs(unmerged - logits(base_model()))) > 1e-2
    assert "CFLoRA (static G)" in (out / "README.md").read_text()


@pytest.mark.parametrize("overrides, reason", [
    (("adapter.kind=cflora", "adapter.cflora.mode=generated"), "per instance"),
    (("spa.enabled=true",), "soft-prompt placeholder tokens"),
])
def test_per_instance_runs_are_refused_with_the_reason(tmp_path, overrides, reason):
    run = make_run(tmp_path, *overrides)
    out = tmp_path / "served"
    with pytest.raises(ModelError, match=reason) as err:
        export_merged(run, out)
    assert "no single merged weight" in str(err.value) or "cannot reproduce" in str(err.value)
    assert not out.exists() and not no_leftovers(tmp_path, "served")
    result = CliRunner().invoke(app, ["export", "--run", str(run), "--merged", str(out)])
    assert result.exit_code == 2 and reason in result.output.replace("\n", " ")


def test_existing_output_kept_without_overwrite_and_nothing_half_written(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    out = tmp_path / "served"
    export_merged(run, out)
    (out / "sentinel").write_text("first export")
    result = CliRunner().invoke(app, ["export", "--run", str(run), "--merged", str(out)])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (out / "sentinel").read_text() == "first export"

    import distrec.atomic

    def broken_write(*args, **kwargs):  # the card is written last, after the weights and tokenizer
        raise RuntimeError("disk full")

    monkeypatch.setattr(distrec.atomic, "write_text", broken_write)
    with pytest.raises(RuntimeError, match="disk full"):
        export_merged(run, out, overwrite=True)
    assert (out / "sentinel").is_file() and not no_leftovers(tmp_path, "served")  # old folder intact
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="disk full"):
        export_merged(run, fresh)
    assert not fresh.exists() and not no_leftovers(tmp_path, "fresh")
    monkeypatch.undo()

    export_merged(run, out, overwrite=True)
    assert not (out / "sentinel").exists() and (out / "README.md").is_file()

    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("keep me")
    with pytest.raises(ModelError, match="not a model folder"):
        export_merged(run, other, overwrite=True)
    assert (other / "thesis.tex").read_text() == "keep me"


def test_unfinished_run_is_refused(tmp_path):
    run = make_run(tmp_path)
    (run / "metrics_train.json").unlink()
    with pytest.raises(ModelError, match="metrics_train.json"):
        export_merged(run, tmp_path / "served")
    assert not (tmp_path / "served").exists()
