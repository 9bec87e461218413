"""Field inputs (issue 14), title paths: quoted titles, colliding titles, empty generations.

Each test feeds the input of a public bug report through the real path a run takes: catalogue
-> prompts/responses -> tokenised rows -> beam texts -> embeddings of a real tiny Llama ->
faiss grounding -> HR/NDCG. Only the generated text is scripted (``ScriptedGenerator``).
"""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
import torch
from field_inputs_tools import (
    OneProcess,
    ScriptedGenerator,
    byte_tokenizer,
    generative_rows,
    items_table,
    prompt_of,
    response_of,
    tiny_llama_for,
)
from fixtures_data import write_lines

from distrec.data.loaders import load_dataset
from distrec.data.prompts import Catalog, generative_response
from distrec.data.samples import build_generative_samples
from distrec.eval.generation import grounded_metrics
from distrec.eval.grounding import generate_beams
from distrec.retrieval.item_text import item_texts


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def llm(tok):
    return tiny_llama_for(tok)


def ring_samples(item_ids: list[int]) -> list[dict]:
    """One sample per item: target = the item, history = the next two items (so prompts differ)."""
    n = len(item_ids)
    return [{"sample_id": i, "user_id": 1, "item_id": item_ids[i],
             "history_item_ids": [item_ids[(i + 1) % n], item_ids[(i + 2) % n]]} for i in range(n)]


def exact_response_metrics(llm, tok, catalog: Catalog, num_beams: int = 1, **kwargs):
    """Grounded metrics when the generator returns each sample's exact training response."""
    rows = generative_rows(ring_samples(sorted(catalog.titles)), catalog, tok)
    script = {prompt_of(rows, i, tok): [response_of(rows, i, tok)] * num_beams for i in range(len(rows["sample_id"]))}
    model = ScriptedGenerator(llm, tok, lambda p: script[p])
    metrics = grounded_metrics(model, tok, OneProcess(), rows, dict(catalog.titles), num_beams=num_beams,
                               max_new_tokens=8, ks=(1, 3), **kwargs)[0]
    return metrics, model


# ------------------------------------------------------------ failure 1: quotes inside titles

QUOTED = ['Zildjian Crash Cymbal 16"', '"Great Performances" Cats', "Toy Story", "Heat",
          'Zildjian Crash Cymbal 18"', "Shure SM58", "Casablanca", '"Weird Al" Yankovic Live!']


def test_titles_with_their_own_quotes_ground_to_themselves(llm, tok):
    catalog = Catalog.for_dataset("amazon", items_table({i + 1: t for i, t in enumerate(QUOTED)}))
    metrics, _ = exact_response_metrics(llm, tok, catalog)
    assert metrics["hr@1"] == 1.0 and metrics["ndcg@3"] == 1.0


def test_variant_fully_quoted_decomposed_and_spaced_titles_ground_to_themselves(llm, tok):
    # A title that is one quoted word, an accent stored decomposed (NFD), doubled and trailing
    # spaces, an inch mark mid-title; the generator emits the composed (NFC) form, as tokenizers
    # that normalise text do.
    titles = ['"Heroes"', unicodedata.normalize("NFD", "Amélie"), "Blade  Runner ", '12" Single Mix',
              "Ocean's Eleven", "Heat"]
    catalog = Catalog.for_dataset("amazon", items_table({i + 1: t for i, t in enumerate(titles)}))
    assert catalog.title(2) == "Amélie" and catalog.title(3) == "Blade Runner"  # one normal form
    rows = generative_rows(ring_samples(sorted(catalog.titles)), catalog, tok)
    script = {prompt_of(rows, i, tok): [unicodedata.normalize("NFC", response_of(rows, i, tok))]
              for i in range(len(rows["sample_id"]))}
    # the raw catalogue (as the items table holds it) goes to grounding: it must normalise it too
    raw = dict(zip(range(1, 7), titles))
    metrics = grounded_metrics(ScriptedGenerator(llm, tok, lambda p: script[p]), tok, OneProcess(), rows,
                               raw, num_beams=1, max_new_tokens=8, ks=(1,))[0]
    assert metrics["hr@1"] == 1.0


# ------------------------------------------------------ failure 2: different films, one title

CAPE_FEAR_MOVIES = ["1::Cape Fear (1962)::Thriller", "2::Cape Fear (1991)::Thriller",
                    "3::Sabrina (1954)::Comedy|Romance", "4::Sabrina (1995)::Comedy|Romance",
                    "5::Heat (1995)::Action"]


def write_cape_fear_ml1m(folder):
    write_lines(folder / "movies.dat", CAPE_FEAR_MOVIES, encoding="latin-1")
    order = [1, 3, 5, 2, 4]
    write_lines(folder / "ratings.dat", [f"1::{m}::4::{978300000 + 60 * k}" for k, m in enumerate(order)])
    write_lines(folder / "users.dat", ["1::M::25::12::12345"])
    return folder


