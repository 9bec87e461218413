"""Typed job configs: YAML + key=value overrides, typos named with a suggestion, types checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from distrec.config import JobConfig, load_job_config
from distrec.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_build_typed_sections(tmp_path):
    path = write(tmp_path, "train:\n  lr: 1.0e-4\n  micro_batch_size: 2\nadapter:\n  target_modules: [q_proj]\n")
    job = load_job_config(path, ["train.lr=3e-4", "ray.num_workers=1", "deepspeed.precision=bf16", "train.max_steps=null"])
    assert isinstance(job, JobConfig)
    assert job.train.lr == pytest.approx(3e-4) and isinstance(job.train.lr, float)
    assert job.train.micro_batch_size == 2
    assert job.adapter.target_modules == ["q_proj"]
    assert job.ray.num_workers == 1 and job.deepspeed.precision == "bf16" and job.train.max_steps is None


def test_unknown_key_is_named_with_closest_suggestion(tmp_path):
    path = write(tmp_path, "train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train\.lrr'; did you mean 'train\.lr'\?") as err:
        load_job_config(path)
    assert str(path) in str(err.value)
    with pytest.raises(ConfigError, match=r"unknown key 'daat'; did you mean 'data'"):
        load_job_config(None, ["daat.dataset=ml-1m"])
    fine = write(tmp_path, "data:\n  task: ctr\n")
    with pytest.raises(ConfigError, match=r"with overrides data\.max_history_stord=8: unknown key") as err:
        load_job_config(fine, ["data.max_history_stord=8"])
    assert str(fine) in str(err.value)  # the typo is the override's, and the message says it may be


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.micro_batch_size=four", "'train.micro_batch_size' must be an integer"),
        ("train.lr=fast", "'train.lr' must be a number"),
        ("model.trust_remote_code=maybe", "'model.trust_remote_code' must be true/false"),
        ("deepspeed.precision=fp16", "not one of ['fp32', 'bf16']"),
        ("data.task=ctrr", "did you mean 'ctr'"),
        ("adapter.target_modules=q_proj", "'adapter.target_modules' must be a list"),
        ("prompt.history_k=0", "prompt.history_k must be > 0"),
        ("deepspeed.zero_stage=4", "zero_stage must be 0..3"),
        ("train", "not of the form key=value"),
    ],
)
def test_wrong_values_are_errors_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_job_config(None, [override])
    assert fragment in str(err.value)


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_job_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_job_config(write(tmp_path, "train: [unclosed\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_job_config(write(tmp_path, "- a\n- b\n"))


def test_shipped_smoke_and_tiny_jobs_load():
    smoke = load_job_config(REPO / "jobs" / "smoke.yaml")
    assert (smoke.model.name_or_path, smoke.ray.num_workers, smoke.deepspeed.zero_stage) == ("smollm2-135m", 2, 3)
    assert load_job_config(REPO / "jobs" / "tiny.yaml").model.name_or_path == "tiny"


def test_deepspeed_extra_merges_into_nested_sections():
    """``deepspeed.extra`` changes the keys it names and keeps the rest of a section."""
    from distrec.config import DeepSpeedConfig, TrainConfig
    from distrec.train.strategy import build_ds_config

    extra = {"zero_optimization": {"stage3_max_live_parameters": 100_000_000}, "steps_per_print": 5}
    cfg = build_ds_config(DeepSpeedConfig(extra=extra), TrainConfig(micro_batch_size=2, grad_accum=3), world_size=2)
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_prefetch_bucket_size"] == 50_000_000
    assert zero["stage3_max_live_parameters"] == 100_000_000 and cfg["steps_per_print"] == 5
    assert cfg["train_batch_size"] == 12


def test_deepspeed_extra_takes_nested_sections_from_yaml_and_overrides(tmp_path):
    from distrec.config import load_job_config

    (tmp_path / "job.yaml").write_text("deepspeed:\n  extra:\n    zero_optimization:\n      stage3_max_live_parameters: 5\n")
    job = load_job_config(tmp_path / "job.yaml", ["deepspeed.extra.steps_per_print=7"])
    assert job.deepspeed.extra == {"zero_optimization": {"stage3_max_live_parameters": 5}, "steps_per_print": 7}
