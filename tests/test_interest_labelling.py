"""ESIM labelling: prompt, parser, and the Ray Data LLM stage (tiny random Llama and a fake LLM)."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distrec.config.eimf import LabelConfig
from distrec.interests.labelling import (
    LABELS_SCHEMA,
    build_prompts,
    embed_interests,
    interest_prompt,
    label_typical_users,
    parse_interests,
)

GENRES = ["Action", "Drama", "Comedy", "Horror"]
N_USERS = 8


# ----------------------------------------------------------------------------- prompt and parser


def test_prompt_structure():
    p = interest_prompt(["Alien (1979)", "Heat (1995)"], [["Horror", "Sci-Fi"], "Crime"], k=3)
    assert p.startswith("You are a recommendation analyst.")
    assert "1. Alien (1979) (genres: Horror, Sci-Fi)\n2. Heat (1995) (genres: Crime)" in p
    assert "up to 3 distinct interests" in p
    assert p.rstrip().endswith("Interest: <short phrase> | Reason: <one line>")
    assert p.index("Alien") < p.index("Heat")  # oldest first
    assert "3. " not in interest_prompt(["A", "B"], [None, []], k=2).split("Identify")[0]
    with pytest.raises(ValueError):
        interest_prompt(["A"], [], k=2)


def test_parse_well_formed():
    text = "Interest: Space horror | Reason: watched Alien twice\nInterest: Heist thrillers | Reason: Heat"
    assert parse_interests(text, 4) == ["Space horror", "Heist thrillers"]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("1. Interest: Sci-fi | Reason: a\n2) Interest: Noir | Reason: b\n(3) interest: Westerns", ["Sci-fi", "Noir", "Westerns"]),
        ("- Interest: Sci-fi | Reason: a\n* INTEREST:   Film   noir |REASON: b\n• Interest - Cartoons", ["Sci-fi", "Film noir", "Cartoons"]),
        ("**Interest:** \"Romantic comedies\". | **Reason:** x\n   \n  Interest 2: 90s action | reason: y", ["Romantic comedies", "90s action"]),
        ("Sure! Here are the interests:\nSci-fi | Reason: lots of it\nThanks.", ["Sci-fi"]),
        ("### Interest: Space opera - Reason: Star Wars\nInterest: Heists; reason: Heat", ["Space opera", "Heists"]),
        ("Interest: Sci-fi | Reason: a\nInterest: SCI-FI | Reason: dup\nInterest: sci-fi", ["Sci-fi"]),
    ],
    ids=["numbered", "bulleted-case-space", "markdown-quotes", "unlabelled-with-reason", "dash-reason", "duplicates"],
)
def test_parse_tolerant(text, expected):
    assert parse_interests(text, 4) == expected


def test_parse_caps_at_k():
    text = "\n".join(f"Interest: topic {c} | Reason: r" for c in "abcdef")
    assert parse_interests(text, 4) == ["topic a", "topic b", "topic c", "topic d"]


@pytest.mark.parametrize(
    "text",
    ["", None, "   \n\n", "lorem ipsum dolor sit amet", "Interest: | Reason: nothing", "Interest: <short phrase> | Reason: <one line>",
     "Interest: 1234 | Reason: numbers", "Interest: " + "x" * 200, "the the the the"],
    ids=["empty", "none", "blank", "garbage", "empty-phrase", "placeholder", "digits", "too-long", "repetition"],
)
def test_parse_malformed_is_none(text):
    assert parse_interests(text, 4) is None


def test_embed_interests_calls_encoder_once():
    calls = []

    def enc(phrases):
        calls.append(list(phrases))
        return np.arange(len(phrases) * 2, dtype=np.float32).reshape(-1, 2)

    out = embed_interests([["b", "a"], [], ["a"]], enc)
    assert calls == [["a", "b"]]
    assert out == [[[2.0, 3.0], [0.0, 1.0]], [], [[0.0, 1.0]]]
    assert embed_interests([[], []], enc) == [[], []] and len(calls) == 1


# ----------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def items() -> pa.Table:
    return pa.table(
        {
            "item_id": pa.array(np.arange(1, 25), pa.int64()),
            "title": [f"Film{i}" for i in range(1, 25)],
            "categories": [[GENRES[i % 4]] for i in range(1, 25)],
        }
    )


@pytest.fixture(scope="module")
def samples() -> pa.Table:
    rows, sid = [], 0
    for u in range(N_USERS):
        seq = [i for i in range(1, 25) if i % 4 == u % 4][:5]
        for j in range(1, len(seq)):
            rows.append({"sample_id": sid, "user_id": u, "item_id": seq[j], "timestamp": j, "history_item_ids": seq[:j]})
            sid += 1
    return pa.Table.from_pylist(rows)


@pytest.fixture(scope="module")
def selection() -> pa.Table:
    return pa.table({"user_id": pa.array(np.arange(N_USERS)[::-1].copy(), pa.int64()), "cluster": pa.array(np.arange(N_USERS)[::-1] % 3, pa.int64())})


def hashing_encoder(phrases: list[str]) -> np.ndarray:
    """Deterministic bag-of-words hashing into 8 dims."""
    out = np.zeros((len(phrases), 8), dtype=np.float32)
    for i, p in enumerate(phrases):
        for w in p.lower().split():
            h = int(hashlib.md5(w.encode()).hexdigest(), 16)
            out[i, h % 8] += 1.0 if (h >> 8) % 2 else -1.0
    return out


def test_build_prompts_latest_sequence(samples, items, selection):
    t = build_prompts(selection, samples, items, LabelConfig(max_interests=3, history_len=10))
    assert t.column("user_id").to_pylist() == list(range(N_USERS))
    assert t.column("cluster").to_pylist() == [u % 3 for u in range(N_USERS)]
    p1 = t.column("prompt")[1].as_py()  # user 1: items 1, 5, 9, 13, 17 (Drama); latest history + target
    assert "1. Film1 (genres: Drama)" in p1 and "5. Film17 (genres: Drama)" in p1 and "6. " not in p1


# ----------------------------------------------------------------------------- the Ray Data stage


@pytest.fixture(scope="module")
def tiny_llm_dir(tmp_path_factory, samples, items, selection):
    """A random 1-layer Llama and a word-level tokenizer (built here with `tokenizers`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-llm")
    corpus = build_prompts(selection, samples, items, LabelConfig()).column("prompt").to_pylist()
    corpus += ["Interest : Reason | sci-fi comedy films"]
    core = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "</s>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>")
    tok.save_pretrained(out)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    import torch

    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def test_actor_left_padded_batch_matches_single(tiny_llm_dir, samples, items, selection):
    """The actor without Ray: batched greedy generation (left padding) = one prompt at a time."""
    from dataclasses import asdict

    from distrec.interests.labelling import InterestLLM

    cfg = LabelConfig(model=str(tiny_llm_dir), max_new_tokens=5, retry=False)
    prompts = build_prompts(selection, samples, items, cfg).slice(0, 3)
    prompts = prompts.set_column(2, "prompt", pa.array([p[: 40 + 60 * i] for i, p in enumerate(prompts.column("prompt").to_pylist())]))
    actor = InterestLLM(asdict(cfg))
    batched = actor(prompts)
    single = [actor(prompts.slice(i, 1)).column("raw_output")[0].as_py() for i in range(3)]
    assert batched.column("raw_output").to_pylist() == single
    assert all(len(o.split()) > 0 for o in single)  # it generated something
    assert batched.column("n_attempts").to_pylist() == [1, 1, 1]


