"""Tokenisation: label ids, truncation, response alignment, chat template, batching.

The tokenizer is a real word-level ``PreTrainedTokenizerFast`` trained in memory on the
prompts below (no downloads): one token per word or punctuation run.
"""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from distrec.config import PromptConfig
from distrec.data.prompts import (
    Catalog,
    build_counterfactual_prompt,
    build_ctr_prompt,
    build_generative_prompt,
)
from distrec.data.tokenize import (
    IGNORE_INDEX,
    ctr_prompt_text,
    label_token_ids,
    tokenize_batch,
    tokenize_ctr,
    tokenize_generative,
)
from distrec.errors import DataError, ModelError

# Single-word titles, so a title's presence is visible as one token.
TITLES = {i: name for i, name in enumerate(
    ["Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot", "Golf"], start=1)}
CHAT = (
    "{% for m in messages %}<|user|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    items = pa.table({"item_id": list(TITLES), "title": list(TITLES.values())})
    users = pa.table({"user_id": [1], "gender": ["F"], "age": [30], "occupation": ["writer"],
                      "location": [None]})
    return Catalog.from_tables(items, users)


def make_sample(sample_id: int = 5, n_hist: int = 6, label: int = 1) -> dict:
    return {
        "sample_id": sample_id,
        "user_id": 1,
        "item_id": 7,
        "label": label,
        "history_item_ids": list(range(1, n_hist + 1)),
        "history_ratings": [float(1 + i % 5) for i in range(n_hist)],
    }


@pytest.fixture(scope="module")
def tokenizer(catalog) -> PreTrainedTokenizerFast:
    s = make_sample()
    corpus = [build_ctr_prompt(s, catalog, 10), *build_generative_prompt(s, catalog),
              build_counterfactual_prompt(s, catalog)[0], "Yes No Will indeed", *TITLES.values()]
    core = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["[UNK]", "[PAD]", "</s>", "<|user|>", "<|assistant|>"]
    core.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=specials))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]",
                                  eos_token="</s>", name_or_path="tiny-wordlevel")
    tok.chat_template = CHAT
    return tok


def cfg(max_length: int = 512, k: int = 10, chat: bool = False) -> PromptConfig:
    return PromptConfig(history_k=k, max_length=max_length, use_chat_template=chat)


def tokens(tok, ids) -> list[str]:
    return tok.convert_ids_to_tokens(ids)


def titles_in(tok, ids) -> list[str]:
    """The item titles (single words here) among ``ids``, in order."""
    return [t for t in tokens(tok, ids) if t in TITLES.values()]


def tokens_to_ids(tok, pieces: list[str]) -> list[int]:
    return tok.convert_tokens_to_ids(pieces)


def test_label_token_ids_looked_up(tokenizer):
    yes_id, no_id = label_token_ids(tokenizer)
    assert tokens(tokenizer, [yes_id, no_id]) == ["Yes", "No"]


def test_multi_token_answer_raises_model_error(tokenizer):
    with pytest.raises(ModelError) as err:
        label_token_ids(tokenizer, yes=" Yes indeed")
    msg = str(err.value)
    assert "tiny-wordlevel" in msg and "['Yes', 'indeed']" in msg and "prompt.answer_yes" in msg


def test_ctr_fits_without_truncation(tokenizer, catalog):
    yes_id, no_id = label_token_ids(tokenizer)
    for label, answer in ((1, yes_id), (0, no_id)):
        out = tokenize_ctr(make_sample(label=label), catalog, tokenizer, cfg(k=4), yes_id, no_id)
        assert out["input_ids"][-1] == answer and out["label"] == label
        assert out["labels"] == [IGNORE_INDEX] * (len(out["input_ids"]) - 1) + [answer]
        assert (out["n_history_shown"], out["n_truncated"]) == (4, 0)
        recent = ["Charlie", "Delta", "Echo", "Foxtrot", "Golf"]
        assert titles_in(tokenizer, out["input_ids"]) == recent


