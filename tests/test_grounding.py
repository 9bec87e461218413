"""BIGRec-style grounding (spec methods.md §1.7, §4 CFT.7): last-token embeddings, exact L2
search against a numpy brute force, duplicate titles, top-beam / interleaved ranks, beam
generation. Tiny random Llama + in-memory word-level tokenizer (no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from distrec.eval.grounding import (
    ItemIndex,
    clean_title,
    generate_beams,
    grounded_ranks,
    last_token_states,
    rank_of,
)
from distrec.metrics.ranking_metrics import rank_metrics

WORDS = ["red", "green", "blue", "apple", "car", "big", "small", "book", "the", "of", "user",
         "likes", "next", "item", ":", '"']
SPECIALS = ["[UNK]", "[PAD]", "</s>"]

# item id -> title; 13 and 17 share a title
TITLES = {10: "red apple", 11: "green apple", 12: "blue car", 13: "big book", 14: "small car",
          15: "the red car", 16: "book of apple", 17: "big book", 18: "small green book"}


@pytest.fixture(scope="module")
def tokenizer():
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]",
                                   eos_token="</s>")


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      bos_token_id=None)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def item_index(model, tokenizer):
    ids = list(TITLES)
    vecs = last_token_states(model, tokenizer, list(TITLES.values()), batch_size=4)
    return ItemIndex(ids, vecs, TITLES), vecs


def test_last_token_states_shape_and_padding_invariance(model, tokenizer):
    texts = list(TITLES.values())
    batched = last_token_states(model, tokenizer, texts, batch_size=4)
    assert batched.shape == (len(texts), 32) and batched.dtype == np.float32
    single = np.concatenate([last_token_states(model, tokenizer, [t], batch_size=1) for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    # identical to the final-layer state at the last position of an unpadded forward
    ids = torch.tensor([tokenizer.encode("small green book")])
    with torch.no_grad():
        ref = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1].numpy()
    np.testing.assert_allclose(batched[-1], ref, atol=1e-5)
    assert not model.training


def test_faiss_search_matches_numpy_brute_force():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(50, 16)).astype(np.float32)
    queries = rng.normal(size=(7, 16)).astype(np.float32)
    ids = np.arange(100, 150)
    got_ids, got_d = ItemIndex(ids, items).search(queries, 10)
    d = np.sqrt(((queries[:, None, :] - items[None, :, :]) ** 2).sum(-1))
    order = np.argsort(d, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(got_ids, ids[order])
    np.testing.assert_allclose(got_d, np.take_along_axis(d, order, 1), rtol=1e-4, atol=1e-4)
    assert ItemIndex(ids, items).search(queries, 500)[0].shape == (7, 50)  # k capped


def test_generated_title_grounds_to_its_item_at_rank_zero(model, tokenizer, item_index):
    index, _ = item_index
    generated = ['"red apple"\n', " blue car", "small green book", "book of apple"]
    targets = [10, 12, 18, 16]
    vecs = last_token_states(model, tokenizer, [clean_title(g) for g in generated], batch_size=3)
    rankings = index.ground(vecs, k=5)
    for ranking, target in zip(rankings, targets):
        assert ranking[0] == target
        assert rank_of(target, ranking, TITLES) == 0
        assert len(ranking) == 5 and len({TITLES[i] for i in ranking}) == 5


def test_duplicate_titles_share_the_best_rank(model, tokenizer, item_index):
    index, _ = item_index
    vec = last_token_states(model, tokenizer, ["big book"])
    ranking = index.ground(vec, k=len(TITLES))[0]
    assert TITLES[ranking[0]] == "big book"
    assert rank_of(13, ranking, TITLES) == rank_of(17, ranking, TITLES) == 0
    assert len(ranking) == len(set(TITLES.values())) == 8  # one entry per title


def test_dedupe_by_title_hand_example():
    # 1-D vectors: distance from the query at 0 is the coordinate
    ids = [1, 2, 3, 4, 5]
    vecs = np.array([[0.1], [0.2], [0.3], [0.4], [0.5]], dtype=np.float32)
    titles = {1: "X", 2: "Y", 3: "X", 4: "Z", 5: "X"}
    index = ItemIndex(ids, vecs, titles)
    q = np.zeros((1, 1), np.float32)
    assert index.ground(q, k=3) == [[1, 2, 4]]  # k distinct titles despite duplicates
    assert index.ground(q, k=2) == [[1, 2]]
    raw = index.ground(q, k=5, dedupe=False)[0]
    assert raw == [1, 2, 3, 4, 5]
    dedup = index.ground(q, k=5)[0]
    # target 3 shares title X with item 1 -> best rank 0; Z is rank 2 after de-duplication,
    # rank 3 in the authors' raw ranking (evaluate_acc.py: min rank of the title's items)
    assert rank_of(3, dedup, titles) == rank_of(5, dedup, titles) == 0
    assert rank_of(4, dedup, titles) == 2 and rank_of(4, raw, titles) == 3
    assert rank_of(4, raw) == 3 and rank_of(9, raw) == -1


def test_grounded_ranks_top_beam_and_interleave_hand_example():
    titles = {1: "a", 2: "b", 3: "c", 4: "d", 5: "e", 6: "b", 7: "f"}
    samples = [
        [[1, 2, 3], [4, 1, 5]],  # interleaved: 1, 4, 2, 3, 5
        [[1, 2, 3], [6, 1, 5]],  # 6 has title "b" like 2: interleaved 1, 2(6), 3, 5
        [[7, 1], [2, 3]],        # interleaved: 7, 2, 1, 3
    ]
    targets = [3, 5, 6]
    top = grounded_ranks(samples, targets, titles, mode="top_beam")
    np.testing.assert_array_equal(top, [2, -1, -1])  # 6 is not in the top beam
    inter = grounded_ranks(samples, targets, titles, mode="interleave")
    np.testing.assert_array_equal(inter, [3, 3, 1])
    np.testing.assert_array_equal(grounded_ranks(samples, targets, titles, "interleave", cut=3),
                                  [-1, -1, 1])
    # without titles, items match by id only (6 is not 2)
    np.testing.assert_array_equal(grounded_ranks(samples, targets, None, "interleave"), [3, 4, -1])
    m = rank_metrics(inter, ks=(1, 3, 5))
    assert m["hr@1"] == 0 and np.isclose(m["hr@3"], 1 / 3) and m["hr@5"] == 1
    with pytest.raises(ValueError):
        grounded_ranks(samples, targets, titles, mode="best")


def test_generate_beams_continuations_and_left_padding(model, tokenizer):
    prompts = ["the user likes red apple next item :", "blue car", "the user likes big book of"]
    out = generate_beams(model, tokenizer, prompts, num_beams=3, max_new_tokens=4, batch_size=3)
    assert len(out) == 3 and all(len(beams) == 3 for beams in out)
    assert all(isinstance(s, str) for beams in out for s in beams)
    # continuation only: decoding never repeats the prompt
    for p, beams in zip(prompts, out):
        assert all(not b.startswith(p) for b in beams if b)
    one_by_one = [generate_beams(model, tokenizer, [p], num_beams=3, max_new_tokens=4)[0] for p in prompts]
    assert out == one_by_one