@pytest.mark.ray
def test_stage_with_tiny_llm(ray_local, tiny_llm_dir, samples, items, selection, tmp_path):
    cfg = LabelConfig(model=str(tiny_llm_dir), num_actors=2, batch_size=4, max_new_tokens=4, keep_dropped=True, seed=1)
    out = tmp_path / "labels.parquet"
    table, stats = label_typical_users(selection, samples, items, hashing_encoder, cfg, out_path=out)
    assert table.schema.equals(LABELS_SCHEMA)
    assert pq.read_table(out).schema.equals(LABELS_SCHEMA)
    assert stats.n_users == N_USERS == table.num_rows
    assert stats.parsed + stats.dropped == stats.n_users
    assert stats.dropped <= stats.retried
    attempts = table.column("n_attempts").to_pylist()
    assert sum(a == 2 for a in attempts) == stats.retried and set(attempts) <= {1, 2}
    assert stats.llm_time_s > 0
    assert table.column("user_id").to_pylist() == list(range(N_USERS))
    assert set(table.column("model").to_pylist()) == {str(tiny_llm_dir)}
    for interests, vecs, raw in zip(
        table.column("interests").to_pylist(), table.column("interest_vectors").to_pylist(), table.column("raw_output").to_pylist()
    ):
        assert len(interests) == len(vecs) and all(len(v) == 8 for v in vecs)
        assert (parse_interests(raw, cfg.max_interests) or []) == interests