def test_films_sharing_a_title_stay_distinct_in_prompts_responses_grounding_and_subr(tmp_path, llm, tok):
    tables = load_dataset("ml-1m", write_cape_fear_ml1m(tmp_path))
    samples = build_generative_samples(tables).to_pylist()
    assert [s["item_id"] for s in samples] == [3, 5, 2, 4]
    catalog = Catalog.for_dataset("ml-1m", tables.items, tables.users)
    rows = generative_rows(samples, catalog, tok)

    # prompts and responses name the films so that they can be told apart
    cape_1991 = [i for i, s in enumerate(samples) if s["item_id"] == 2][0]
    assert '"Cape Fear (1962)"' in prompt_of(rows, cape_1991, tok)
    assert response_of(rows, cape_1991, tok) == '"Cape Fear (1991)"\n'
    assert len(set(catalog.titles.values())) == 5
    assert catalog.title(5) == "Heat"  # no collision: the title stays as it was

    # SUBR item texts: one per film, all different
    _, texts = item_texts(tables.items, "ml-1m")
    assert len(set(texts)) == 5

    # grounding: generating the other film of the same name is a miss, the right one a hit
    wrong = {2: 1, 4: 3}  # target -> the namesake the generator names instead
    script = {}
    for i, s in enumerate(samples):
        named = wrong.get(s["item_id"], s["item_id"])
        script[prompt_of(rows, i, tok)] = [generative_response({"item_id": named}, catalog)]
    metrics = grounded_metrics(ScriptedGenerator(llm, tok, lambda p: script[p]), tok, OneProcess(), rows,
                               dict(catalog.titles), num_beams=1, max_new_tokens=8, ks=(1,))[0]
    assert metrics["hr@1"] == 0.5  # targets 3 and 5 hit; 2 and 4 (namesakes) miss


def test_variant_books_sharing_title_and_year_differ_by_author(tmp_path, llm, tok):
    from fixtures_data import _bx

    folder = tmp_path
    write_lines(folder / "BX-Books.csv", [
        _bx("ISBN", "Book-Title", "Book-Author", "Year-Of-Publication", "Publisher", "Image-URL-S",
            "Image-URL-M", "Image-URL-L"),
        _bx("0000000001", "Selected Poems", "Robert Frost", "1990", "Holt", "s", "m", "l"),
        _bx("0000000002", "Selected Poems", "John Donne", "1990", "Penguin", "s", "m", "l"),
        _bx("0000000003", "Dune", "Frank Herbert", "1965", "Chilton", "s", "m", "l"),
    ], encoding="latin-1")
    write_lines(folder / "BX-Book-Ratings.csv", [
        _bx("User-ID", "ISBN", "Book-Rating"), _bx("7", "0000000003", "8"), _bx("7", "0000000001", "9"),
        _bx("7", "0000000002", "6"),
    ], encoding="latin-1")
    write_lines(folder / "BX-Users.csv", [_bx("User-ID", "Location", "Age"), _bx("7", "oslo, norway", "30")],
                encoding="latin-1")
    tables = load_dataset("bookcrossing", folder)
    catalog = Catalog.for_dataset("bookcrossing", tables.items, tables.users)
    assert catalog.title(0) == "Selected Poems (Robert Frost)"
    assert catalog.title(1) == "Selected Poems (John Donne)"
    assert catalog.title(2) == "Dune"
    _, texts = item_texts(tables.items, "bookcrossing")
    assert len(set(texts)) == 3
    samples = build_generative_samples(tables).to_pylist()
    rows = generative_rows(samples, catalog, tok)
    # the reader of Frost's book gets Donne's generated: a miss, whatever the shared words
    script = {prompt_of(rows, i, tok): [generative_response({"item_id": 0 if s["item_id"] == 1 else s["item_id"]}, catalog)]
              for i, s in enumerate(samples)}
    metrics = grounded_metrics(ScriptedGenerator(llm, tok, lambda p: script[p]), tok, OneProcess(), rows,
                               dict(catalog.titles), num_beams=1, max_new_tokens=8, ks=(1,))[0]
    assert [s["item_id"] for s in samples] == [0, 1]
    assert metrics["hr@1"] == 0.5


# ------------------------------------------------------------- failure 6: empty generations

SIX = ["Toy Story", "Heat", "Casablanca", "Shure SM58", "Blade Runner", "Amélie"]


@pytest.mark.parametrize("mode", ["top_beam", "interleave"])
def test_empty_generations_are_never_hits_and_their_share_is_reported(llm, tok, mode):
    catalog = Catalog.for_dataset("amazon", items_table({i + 1: t for i, t in enumerate(SIX)}))
    rows = generative_rows(ring_samples(sorted(catalog.titles)), catalog, tok)
    model = ScriptedGenerator(llm, tok, lambda p: ["", '""\n', "   "])
    metrics = grounded_metrics(model, tok, OneProcess(), rows, dict(catalog.titles), num_beams=3,
                               max_new_tokens=8, ks=(1, 3), mode=mode)[0]
    assert metrics["hr@3"] == 0.0 and metrics["ndcg@3"] == 0.0
    assert metrics["empty_rate"] == 1.0 and metrics["empty_top_rate"] == 1.0


