"""The ``subr`` section: ReLLaX's semantic user-behaviour retrieval (:mod:`distrec.retrieval.subr` runs it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Order = Literal["chronological", "similarity", "recent"]
Similarity = Literal["cosine", "dot"]
Method = Literal["auto", "matrix", "gather", "faiss"]
_ORDERS = ("chronological", "similarity", "recent")
_SIMS = ("cosine", "dot")
_METHODS = ("auto", "matrix", "gather", "faiss")


@dataclass
class SubrConfig:
    """Semantic user-behaviour retrieval (the job config's ``subr`` section)."""

    enabled: bool = False  # distrec train: retrieve (or reuse) before tokenising; False = recent-K prompts
    k: int = 30  # retrieved history items per sample (= prompt history length)
    order: Order = "chronological"
    similarity: Similarity = "cosine"
    pca_dim: int | None = 512  # None: no PCA
    encoder: str = "minilm"  # "minilm" | "sentence:<name or folder>" | "llm:<HF causal LM folder>" | "backbone" (the job's LLM)
    item_text_genres: Literal["all", "first"] = "all"
    candidates: int | None = None  # only the most recent N history items are candidates
    method: Method = "auto"
    max_matrix_items: int = 8192  # auto: full item×item matrix up to this catalogue size (8192² fp32 = 256 MiB)
    batch_size: int = 4096  # samples per Ray Data batch (Ray's per-batch overhead dominates below ~4k)
    encode_batch_size: int = 128
    seed: int = 0  # PCA random_state

    def __post_init__(self) -> None:
        if self.k <= 0:
            raise ValueError(f"subr.k must be > 0, got {self.k}")
        if self.order not in _ORDERS:
            raise ValueError(f"subr.order must be one of {_ORDERS}, got {self.order!r}")
        if self.similarity not in _SIMS:
            raise ValueError(f"subr.similarity must be one of {_SIMS}, got {self.similarity!r}")
        if self.method not in _METHODS:
            raise ValueError(f"subr.method must be one of {_METHODS}, got {self.method!r}")
        if self.pca_dim is not None and self.pca_dim <= 0:
            raise ValueError(f"subr.pca_dim must be > 0 or None, got {self.pca_dim}")
        if self.candidates is not None and self.candidates <= 0:
            raise ValueError(f"subr.candidates must be > 0 or None, got {self.candidates}")
        if self.batch_size <= 0 or self.encode_batch_size <= 0:
            raise ValueError("subr.batch_size and subr.encode_batch_size must be > 0")
