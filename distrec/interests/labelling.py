"""ESIM step 2: an LLM names each typical user's interests; a text encoder embeds them.

[P] the paper prompts an LLM on the typical samples to obtain explicit semantic interests.
[I] everything concrete here (methods.md §2.4): the prompt wording, the line format
``Interest: <short phrase> | Reason: <one line>``, the parser, greedy decoding with one seeded
sampling retry, and the table layout.

Pipeline (:func:`label_typical_users`): prompts are built on the driver from each selected
user's latest sequence (titles + categories, oldest first); a Ray Data stage with an actor
pool (``ActorPoolStrategy(size=num_actors)``, ``num_cpus=actor_cpus``) runs the LLM, each actor
loading the model and tokenizer once and generating greedily in left-padded batches; outputs
that do not parse get one sampled retry (seeded) and are dropped when that fails too. The
phrases are then embedded on the driver by the ``encoder`` the caller passes
(``list[str] -> [n, d_s]`` array) and the result is stored as Parquet with
:data:`LABELS_SCHEMA`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from distrec.data.ray_data import quiet_ray_data
from distrec.config.eimf import LabelConfig

#: The stored labels table.
LABELS_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("cluster", pa.int64()),
        ("prompt", pa.string()),
        ("raw_output", pa.string()),
        ("interests", pa.list_(pa.string())),
        ("interest_vectors", pa.list_(pa.list_(pa.float32()))),
        ("model", pa.string()),
        ("n_attempts", pa.int32()),
    ]
)

#: What a Ray Data actor returns per user.
_ACTOR_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("cluster", pa.int64()),
        ("prompt", pa.string()),
        ("raw_output", pa.string()),
        ("interests", pa.list_(pa.string())),
        ("n_attempts", pa.int32()),
        ("parsed", pa.bool_()),
        ("llm_time_s", pa.float64()),
    ]
)

GenerateFn = Callable[..., list]  # generate_fn(prompts: list[str], *, sample: bool, seed: int) -> list[str]
Encoder = Callable[[list], np.ndarray]  # encoder(phrases: list[str]) -> [n, d_s]

MAX_PHRASE_CHARS = 80


# --------------------------------------------------------------------------- prompt and parser


def _genres_text(genres) -> str:
    if genres is None:
        return ""
    if isinstance(genres, str):
        return genres.strip()
    return ", ".join(str(g).strip() for g in genres if str(g).strip())


def interest_prompt(history_titles: Sequence[str], history_genres: Sequence, k: int) -> str:
    """The ESIM prompt for one user.

    Args:
        history_titles: item titles, oldest first.
        history_genres: per item a list of categories, a string, or None (same length).
        k: the most interests to ask for.
    """
    if len(history_genres) != len(history_titles):
        raise ValueError("history_titles and history_genres must have the same length")
    lines = []
    for i, (title, genres) in enumerate(zip(history_titles, history_genres), start=1):
        g = _genres_text(genres)
        lines.append(f"{i}. {title}" + (f" (genres: {g})" if g else ""))
    history = "\n".join(lines) if lines else "(no history)"
    return (
        "You are a recommendation analyst. Below is a user's recent history, oldest first.\n\n"
        f"{history}\n\n"
        f"Identify up to {k} distinct interests of this user that explain the history. "
        "Write one interest per line, exactly in this format and nothing else:\n"
        "Interest: <short phrase> | Reason: <one line>"
    )


_EMPHASIS = re.compile(r"(\*\*|__|\*|`)")
_PREFIX = re.compile(r"^(?:\s*(?:[-*+•·>#]+|\(?\d{1,3}\s*[.)\]:]|\d{1,3}\s+-))+\s*")
_LABELLED = re.compile(r"^interest(?:\s*#?\s*\d{1,3})?\s*[:=\-–—]\s*(?P<rest>.*)$", re.IGNORECASE)
_REASON = re.compile(r"\s*(?:\|\s*(?:reason\s*[:\-–—])?|\breason\s*[:\-–—])", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"^<.*>$|^short phrase$", re.IGNORECASE)


_CLOSERS = {"(": ")", "[": "]", "{": "}"}


def _strip_brackets(phrase: str) -> str:
    """Drop enclosing bracket pairs and unmatched outer brackets; keep balanced inner ones
    (``"Sling Blade (Drama)"`` stays whole, ``"(Sci-fi)"`` and ``"Drama)"`` lose theirs)."""
    if phrase and phrase[0] in _CLOSERS and phrase.endswith(_CLOSERS[phrase[0]]):
        return phrase[1:-1]
    if phrase and phrase[-1] in _CLOSERS.values():
        opener = next(o for o, c in _CLOSERS.items() if c == phrase[-1])
        if phrase.count(phrase[-1]) > phrase.count(opener):
            return phrase[:-1]
    if phrase and phrase[0] in _CLOSERS and phrase.count(phrase[0]) > phrase.count(_CLOSERS[phrase[0]]):
        return phrase[1:]
    return phrase


def _clean_phrase(phrase: str) -> str | None:
    phrase = re.sub(r"\s+", " ", phrase).strip()
    prev = None
    while prev != phrase:  # quotes, brackets and trailing punctuation, in any nesting
        prev = phrase
        phrase = _strip_brackets(phrase.strip(" \t\"'“”‘’").rstrip(".,;:!-–—").strip()).strip()
    if not phrase or len(phrase) > MAX_PHRASE_CHARS or _PLACEHOLDER.match(phrase):
        return None
    if not re.search(r"[^\W\d_]", phrase):  # no letter at all
        return None
    return phrase


def parse_interests(text: str | None, k: int) -> list[str] | None:
    """Interest phrases from an LLM answer, or None when nothing parses.

    Accepts lines ``Interest: <phrase> | Reason: <text>`` with any case, numbering (``1.``,
    ``2)``, ``(3)``), bullets (``-``, ``*``, ``•``), markdown emphasis and extra whitespace;
    ``Interest 2: ...`` and a missing ``| Reason`` part are fine, and so is an unlabelled
    ``<phrase> | Reason: ...``. Phrases are de-duplicated case-insensitively (first spelling
    kept) and capped at ``k``.
    """
    if not text:
        return None
    out: list[str] = []
    seen: set[str] = set()
    for raw in str(text).splitlines():
        line = _EMPHASIS.sub("", raw).strip()
        line = _PREFIX.sub("", line).strip()
        if not line:
            continue
        m = _LABELLED.match(line)
        if m:
            rest = m.group("rest")
        elif re.search(r"\|\s*reason\s*[:\-–—]", line, re.IGNORECASE):
            rest = line
        else:
            continue
        phrase = _clean_phrase(_REASON.split(rest, maxsplit=1)[0])
        if phrase is None:
            continue
        key = phrase.casefold()
        if key in seen:
            continue
        seen.add(key)
        out.append(phrase)
        if len(out) >= k:
            break
    return out or None


# --------------------------------------------------------------------------- prompts from data


def build_prompts(selection, samples: pa.Table, items: pa.Table, cfg: LabelConfig) -> pa.Table:
    """``user_id, cluster, prompt`` for the selected users (a :class:`TypicalUsers` or a table
    with ``user_id`` and ``cluster``), sorted by user id."""
    from distrec.interests.typical_users import latest_sequences

    if isinstance(selection, pa.Table):
        sel_users = selection.column("user_id").to_numpy().astype(np.int64)
        sel_clusters = selection.column("cluster").to_numpy().astype(np.int64)
    else:
        sel_users = np.asarray(selection.user_ids, dtype=np.int64)
        sel_clusters = np.asarray(selection.clusters, dtype=np.int64)
    order = np.argsort(sel_users, kind="stable")
    sel_users, sel_clusters = sel_users[order], sel_clusters[order]
    uids, seqs = latest_sequences(samples, cfg.history_len, cfg.include_target)
    pos = np.searchsorted(uids, sel_users)
    pos = np.clip(pos, 0, max(len(uids) - 1, 0))
    missing = sel_users[(uids[pos] != sel_users)] if len(uids) else sel_users
    if len(missing):
        raise ValueError(f"selected user {int(missing[0])} has no sample in the samples table")
    item_ids = items.column("item_id").to_pylist()
    titles = dict(zip(item_ids, items.column("title").to_pylist()))
    cats = items.column("categories").to_pylist() if "categories" in items.column_names else [None] * len(item_ids)
    genres = dict(zip(item_ids, cats))
    prompts = []
    for p in pos:
        seq = seqs[p]
        prompts.append(
            interest_prompt([titles.get(i) or f"item {i}" for i in seq], [genres.get(i) for i in seq], cfg.max_interests)
        )
    return pa.table(
        {
            "user_id": pa.array(sel_users, pa.int64()),
            "cluster": pa.array(sel_clusters, pa.int64()),
            "prompt": pa.array(prompts, pa.string()),
        }
    )


# --------------------------------------------------------------------------- the LLM


def load_causal_lm(spec: str, dtype: str = "fp32", device: str = "cpu"):
    """``(model, tokenizer)`` for a local HF folder, or any ``ModelConfig.name_or_path``
    (``tiny``, ``smollm2-135m``, a GGUF, an HF id) via :mod:`distrec.model.backbone`.

    The tokenizer pads on the left (and gets a pad token when it has none).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    else:
        from distrec.config import ModelConfig
        from distrec.model.backbone import build_model, load_tokenizer

        mcfg = ModelConfig(name_or_path=spec, dtype=dtype)
        tok = load_tokenizer(mcfg)
        model = build_model(mcfg)
        model.config.use_cache = True  # build_model turns the KV cache off for training; generation wants it
        model.generation_config.use_cache = True
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    tok.padding_side = "left"
    tok.truncation_side = "left"
    model.to(device).eval()
    return model, tok