def test_ctr_truncation_drops_oldest_first_and_keeps_target(tokenizer, catalog):
    yes_id, no_id = label_token_ids(tokenizer)
    sample = make_sample(n_hist=6)
    full = tokenize_ctr(sample, catalog, tokenizer, cfg(), yes_id, no_id)
    # Room for exactly the prompt with the two oldest of six items gone.
    two_gone = ctr_prompt_text(sample, catalog, tokenizer, cfg(), n_drop=2)
    limit = len(tokenizer.encode(two_gone)) + 1
    assert limit < len(full["input_ids"])
    out = tokenize_ctr(sample, catalog, tokenizer, cfg(max_length=limit), yes_id, no_id)
    assert (out["n_truncated"], out["n_history_shown"]) == (2, 4)
    assert len(out["input_ids"]) <= limit
    assert titles_in(tokenizer, out["input_ids"]) == ["Charlie", "Delta", "Echo", "Foxtrot", "Golf"]
    assert out["input_ids"][-1] == yes_id
    # One token less forces one more item out.
    tighter = tokenize_ctr(sample, catalog, tokenizer, cfg(max_length=limit - 1), yes_id, no_id)
    assert tighter["n_truncated"] == 3 and "Charlie" not in tokens(tokenizer, tighter["input_ids"])


def test_ctr_cannot_fit_raises_naming_sample(tokenizer, catalog):
    yes_id, no_id = label_token_ids(tokenizer)
    sample = make_sample(sample_id=42)
    with pytest.raises(DataError, match=r"sample_id 42: the prompt is \d+ tokens even with no"):
        tokenize_ctr(sample, catalog, tokenizer, cfg(max_length=12), yes_id, no_id)


def test_generative_labels_and_counterfactual_alignment(tokenizer, catalog):
    sample = make_sample()
    fact = tokenize_generative(sample, catalog, tokenizer, cfg(), counterfactual=False)
    cf = tokenize_generative(sample, catalog, tokenizer, cfg(), counterfactual=True)
    eos = tokenizer.eos_token_id

    def response(row):
        return [t for t, y in zip(row["input_ids"], row["labels"]) if y != IGNORE_INDEX]

    assert response(fact) == response(cf) == tokens_to_ids(tokenizer, ['"', "Golf", '"']) + [eos]
    assert [y for y in fact["labels"] if y != IGNORE_INDEX] == response(fact)
    assert not {"Alpha", "Bravo", "Charlie"} & set(tokens(tokenizer, cf["input_ids"]))
    assert cf["n_history_shown"] == 0 and fact["n_history_shown"] == 6

    width = max(len(fact["input_ids"]), len(cf["input_ids"]))
    pad = tokenizer.pad_token_id
    left = [[pad] * (width - len(r["input_ids"])) + r["input_ids"] for r in (fact, cf)]
    lab = [[IGNORE_INDEX] * (width - len(r["labels"])) + r["labels"] for r in (fact, cf)]
    cols = [[j for j, y in enumerate(row) if y != IGNORE_INDEX] for row in lab]
    assert cols[0] == cols[1] == list(range(width - len(response(fact)), width))
    assert [left[0][j] for j in cols[0]] == [left[1][j] for j in cols[1]]


def test_generative_truncation_and_history_k(tokenizer, catalog):
    sample = make_sample()
    limited = tokenize_generative(sample, catalog, tokenizer, cfg(k=2))
    assert (limited["n_history_shown"], limited["n_truncated"]) == (2, 0)
    full = tokenize_generative(sample, catalog, tokenizer, cfg())
    tight = cfg(max_length=len(full["input_ids"]) - 1)
    out = tokenize_generative(sample, catalog, tokenizer, tight)
    assert out["n_truncated"] >= 1 and "Alpha" not in tokens(tokenizer, out["input_ids"])
    assert out["input_ids"][-4:] == full["input_ids"][-4:]
    with pytest.raises(DataError, match=r"sample_id 5 \(counterfactual\)"):
        tokenize_generative(sample, catalog, tokenizer, cfg(max_length=10), counterfactual=True)


def test_chat_template_applied_only_when_enabled(tokenizer, catalog):
    yes_id, no_id = label_token_ids(tokenizer)
    sample = make_sample()
    on = tokenize_ctr(sample, catalog, tokenizer, cfg(chat=True), yes_id, no_id)
    off = tokenize_ctr(sample, catalog, tokenizer, cfg(chat=False), yes_id, no_id)
    on_tokens = tokens(tokenizer, on["input_ids"])
    assert on_tokens[0] == "<|user|>" and on_tokens[-2:] == ["<|assistant|>", "Yes"]
    assert "<|user|>" not in tokens(tokenizer, off["input_ids"])
    assert on["input_ids"][1:-2] == off["input_ids"][:-1]