def test_variant_empty_top_beam_with_a_good_second_beam(llm, tok):
    # '"  "' (quotes round blanks) and a lone newline are empty too; a title after a leading
    # newline is not. Top-beam grounding misses where the top beam is empty; interleaving
    # still finds the second beam's title and never counts the empty beam.
    catalog = Catalog.for_dataset("amazon", items_table({i + 1: t for i, t in enumerate(SIX)}))
    rows = generative_rows(ring_samples(sorted(catalog.titles)), catalog, tok)
    n = len(rows["sample_id"])
    first_half = {prompt_of(rows, i, tok) for i in range(n // 2)}
    answers = {prompt_of(rows, i, tok): response_of(rows, i, tok) for i in range(n)}

    def script(prompt):
        top = '"  "\n' if prompt in first_half else "\n" + answers[prompt]
        return [top, answers[prompt] if prompt in first_half else "\n"]

    model = ScriptedGenerator(llm, tok, script)
    kw = dict(num_beams=2, max_new_tokens=8, ks=(1,))
    top = grounded_metrics(model, tok, OneProcess(), rows, dict(catalog.titles), mode="top_beam", **kw)[0]
    inter = grounded_metrics(model, tok, OneProcess(), rows, dict(catalog.titles), mode="interleave", **kw)[0]
    assert top["hr@1"] == 0.5 and inter["hr@1"] == 1.0
    assert top["empty_top_rate"] == 0.5 and top["empty_rate"] == 0.5


# ------------------------------------------------------------------- deviations: eval keys

def test_min_new_tokens_is_an_eval_key_passed_to_generate(llm, tok):
    from distrec.config import EvalConfig

    assert EvalConfig().min_new_tokens == 4
    catalog = Catalog.for_dataset("amazon", items_table({1: "Heat", 2: "Casablanca"}))
    _, model = exact_response_metrics(llm, tok, catalog)
    assert model.calls and all(c["min_new_tokens"] == 4 for c in model.calls)
    _, model = exact_response_metrics(llm, tok, catalog, min_new_tokens=0)
    assert all(c["min_new_tokens"] == 0 for c in model.calls)


def test_min_new_tokens_keeps_a_model_that_prefers_eos_from_stopping_at_once(tok):
    model = tiny_llama_for(tok)
    head = torch.nn.Linear(32, len(tok), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[tok.eos_token_id] = 10.0
        head.bias[tok.convert_tokens_to_ids("a")] = 5.0
    model.lm_head = head
    assert generate_beams(model, tok, ["x"], num_beams=1, max_new_tokens=8, min_new_tokens=0)[0][0] == ""
    assert generate_beams(model, tok, ["x"], num_beams=1, max_new_tokens=8)[0][0] == "aaaa"


def test_merge_duplicate_titles_is_a_switch(llm, tok):
    from distrec.config import EvalConfig

    assert EvalConfig().merge_duplicate_titles is True
    # items 2 and 5 are the same text with nothing (year, maker) to tell them apart
    catalog = Catalog.for_dataset("amazon", items_table({1: "Toy Story", 2: "Heat", 3: "Casablanca", 4: "Shure SM58",
                                                          5: "Heat"}))
    assert catalog.title(2) == catalog.title(5) == "Heat"
    merged, _ = exact_response_metrics(llm, tok, catalog, merge_duplicate_titles=True)
    assert merged["hr@1"] == 1.0
    by_id, _ = exact_response_metrics(llm, tok, catalog, merge_duplicate_titles=False)
    # by id, one of the two "Heat" items is ranked second for its own exact title
    assert by_id["hr@1"] == pytest.approx(4 / 5) and by_id["hr@3"] == 1.0
    assert np.isclose(by_id["ndcg@3"], (4 + 1 / np.log2(3)) / 5)


def test_real_ml100k_namesakes_are_told_apart_and_double_listings_stay_one():
    from fixtures_data import ml100k_raw_dir

    tables = load_dataset("ml-100k", ml100k_raw_dir())
    catalog = Catalog.for_dataset("ml-100k", tables.items)
    by_text: dict[str, list[int]] = {}
    for item_id, text in catalog.titles.items():
        by_text.setdefault(text, []).append(item_id)
    # different films sharing a title: one text each, with the year
    for text in ("Cape Fear (1962)", "Cape Fear (1991)", "Sabrina (1954)", "Sabrina (1995)",
                 "Scarlet Letter, The (1926)", "Scarlet Letter, The (1995)", "That Darn Cat! (1965)"):
        assert len(by_text[text]) == 1, text
    assert "Cape Fear" not in by_text and "Sabrina" not in by_text
    # the same film listed under two ids (ML-100K has 18 such pairs): one text, merged in grounding
    assert len(by_text["Chasing Amy"]) == 2 and len(by_text["That Darn Cat! (1997)"]) == 2
    assert sum(len(ids) - 1 for ids in by_text.values()) == 18
    assert len(catalog.titles) == 1682
    # every title read back from its exact response is itself (the quotes of the format only)
    from distrec.data.prompts import title_from_response

    assert all(title_from_response(generative_response({"item_id": i}, catalog)) == t
               for i, t in catalog.titles.items())