def hf_generate(model, tok, prompts: list[str], *, sample: bool, seed: int, cfg: LabelConfig) -> list[str]:
    """Batched generation with left padding: greedy, or (``sample``) seeded top-p sampling."""
    import torch

    from distrec.data.prompts.chat import render

    texts = [render(tok, p, cfg.use_chat_template) for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=cfg.max_prompt_tokens)
    enc = {k: v.to(model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    kwargs = {"max_new_tokens": cfg.max_new_tokens, "pad_token_id": tok.pad_token_id}
    if tok.eos_token_id is not None:
        kwargs["eos_token_id"] = tok.eos_token_id
    if sample:
        torch.manual_seed(seed)
        kwargs.update(do_sample=True, temperature=cfg.retry_temperature, top_p=cfg.retry_top_p, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        out = model.generate(**enc, **kwargs)
    new = out[:, enc["input_ids"].shape[1] :]
    return tok.batch_decode(new, skip_special_tokens=True)


class InterestLLM:
    """Ray Data actor: loads the LLM once; per batch generates, parses, retries once."""

    def __init__(self, cfg: dict, generate_fn: GenerateFn | None = None) -> None:
        self.cfg = LabelConfig(**cfg)
        if generate_fn is not None:
            self._generate = generate_fn
        else:
            import torch

            device = "cuda" if self.cfg.actor_gpus > 0 and torch.cuda.is_available() else "cpu"
            model, tok = load_causal_lm(self.cfg.model, self.cfg.dtype, device)
            self._generate = lambda prompts, *, sample, seed: hf_generate(
                model, tok, prompts, sample=sample, seed=seed, cfg=self.cfg
            )

    def __call__(self, batch: pa.Table) -> pa.Table:
        cfg = self.cfg
        prompts = batch.column("prompt").to_pylist()
        users = batch.column("user_id").to_pylist()
        k = cfg.max_interests
        t0 = time.perf_counter()
        raw = [str(x) for x in self._generate(prompts, sample=False, seed=cfg.seed)]
        parsed = [parse_interests(r, k) for r in raw]
        attempts = [1] * len(prompts)
        retry = [i for i, p in enumerate(parsed) if p is None]
        if retry and cfg.retry:
            seed = cfg.seed + min(users[i] for i in retry)  # depends only on the batch's users
            again = [str(x) for x in self._generate([prompts[i] for i in retry], sample=True, seed=seed)]
            for i, r in zip(retry, again):
                raw[i], parsed[i], attempts[i] = r, parse_interests(r, k), 2
        per_row = (time.perf_counter() - t0) / max(len(prompts), 1)
        return pa.table(
            {
                "user_id": batch.column("user_id"),
                "cluster": batch.column("cluster"),
                "prompt": batch.column("prompt"),
                "raw_output": pa.array(raw, pa.string()),
                "interests": pa.array([p or [] for p in parsed], pa.list_(pa.string())),
                "n_attempts": pa.array(attempts, pa.int32()),
                "parsed": pa.array([p is not None for p in parsed], pa.bool_()),
                "llm_time_s": pa.array([per_row] * len(prompts), pa.float64()),
            },
            schema=_ACTOR_SCHEMA,
        )


# --------------------------------------------------------------------------- the stage


@dataclass
class LabelStats:
    n_users: int
    parsed: int  # users with at least one interest (first try or retry)
    retried: int  # users that needed a second attempt
    dropped: int  # users whose outputs never parsed
    llm_time_s: float  # actor-seconds spent generating (summed over actors)
    encode_time_s: float
    wall_time_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def run_llm_stage(prompts: pa.Table, cfg: LabelConfig, generate_fn: GenerateFn | None = None) -> pa.Table:
    """The Ray Data actor-pool stage over ``user_id, cluster, prompt``; sorted by user id."""
    import ray
    import ray.data

    quiet_ray_data()
    if prompts.num_rows == 0:
        return _ACTOR_SCHEMA.empty_table()
    n_blocks = max(cfg.num_actors, -(-prompts.num_rows // cfg.batch_size))
    ds = ray.data.from_arrow(prompts).repartition(min(n_blocks, prompts.num_rows))
    extra = {"num_gpus": cfg.actor_gpus} if cfg.actor_gpus > 0 else {}
    out = ds.map_batches(
        InterestLLM,
        fn_constructor_kwargs={"cfg": asdict(cfg), "generate_fn": generate_fn},
        batch_size=cfg.batch_size,
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        num_cpus=cfg.actor_cpus,
        batch_format="pyarrow",
        **extra,
    )
    tables = [t for t in ray.get(out.to_arrow_refs()) if t.num_rows]
    result = pa.concat_tables([t.select(_ACTOR_SCHEMA.names).cast(_ACTOR_SCHEMA) for t in tables]) if tables else _ACTOR_SCHEMA.empty_table()
    return result.sort_by("user_id")


def embed_interests(interests: list[list[str]], encoder: Encoder) -> list[list[list[float]]]:
    """Each user's phrases -> vectors with one ``encoder`` call over the distinct phrases."""
    distinct = sorted({p for user in interests for p in user})
    if not distinct:
        return [[] for _ in interests]
    vecs = np.asarray(encoder(distinct), dtype=np.float32)
    if vecs.ndim != 2 or vecs.shape[0] != len(distinct):
        raise ValueError(f"encoder returned shape {vecs.shape} for {len(distinct)} phrases; expected (n, d)")
    row = {p: i for i, p in enumerate(distinct)}
    return [[vecs[row[p]].tolist() for p in user] for user in interests]


def label_typical_users(
    selection,
    samples_table: pa.Table,
    items_table: pa.Table,
    encoder: Encoder,
    cfg: LabelConfig | None = None,
    *,
    out_path: str | Path | None = None,
    generate_fn: GenerateFn | None = None,
) -> tuple[pa.Table, LabelStats]:
    """Prompt the LLM for every selected user, parse, embed, store; ``(labels, stats)``.

    Args:
        selection: :class:`~distrec.interests.typical_users.TypicalUsers` or a table with
            ``user_id`` and ``cluster``.
        samples_table / items_table: generative samples and the items table (titles, categories).
        encoder: ``list[str] -> [n, d_s]`` text encoder for the interest phrases.
        cfg: :class:`LabelConfig` (``model`` names the LLM).
        out_path: where to write the Parquet table (optional).
        generate_fn: replaces the LLM (tests, or an external server):
            ``generate_fn(prompts, *, sample, seed) -> list[str]``; it must be picklable.

    Must run with Ray initialised. Dropped users are left out of the table unless
    ``cfg.keep_dropped``.
    """
    cfg = cfg or LabelConfig()
    started = time.perf_counter()
    prompts = build_prompts(selection, samples_table, items_table, cfg)
    res = run_llm_stage(prompts, cfg, generate_fn)
    parsed = res.column("parsed").to_numpy(zero_copy_only=False)
    attempts = res.column("n_attempts").to_numpy()
    llm_time = float(np.sum(res.column("llm_time_s").to_numpy())) if res.num_rows else 0.0
    if not cfg.keep_dropped:
        res = res.filter(pa.array(parsed, pa.bool_()))
    t0 = time.perf_counter()
    vectors = embed_interests(res.column("interests").to_pylist(), encoder)
    encode_time = time.perf_counter() - t0
    model_name = cfg.model if generate_fn is None else f"custom:{getattr(generate_fn, '__name__', 'generate_fn')}"
    table = pa.table(
        {
            "user_id": res.column("user_id"),
            "cluster": res.column("cluster"),
            "prompt": res.column("prompt"),
            "raw_output": res.column("raw_output"),
            "interests": res.column("interests"),
            "interest_vectors": pa.array(vectors, LABELS_SCHEMA.field("interest_vectors").type),
            "model": pa.array([model_name] * res.num_rows, pa.string()),
            "n_attempts": res.column("n_attempts"),
        },
        schema=LABELS_SCHEMA,
    )
    if out_path is not None:
        from distrec.data.storage import write_parquet_file

        write_parquet_file(table, out_path)
    stats = LabelStats(
        n_users=len(parsed),
        parsed=int(parsed.sum()),
        retried=int((attempts > 1).sum()),
        dropped=int((~parsed).sum()),
        llm_time_s=llm_time,
        encode_time_s=encode_time,
        wall_time_s=time.perf_counter() - started,
    )
    return table, stats
