"""EIMF configuration: one dataclass per concern, all gathered in :class:`EimfConfig`.

Every open design choice of EIMF (methods.md §2.3) is a field here, so a later reading of the
paper changes defaults, not code. Fields follow :mod:`distrec.config_loader`'s supported
annotations (bool, int, float, str, Optional, list, Literal, nested dataclasses); :class:`EimfConfig`
is the job config's ``eimf`` section. Tags: [P] paper, [C] ComiRec's public
code (the usual IBIM backbone), [I] a distrec placeholder (methods.md §2.4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class BackboneConfig:
    """IBIM: the multi-interest sequential recommender ([P] IBIM exists; which one is [U])."""

    kind: Literal["sa", "dr"] = "sa"  # [I] ComiRec-SA (self-attentive) or ComiRec-DR (capsules)
    num_interests: int = 4  # K [I, ComiRec default]
    dim: int = 64  # d [I, ComiRec default]
    max_len: int = 20  # history positions the model sees (ComiRec: 20 or 50) [C]
    sa_hidden_mult: int = 4  # ComiRec-SA: attention hidden width = 4·d [C]
    sa_add_pos: bool = True  # ComiRec-SA adds learned position embeddings before attention [C]
    dr_iters: int = 3  # routing iterations [C]
    dr_bilinear: Literal["shared", "per_interest"] = "shared"  # one map for all capsules (MIND) or one per capsule [C: both exist]
    dr_init: Literal["fixed_normal", "zeros"] = "fixed_normal"  # initial routing logits; zeros with a shared map keeps all capsules equal [I]
    dr_stop_grad_routing: bool = True  # routing iterations use detached predictions, as ComiRec [C]
    emb_init_std: Optional[float] = None  # item embedding N(0, std); None -> d**-0.5 [I]

    def __post_init__(self) -> None:
        if self.num_interests < 1 or self.dim < 1 or self.max_len < 1:
            raise ValueError("backbone.num_interests, backbone.dim and backbone.max_len must be >= 1")
        if self.dr_iters < 1:
            raise ValueError(f"backbone.dr_iters must be >= 1, got {self.dr_iters}")


@dataclass
class RecLossConfig:
    """L_rec: next-item sampled softmax on the interest chosen by argmax ([C] ComiRec)."""

    sampler: Literal["log_uniform", "uniform", "full"] = "log_uniform"  # TF's default sampler in ComiRec [C]; full = exact softmax
    num_negatives: int = 1280  # shared by the batch (ComiRec: 10 × batch size) [C]
    logq_correction: bool = True  # subtract log(expected count) from every logit (TF sampled_softmax_loss) [C]
    remove_accidental_hits: bool = True  # a sampled negative equal to the target is masked [C]
    popularity_rank: bool = True  # log-uniform over items ranked by training frequency (else by index) [I]

    def __post_init__(self) -> None:
        if self.sampler != "full" and self.num_negatives < 1:
            raise ValueError(f"loss.num_negatives must be >= 1, got {self.num_negatives}")


@dataclass
class EsimConfig:
    """ESIM losses: semantic prediction and modality alignment ([P] they exist; form is [I])."""

    lambda_pred: float = 0.1  # [I]
    lambda_align: float = 0.1  # [I]
    head: Literal["linear", "mlp"] = "linear"  # projection heads (behaviour -> semantic, semantic -> behaviour) [I]
    matching: Literal["hungarian", "greedy"] = "hungarian"  # behavioural-semantic interest matching [I]
    match_on: Literal["pred", "align"] = "pred"  # matching cosine computed in the semantic (pred) or behavioural (align) space [I]
    pred_loss: Literal["cosine", "mse"] = "cosine"  # L_pred on matched pairs [I]
    tau: float = 0.1  # InfoNCE temperature [I]
    align_symmetric: bool = True  # InfoNCE both ways (behaviour->semantic and back) [I]

    def __post_init__(self) -> None:
        if self.lambda_pred < 0 or self.lambda_align < 0:
            raise ValueError("esim.lambda_pred and esim.lambda_align must be >= 0")
        if self.tau <= 0:
            raise ValueError(f"esim.tau must be > 0, got {self.tau}")


@dataclass
class SelectionConfig:
    """Typical-user selection ([P] a clustering algorithm selects typical samples; the rest [I])."""

    n_clusters: int = 10
    per_cluster: int = 5  # m: users kept per centroid
    niter: int = 20  # k-means iterations
    representation: Literal["interests", "items"] = "interests"  # mean of interest vectors or of item embeddings
    assign: Literal["nearest", "members"] = "nearest"  # m nearest not-yet-chosen users per centroid (exact count) or m nearest among the cluster's members
    history_len: int = 10  # items of the user's latest sequence used for the representation
    include_target: bool = True  # the latest sample's target counts as part of the user's sequence
    seed: int = 42

    def __post_init__(self) -> None:
        if self.n_clusters < 1 or self.per_cluster < 1 or self.niter < 1:
            raise ValueError("selection.n_clusters, selection.per_cluster and selection.niter must be >= 1")


@dataclass
class LabelConfig:
    """ESIM prompting: the LLM that names a typical user's interests ([P] exists; all else [I])."""

    model: str = "tiny"  # local HF folder, HF id, or "tiny" (distrec.model.backbone's random Llama)
    max_interests: int = 4  # K asked for in the prompt, and the parser's cap
    history_len: int = 10
    include_target: bool = True
    num_actors: int = 2
    actor_cpus: float = 0.5
    actor_gpus: float = 0.0
    batch_size: int = 8
    max_new_tokens: int = 128
    max_prompt_tokens: int = 1024
    use_chat_template: bool = True
    retry: bool = True  # one retry for outputs that do not parse
    retry_temperature: float = 0.7  # the retry samples (seeded) instead of greedy decoding
    retry_top_p: float = 0.9
    keep_dropped: bool = False  # keep unparsed users in the table with empty interests
    dtype: Literal["fp32", "bf16"] = "fp32"
    seed: int = 42

    def __post_init__(self) -> None:
        if self.max_interests < 1 or self.num_actors < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("label.max_interests, num_actors, batch_size and max_new_tokens must be >= 1")