@pytest.mark.ray
def test_stage_with_injected_llm(ray_local, samples, items, selection, tmp_path):
    def fake_generate(prompts, *, sample, seed):
        outs = []
        for p in prompts:
            genre = re.search(r"genres: (\w+)", p).group(1)
            if genre == "Comedy" or (genre == "Horror" and not sample):
                outs.append("I cannot answer that.")  # Comedy: never parses; Horror: parses on the retry
            else:
                outs.append(f"1. Interest: {genre} films | Reason: all {genre}\n2. Interest: {genre} classics | Reason: old\n"
                            f"3. Interest: {genre.upper()} FILMS | Reason: duplicate")
        return outs

    cfg = LabelConfig(num_actors=2, batch_size=2, max_interests=4, seed=3)
    table, stats = label_typical_users(selection, samples, items, hashing_encoder, cfg, out_path=tmp_path / "l.parquet", generate_fn=fake_generate)
    genre_of = {u: GENRES[u % 4] for u in range(N_USERS)}  # user u watches items i ≡ u (mod 4)
    comedy = [u for u in range(N_USERS) if genre_of[u] == "Comedy"]
    horror = [u for u in range(N_USERS) if genre_of[u] == "Horror"]
    assert stats.n_users == N_USERS
    assert stats.dropped == len(comedy) and stats.retried == len(comedy) + len(horror)
    assert stats.parsed == N_USERS - len(comedy) == table.num_rows
    assert table.schema.equals(LABELS_SCHEMA)
    assert table.column("user_id").to_pylist() == [u for u in range(N_USERS) if u not in comedy]
    rows = {r["user_id"]: r for r in table.to_pylist()}
    for u, r in rows.items():
        g = genre_of[u]
        assert r["interests"] == [f"{g} films", f"{g} classics"]
        assert r["n_attempts"] == (2 if u in horror else 1)
        assert r["cluster"] == u % 3
        np.testing.assert_allclose(np.asarray(r["interest_vectors"]), hashing_encoder(r["interests"]))
        assert r["model"] == "custom:fake_generate"
    # the table feeds EIMF training directly
    from distrec.model.interests.eimf import SemanticBank

    bank = SemanticBank(table)
    assert bank.vectors.shape == (len(rows), 2, 8) and bank.typical(np.array(comedy)).sum() == 0


@pytest.mark.parametrize("line, phrase", [
    ("Interest: Sling Blade (genres: Drama, War) | Reason: x", "Sling Blade (genres: Drama, War)"),  # balanced: kept
    ("Interest: (Sci-fi adventures) | Reason: x", "Sci-fi adventures"),
    ("Interest: [Comedy | Reason: x", "Comedy"),
    ("Interest: Film noir). | Reason: x", "Film noir"),
    ('Interest: "((Noir))" | Reason: x', "Noir"),
])
def test_parser_strips_only_enclosing_or_unmatched_brackets(line, phrase):
    from distrec.interests.labelling import parse_interests

    assert parse_interests(line, 4) == [phrase]