@pytest.mark.parametrize("fmt", ["dict", "pyarrow", "pandas"])
def test_tokenize_batch_matches_single(tokenizer, catalog, fmt):
    samples = [make_sample(sample_id=i, n_hist=3 + i, label=i % 2) for i in range(4)]
    columns = {key: [s[key] for s in samples] for key in samples[0]}
    batch = {"dict": lambda: columns, "pyarrow": lambda: pa.table(columns),
             "pandas": lambda: pa.table(columns).to_pandas()}[fmt]()
    config = cfg(max_length=60)
    yes_id, no_id = label_token_ids(tokenizer)
    out = tokenize_batch(batch, catalog, tokenizer, config, "ctr")
    assert out["sample_id"] == [0, 1, 2, 3] and out["label"] == [0, 1, 0, 1]
    for i, s in enumerate(samples):
        one = tokenize_ctr(s, catalog, tokenizer, config, yes_id, no_id)
        assert out["input_ids"][i] == one["input_ids"]
        assert out["n_truncated"][i] == one["n_truncated"]
    assert max(out["n_truncated"]) > 0  # the cap bites for the longer histories

    gen = tokenize_batch(batch, catalog, tokenizer, cfg(), "generative", with_counterfactual=True)
    assert set(gen) >= {"input_ids", "labels", "cf_input_ids", "cf_labels", "n_truncated"}
    assert gen["input_ids"][0][-4:] == gen["cf_input_ids"][0][-4:]


def test_tokenize_batch_empty_keeps_columns(tokenizer, catalog):
    empty = {key: [] for key in make_sample()}
    out = tokenize_batch(empty, catalog, tokenizer, cfg(), "ctr")
    assert out["input_ids"] == [] and out["n_truncated"] == [] and out["sample_id"] == []


def test_fit_finds_fewest_drops_in_few_encodes():
    """The search returns the minimal drop count for uneven item lengths, with few encodes."""
    import random

    from distrec.data.tokenize import _fit

    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 60)
        item_lens = [rng.randint(3, 30) for _ in range(n)]
        head = rng.randint(5, 40)
        full = head + sum(item_lens)
        budget = rng.randint(head, full - 1)
        calls = []

        def encode(n_drop: int) -> list[int]:
            calls.append(n_drop)
            return [0] * (head + sum(item_lens[n_drop:]))

        n_drop, ids = _fit(n, encode, budget, "s", 1, budget + 1)
        expected = min(d for d in range(n + 1) if head + sum(item_lens[d:]) <= budget)
        assert n_drop == expected and len(ids) == head + sum(item_lens[n_drop:])
        assert len(calls) <= 3 + 2 * max(1, n).bit_length()


def test_history_indices_column_is_used(tokenizer, catalog):
    """A ``history_indices`` column (e.g. SUBR's retrieved positions) picks the shown items."""
    sample = dict(make_sample(), history_indices=[0, 2])
    out = tokenize_batch({k: [v] for k, v in sample.items()}, catalog, tokenizer, cfg(k=4), "ctr")
    assert out["n_history_shown"] == [2]
    assert titles_in(tokenizer, out["input_ids"][0]) == ["Alpha", "Charlie", "Golf"]


def test_same_preamble_counterfactual_shares_the_factual_prompt_up_to_the_history(tokenizer, catalog):
    from distrec.objectives.cft import shared_prefix_lengths

    sample = make_sample()
    same = PromptConfig(history_k=10, max_length=512, use_chat_template=False, cf_preamble="same")
    fact = tokenize_generative(sample, catalog, tokenizer, same, counterfactual=False)
    cf = tokenize_generative(sample, catalog, tokenizer, same, counterfactual=True)
    authors_cf = tokenize_generative(sample, catalog, tokenizer, cfg(), counterfactual=True)
    head = build_generative_prompt(sample, catalog)[0].split("### Input:")[0]
    n_head = len(tokenizer.encode(head, add_special_tokens=False))

    def common(a, b):
        ids = [torch.tensor([a["input_ids"]]), torch.tensor([b["input_ids"]])]
        return int(shared_prefix_lengths(ids[0], torch.ones_like(ids[0]), ids[1], torch.ones_like(ids[1]), 0)[0])

    # the whole prompt before the Input block, and the "###" that opens the next header
    assert n_head <= common(fact, cf) <= n_head + 1
    assert common(fact, authors_cf) < n_head / 3  # the authors' preamble differs after a few words
