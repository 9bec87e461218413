"""The typed job configuration: one dataclass per concern, loaded from ``jobs/*.yaml``.

``load_job_config("jobs/smoke.yaml", ["train.lr=1e-4"])`` gives a :class:`JobConfig`; every
key is checked (typos get a suggestion) and every value is type-checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

from distrec import config_loader
from distrec.errors import ConfigError
from distrec.config.din import DinConfig
from distrec.config.eimf import EimfConfig
from distrec.config.subr import SubrConfig


@dataclass
class DataConfig:
    """Which dataset, which task, and how samples are built and split."""

    dataset: str = "ml-100k"
    task: Literal["ctr", "generative"] = "ctr"
    raw_path: Optional[str] = None  # the user's own download; None -> the fetched cache
    prepared_dir: Optional[str] = None  # None -> $DISTREC_HOME/prepared/<dataset>-<task>
    min_history: int = 5  # CTR: earlier ratings a user needs before a sample counts
    max_history: int = 10  # generative: preceding items kept per sample
    kcore: int = 0  # generative: iterative k-core filter (0 = off)
    label_threshold: Optional[float] = None  # CTR: override the per-dataset rule (label = rating >= t)
    # CTR label of each interaction. "threshold": label = rating >= label_threshold (the
    # built-in datasets' rule). "column": the interactions file's 0/1 ``label`` column
    # (dataset "custom" only). "implicit": every interaction is a positive, and
    # ``negatives_per_positive`` sampled items per positive are the negatives (seeded by
    # ``seed``; never an item the user interacted with; distrec.data.negatives).
    label_rule: Literal["threshold", "column", "implicit"] = "threshold"
    negatives_per_positive: int = 1  # label_rule "implicit": sampled negatives per positive sample
    # CTR: history entries stored per sample, only the most recent kept (None = all). The
    # default keeps ML-25M in bounds: its ~24.2M CTR samples (25M ratings, users with up to
    # ~32k of them) times 64 entries is <= 1.55e9, under the 2**31 - 1 values an Arrow list
    # column holds (full histories there hold several billion), while 64 stays above what
    # any stage reads: prompt.history_k (10) and SUBR's k (30) recent or retrieved items.
    # SUBR retrieves from the stored entries only: raise it (or null) for a larger pool.
    # Memory: the samples hold 12 bytes an entry (item id, rating); on an ML-25M-shaped set
    # the CTR prepare peaked at 17.5 GiB with 64 (jobs/bench/ml25m_prepare.py, RESULTS.md).
    max_history_stored: Optional[int] = 64
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    num_shards: int = 4
    train_size: Optional[int] = None  # few-shot: first N of a seeded shuffle of train
    valid_size: Optional[int] = None  # fixed subset of valid (seeded)
    test_size: Optional[int] = None  # fixed subset of test (seeded)
    seed: int = 42

    def __post_init__(self) -> None:
        if len(self.split) != 3 or abs(sum(self.split) - 1.0) > 1e-6 or min(self.split) < 0:
            raise ValueError(f"data.split must be three non-negative fractions summing to 1, got {self.split}")
        if self.min_history < 0 or self.max_history < 1 or self.num_shards < 1:
            raise ValueError("data.min_history >= 0, data.max_history >= 1 and data.num_shards >= 1 required")
        if self.max_history_stored is not None and self.max_history_stored < 1:
            raise ValueError(f"data.max_history_stored must be >= 1 or null, got {self.max_history_stored}")
        if self.negatives_per_positive < 1:
            raise ValueError(f"data.negatives_per_positive must be >= 1, got {self.negatives_per_positive}")
        if self.label_rule == "column" and self.dataset != "custom":
            raise ValueError(f"data.label_rule=column reads the 'label' column of the 'custom' dataset's "
                             f"interactions; dataset {self.dataset!r} has none (use threshold or implicit)")


@dataclass
class PromptConfig:
    """How a sample becomes text."""

    history_k: int = 10  # history items shown in the prompt
    max_length: int = 512  # tokens; the oldest history items are dropped to fit
    use_chat_template: bool = True
    # CTR answer words, each exactly one token. None: "Yes"/"No" after a chat template (the
    # assistant header ends the line), " Yes"/" No" after a plain prompt (ReLLa's layout).
    answer_yes: Optional[str] = None
    answer_no: Optional[str] = None
    # CFT's counterfactual prompt: "no_input" (the authors' code: the Alpaca no-input preamble)
    # or "same" (the factual preamble, only the history block removed; the two prompts then
    # share every token before it, which packed CFT computes once).
    cf_preamble: Literal["no_input", "same"] = "no_input"

    def __post_init__(self) -> None:
        if self.history_k <= 0:
            raise ValueError(f"prompt.history_k must be > 0, got {self.history_k}")
        if self.max_length <= 8:
            raise ValueError(f"prompt.max_length must be > 8, got {self.max_length}")


@dataclass
class ModelConfig:
    """What the job trains: a causal LM (``kind: causal_lm``, the default), the DIN CRM
    (``kind: din``; its settings are the ``crm`` section, its data the job's CTR samples) or
    EIMF's multi-interest recommender (``kind: eimf``; the ``eimf`` section, generative samples).

    ``name_or_path``: an HF model id, a local folder, ``smollm2-135m`` (the offline GGUF,
    converted once and cached), or ``tiny`` (a random Llama built from ``tiny``'s LlamaConfig
    fields, SmolLM2's tokenizer).

    ``init: random`` builds the architecture with fresh random weights directly under ZeRO-3's
    partitioned init (no weight file is read or written; no rank holds the whole model): for
    ``tiny``, any size ``tiny`` names (e.g. the Llama-2-7B shape in ``jobs/bench/llama7b_cpu.py``);
    for a folder or id, its ``config.json`` and tokenizer. For benchmarks and smoke tests of the
    path, not for results.
    """

    kind: Literal["causal_lm", "din", "eimf"] = "causal_lm"
    name_or_path: str = "smollm2-135m"
    init: Literal["pretrained", "random"] = "pretrained"
    gguf_file: Optional[str] = None
    trust_remote_code: bool = False
    dtype: Literal["fp32", "bf16"] = "fp32"
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    tiny: dict[str, Union[int, float]] = field(default_factory=dict)  # LlamaConfig fields


@dataclass
class CFLoraOptions:
    """CFLoRA-only settings (``adapter.kind: cflora``); r, alpha, dropout and targets are shared.

    ``mode``: ``generated`` (G per instance from the CRM representation, the authors' code),
    ``static`` (one learned r×r matrix), ``identity`` (G = I: plain LoRA), ``zero`` (base model),
    ``fixed`` (a caller-supplied G: tests and ablations in Python).
    """

    mode: Literal["generated", "static", "identity", "zero", "fixed"] = "generated"
    g_init: Literal["kaiming", "identity"] = "kaiming"  # static mode
    freeze_ab: bool = False  # two-stage regime: A, B from lora_init_dir, frozen
    lora_init_dir: Optional[str] = None  # a PEFT LoRA export (e.g. <run>/distrec/adapter) to start A, B from


@dataclass
class AdapterConfig:
    """Parameter-efficient adapter on the backbone's linear layers."""

    kind: Literal["lora", "cflora", "none"] = "lora"
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    cflora: CFLoraOptions = field(default_factory=CFLoraOptions)

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"adapter.r must be > 0, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"adapter.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("adapter.target_modules must name at least one module")


@dataclass
class CrmConfig(DinConfig):
    """The conventional recommender (DIN) behind SPA and CFLoRA; trained on the full split.

    ``path``: a saved DIN folder (``distrec crm train``); None -> built on first use under
    ``$DISTREC_HOME/crm/`` from the job's data with no few-shot subsets.
    """

    path: Optional[str] = None


@dataclass
class SpaConfig:
    """ReLLaX SPA: CRM item embeddings, projected, replace placeholder tokens in the CTR prompt."""

    enabled: bool = False


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping."""

    epochs: int = 1
    max_steps: Optional[int] = None  # optimiser steps; caps epochs
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: Literal["linear", "constant"] = "linear"  # after warm-up: linear decay to 0, or constant
    patience: Optional[int] = None  # stop after this many validations without a better selection metric
    micro_batch_size: int = 4  # per rank
    grad_accum: int = 1
    seed: int = 42
    log_every: int = 1  # steps between TensorBoard scalars
    eval_every: Optional[int] = None  # steps between validations; None -> end of each epoch
    checkpoint_every: Optional[int] = None  # steps between checkpoints; None -> end of each epoch
    prompt_samples_to_log: int = 4
    stop_at_step: Optional[int] = None  # pause after this step's checkpoint; re-run the same run name to go on
    group_by_length: bool = False  # micro-batches of similar prompt lengths (less padding; data_stream.length_grouped_order)
    group_steps: int = 32  # optimiser steps per length-sorted window
    share_prefix: bool = False  # a micro-batch's common prompt prefix runs once (objectives.shared_prefix)

    def __post_init__(self) -> None:
        if self.micro_batch_size <= 0 or self.grad_accum <= 0 or self.epochs <= 0:
            raise ValueError("train.micro_batch_size, train.grad_accum and train.epochs must be > 0")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"train.patience must be >= 1 or null, got {self.patience}")


@dataclass
class DebugConfig:
    """Fault injection and consumption records for proving recovery (tests, ``jobs/soak.yaml``;
    :mod:`distrec.train.faults`). Off by default; they need a local ``ray.storage_path``."""

    kill_at_steps: list[int] = field(default_factory=list)  # the last rank SIGKILLs itself after these steps
    kill_in_checkpoint_at_steps: list[int] = field(default_factory=list)  # ... half-way through copying that step's checkpoint
    record_samples: bool = False  # write the sample ids each rank consumes per step
    profile_step: Optional[int] = None  # torch.profiler on this optimiser step (train.profiling)

    @property
    def active(self) -> list[str]:
        """The ``debug.*`` keys that switch on fault injection or records needing local storage."""
        return [f"debug.{k}" for k in ("kill_at_steps", "kill_in_checkpoint_at_steps", "record_samples") if getattr(self, k)]


@dataclass
class DeepSpeedConfig:
    """Everything DeepSpeed-specific; turned into a DeepSpeed config dict by ``train.strategy``."""

    zero_stage: int = 3
    precision: Literal["fp32", "bf16"] = "fp32"
    offload_optimizer: bool = False
    offload_param: bool = False
    gradient_clipping: float = 1.0
    # ZeRO-3: parameters gathered by an optimiser step's first micro-batch stay gathered until the
    # step (train.strategy.DeepSpeedStrategy.accumulation_window); off with offload_param
    gather_once_per_step: bool = True
    # ZeRO-3: frozen parameters (the base under LoRA/CFLoRA) gathered once at set-up and kept whole
    # on every rank (train.strategy.DeepSpeedStrategy._replicate_frozen); same budget as above
    replicate_frozen: bool = True
    # ZeRO-3 with the frozen base whole: DeepSpeed's module hooks kept only on modules that own a
    # partitioned parameter (train.strategy.DeepSpeedStrategy._prune_idle_hooks); equal to a run
    # with every hook up to float rounding (the backward may add gradients in another order)
    prune_idle_hooks: bool = True
    extra: dict[str, object] = field(default_factory=dict)  # merged into the DeepSpeed config as is

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"deepspeed.zero_stage must be 0..3, got {self.zero_stage}")


@dataclass
class RayConfig:
    """Where and how wide the job runs."""

    address: Optional[str] = None  # None -> $RAY_ADDRESS, else a local cluster
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    storage_path: str = "runs"  # a local folder or a URI: s3://bucket/prefix, gs://..., any pyarrow/fsspec scheme
    run_name: Optional[str] = None  # None -> a fresh timestamped name; same name -> resume
    upload_every_s: float = 30.0  # URI storage: least seconds between TensorBoard uploads (also at each checkpoint)
    max_failures: int = 0
    num_to_keep: int = 2
    data_actors: int = 1
    data_actor_cpus: float = 0.5
    # Environment of the training workers only (Ray Train's worker runtime env), e.g. a
    # node-local DISTREC_HOME: {DISTREC_HOME: /local/nvme/distrec}
    worker_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"ray.num_workers must be >= 1, got {self.num_workers}")
        if self.upload_every_s < 0:
            raise ValueError(f"ray.upload_every_s must be >= 0, got {self.upload_every_s}")


@dataclass
class CftConfig:
    """Counterfactual fine-tuning (generative task). ``lam: 0`` with ``weight_rule: uniform`` is plain SFT.

    Defaults follow the authors' code: λ = 0.1, linear decay to β = 0.25, weights on both
    terms, gradient through both branches; the alternatives are the open choices of the paper.
    """

    lam: float = 0.1
    beta: Optional[float] = None  # None -> the rule's default (linear 0.25, legacy 3.6)
    weight_rule: Literal["linear", "legacy", "uniform"] = "linear"
    weight_both: bool = True  # weights on L_n too (authors' code) or on L_c only
    cf_grad: bool = True  # gradient through the counterfactual branch
    stacked: bool = True  # both branches in one forward
    pack: bool = True  # with stacked: side by side in one row per instance, not padded to the factual width
    # with stacked: the counterfactual prompt, the same for every instance, runs once per micro-batch and each
    # instance's response after it (objectives.shared_prefix); false: once per instance (pack)
    share_cf_prompt: bool = True

    def __post_init__(self) -> None:
        if self.lam < 0:
            raise ValueError(f"cft.lam must be >= 0, got {self.lam}")


@dataclass
class EvalConfig:
    """Evaluation. A NaN or infinite score always stops it with an error naming the split,
    step and first sample (``distrec.metrics.finite``); nothing is silently excluded."""

    batch_size: int = 8
    max_samples: Optional[int] = None  # cap on validation samples during training
    # Generative task, final test only: beam search + grounding to items (HR@K, NDCG@K).
    generate: bool = False
    num_beams: int = 5
    max_new_tokens: int = 64
    min_new_tokens: int = 4  # EOS is blocked for the first tokens, as in CFT's inference
    grounding: Literal["top_beam", "interleave"] = "top_beam"
    # Items with the same title (after titles are told apart by year/maker, distrec.data.titles)
    # count as one: the ranking keeps the best, a target matches any of them (the authors match
    # by title too). false: items are matched by id and duplicates occupy ranks.
    merge_duplicate_titles: bool = True
    ks: list[int] = field(default_factory=lambda: [1, 3, 5, 10, 20])
    # Hold whole weights on every rank while generating: one gather instead of one per layer
    # and decoding step (ZeRO-3). Needs the full model in memory on each rank.
    gather_for_generation: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"eval.min_new_tokens must be in 0..eval.max_new_tokens ({self.max_new_tokens}), "
                             f"got {self.min_new_tokens}")


@dataclass
class JobConfig:
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cft: CftConfig = field(default_factory=CftConfig)
    subr: SubrConfig = field(default_factory=SubrConfig)
    crm: CrmConfig = field(default_factory=CrmConfig)
    spa: SpaConfig = field(default_factory=SpaConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    eimf: EimfConfig = field(default_factory=EimfConfig)  # read when model.kind is eimf

    def __post_init__(self) -> None:
        if (self.spa.enabled or self.subr.enabled or self.needs_crm) and self.data.task != "ctr":
            raise ValueError("subr, spa and CFLoRA mode 'generated' read CTR samples (data.task=ctr); "
                             "other CFLoRA modes work with either task")
        if self.model.kind == "din" and self.data.task != "ctr":
            raise ValueError("model.kind=din trains on CTR samples: set data.task=ctr")
        if self.model.kind == "eimf" and self.data.task != "generative":
            raise ValueError("model.kind=eimf trains on next-item samples: set data.task=generative")
        if self.crm.history == "retrieved" and not self.subr.enabled:
            raise ValueError("crm.history=retrieved reads SUBR's history_indices: set subr.enabled=true")
        if self.train.share_prefix and (self.model.kind != "causal_lm" or self.needs_crm):
            raise ValueError("train.share_prefix needs model.kind=causal_lm without spa.enabled or CFLoRA mode "
                             "'generated' (per-instance inputs make rows differ from the first token)")

    @property
    def cflora_generated(self) -> bool:
        """CFLoRA with G generated per instance from the CRM representation."""
        return self.adapter.kind == "cflora" and self.adapter.cflora.mode == "generated"

    @property
    def needs_crm(self) -> bool:
        """SPA and generated-mode CFLoRA read the frozen CRM."""
        return self.spa.enabled or self.cflora_generated

    @property
    def shares_cf_prompt(self) -> bool:
        """CFT's counterfactual prompt runs once per micro-batch (``cft.share_cf_prompt``, generative causal LM)."""
        return (self.model.kind == "causal_lm" and self.data.task == "generative" and self.cft.lam > 0
                and self.cft.stacked and self.cft.share_cf_prompt)

    @property
    def trunk_attention(self) -> bool:
        """The model needs ``objectives.shared_prefix``'s trunk attention: a prefix runs once per micro-batch."""
        return self.train.share_prefix or self.shares_cf_prompt


def load_job_config(path: str | Path | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Load a :class:`JobConfig` from YAML plus ``key=value`` overrides."""
    return config_loader.load(JobConfig, path, overrides)


def job_config_from_dict(data: dict) -> JobConfig:
    return config_loader.from_dict(JobConfig, data, where="job config")


__all__ = ["ConfigError", "JobConfig", "load_job_config", "job_config_from_dict"]