@dataclass
class EimfTrainConfig:
    """Optimisation of IBIM (+ ESIM auxiliary losses)."""

    batch_size: int = 128  # ComiRec default [C]
    lr: float = 1e-3  # Adam, ComiRec default [C]
    weight_decay: float = 0.0
    epochs: int = 1
    max_steps: Optional[int] = None  # caps epochs
    seed: int = 42
    device: str = "auto"  # "auto" -> cuda when available, else cpu
    log_every: int = 50

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.epochs < 1 or self.lr <= 0:
            raise ValueError("train.batch_size >= 1, train.epochs >= 1 and train.lr > 0 required")


@dataclass
class EimfEvalConfig:
    """Full-catalogue retrieval evaluation ([I] the usual multi-interest protocol, methods.md §2.4)."""

    ks: list[int] = field(default_factory=lambda: [20, 50])
    exclude_history: bool = False  # drop the user's history items from the ranking
    batch_size: int = 1024

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"eval.ks must be non-empty and >= 1, got {self.ks}")


@dataclass
class EimfConfig:
    """The job config's ``eimf`` section (read by ``distrec eimf`` and ``model.kind: eimf``).

    ``labels``: a labels table (``distrec eimf label``) whose typical users the ESIM losses
    read; None trains IBIM alone. ``encoder``: interest phrases -> vectors (a
    :func:`distrec.retrieval.encoders.make_encoder` spec). ``out_dir``: where the stages
    (``ibim/``, ``eimf/``), the labels and the results go."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    loss: RecLossConfig = field(default_factory=RecLossConfig)
    esim: EsimConfig = field(default_factory=EsimConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    train: EimfTrainConfig = field(default_factory=EimfTrainConfig)
    eval: EimfEvalConfig = field(default_factory=EimfEvalConfig)
    labels: Optional[str] = None
    encoder: str = "minilm"
    out_dir: str = "runs/eimf"


def eimf_config_from_dict(data: dict) -> EimfConfig:
    """Typed :class:`EimfConfig` from nested dicts (unknown keys and bad types raise ConfigError)."""
    from distrec import config_loader

    return config_loader.from_dict(EimfConfig, data, where="eimf config")
