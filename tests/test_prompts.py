"""Prompt builders: exact strings, history selection, profile sentences, chat rendering."""

from __future__ import annotations

import pyarrow as pa
import pytest

from distrec.data.prompts import (
    Catalog,
    build_counterfactual_prompt,
    build_ctr_prompt,
    build_generative_prompt,
    profile_sentence,
    render,
    stars,
)
from distrec.errors import DataError

TITLES = {
    1: "Toy Story (1995)",
    2: "Heat (1995)",
    3: "Casino (1995)",
    4: "Babe (1995)",
    5: "Sabrina (1995)",
    6: "Jumanji (1995)",
}


@pytest.fixture
def catalog() -> Catalog:
    n = len(TITLES)
    items = pa.table(
        {
            "item_id": pa.array(list(TITLES), pa.int64()),
            "title": list(TITLES.values()),
            "categories": [["Drama"]] * n,
            "year": pa.array([1995] * n, pa.int32()),
            "author": pa.array([None] * n, pa.string()),
            "publisher": pa.array([None] * n, pa.string()),
        }
    )
    users = pa.table(
        {
            "user_id": pa.array([7, 8, 9], pa.int64()),
            "gender": ["M", None, None],
            "age": pa.array([24, 35, None], pa.int32()),
            "occupation": ["technician", None, None],
            "zip": ["85711", None, None],
            "location": [None, "porto, portugal", None],
        }
    )
    return Catalog.from_tables(items, users, item_noun="movie")


@pytest.fixture
def sample() -> dict:
    return {
        "sample_id": 11,
        "user_id": 7,
        "item_id": 6,
        "label": 1,
        "history_item_ids": [1, 2, 3, 4, 5],
        "history_ratings": [5.0, 3.0, 1.0, 4.5, 2.0],
    }


def test_ctr_prompt_last_k_in_time_order(catalog, sample):
    assert build_ctr_prompt(sample, catalog, k=3) == (
        "The user is a 24-year-old male whose occupation is technician.\n"
        "The user rated the following movies, listed from oldest to most recent:\n"
        "1. Casino (1995) (1 star)\n"
        "2. Babe (1995) (4.5 stars)\n"
        "3. Sabrina (1995) (2 stars)\n"
        "More stars mean the user liked the movie more.\n"
        'Based on these ratings, will the user like the movie "Jumanji (1995)"?\n'
        "Answer with only Yes or No."
    )


def test_ctr_prompt_k_larger_than_history_shows_all(catalog, sample):
    text = build_ctr_prompt(sample, catalog, k=50)
    assert "1. Toy Story (1995) (5 stars)\n2. Heat (1995) (3 stars)\n" in text
    assert "5. Sabrina (1995) (2 stars)\n" in text


def test_ctr_prompt_explicit_history_indices(catalog, sample):
    chrono = build_ctr_prompt(sample, catalog, k=10, history_indices=[0, 3])
    assert (
        "listed from oldest to most recent:\n"
        "1. Toy Story (1995) (5 stars)\n2. Babe (1995) (4.5 stars)\nMore"
    ) in chrono
    ranked = build_ctr_prompt(sample, catalog, k=10, history_indices=[3, 0])
    assert "the following movies:\n1. Babe (1995) (4.5 stars)\n2. Toy Story" in ranked
    with pytest.raises(DataError, match="history_indices"):
        build_ctr_prompt(sample, catalog, k=10, history_indices=[5])


def test_ctr_prompt_empty_history_and_no_profile(catalog, sample):
    bare = dict(sample, user_id=9, history_item_ids=[], history_ratings=[])
    assert build_ctr_prompt(bare, catalog, k=3) == (
        'Will the user like the movie "Jumanji (1995)"?\nAnswer with only Yes or No.'
    )


def test_ctr_prompt_spa_markers(catalog, sample):
    text = build_ctr_prompt(sample, catalog, k=2, hist_marker=" [hist]", target_marker=" [target]")
    assert text.count(" [hist]") == 2 and text.count(" [target]") == 1
    assert "(4.5 stars) [hist]\n" in text and '"Jumanji (1995)" [target]?' in text


def test_ctr_prompt_unknown_item_names_id(catalog, sample):
    with pytest.raises(DataError, match="unknown item_id 99"):
        build_ctr_prompt(dict(sample, item_id=99), catalog, k=3)
    with pytest.raises(DataError, match="2 history ratings"):
        build_ctr_prompt(dict(sample, history_ratings=[1.0, 2.0]), catalog, k=3)


def test_stars_wording():
    assert [stars(r) for r in (1.0, 1, 0.0, 3.5, 10.0)] == [
        "1 star", "1 star", "0 stars", "3.5 stars", "10 stars"
    ]


def test_generative_prompt_exact(catalog, sample):
    prompt, response = build_generative_prompt(sample, catalog)
    assert prompt == (
        "Below is a task together with some context about the user. "
        "Write a response that completes the task.\n"
        "\n"
        "### Instruction:\n"
        "Based on the movies the user interacted with recently, "
        "name one new movie the user is likely to want next.\n"
        "\n"
        "### Input:\n"
        'The user interacted with these movies, oldest first: "Toy Story (1995)", '
        '"Heat (1995)", "Casino (1995)", "Babe (1995)", "Sabrina (1995)"\n'
        "\n"
        "### Response:\n"
    )
    assert response == '"Jumanji (1995)"\n'


def test_counterfactual_prompt_exact_and_history_free(catalog, sample):
    prompt, response = build_counterfactual_prompt(sample, catalog)
    assert prompt == (
        "Below is a task. Write a response that completes the task.\n"
        "\n"
        "### Instruction:\n"
        "Based on the movies the user interacted with recently, "
        "name one new movie the user is likely to want next.\n"
        "\n"
        "### Response:\n"
    )
    assert response == build_generative_prompt(sample, catalog)[1]
    for item_id in sample["history_item_ids"]:
        assert TITLES[item_id] not in prompt
    assert "### Input:" not in prompt


def test_counterfactual_prompt_with_the_same_preamble_is_the_factual_without_its_input(catalog, sample):
    factual, _ = build_generative_prompt(sample, catalog)
    prompt, response = build_counterfactual_prompt(sample, catalog, same_preamble=True)
    head, rest = factual.split("### Input:\n", 1)
    assert prompt == head + rest.split("\n\n", 1)[1]  # everything but the Input block, unchanged
    assert prompt.startswith("Below is a task together with some context about the user.")
    assert response == build_generative_prompt(sample, catalog)[1]


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(gender="M", age=24, occupation="technician"),
         "The user is a 24-year-old male whose occupation is technician."),
        (dict(gender="F", age=18, occupation="other"), "The user is an 18-year-old female."),
        (dict(gender="female", age=None, occupation="artist"),
         "The user is a female whose occupation is artist."),
        (dict(age=35, location="porto, portugal"),
         "The user is 35 years old and lives in porto, portugal."),
        (dict(location="berlin, germany"), "The user lives in berlin, germany."),
        (dict(occupation="writer"), "The user is a person whose occupation is writer."),
        (dict(gender="M", age=18, age_label="18-24", occupation="K-12 student"),
         "The user is a male aged 18-24 whose occupation is K-12 student."),
        (dict(age=1, age_label="under 18"), "The user is aged under 18."),
        (dict(), ""),
    ],
)
def test_profile_sentence(kwargs, expected):
    assert profile_sentence(**kwargs) == expected


def test_catalog_profiles_and_lookups(catalog):
    assert catalog.profile_sentence(8) == "The user is 35 years old and lives in porto, portugal."
    assert catalog.profile_sentence(9) == "" and catalog.profile_sentence(12345) == ""
    assert catalog.title(6) == "Jumanji (1995)"
    no_users = Catalog.from_tables(pa.table({"item_id": [1], "title": ["A"]}))
    assert no_users.profile_sentence(1) == "" and no_users.item_noun == "item"
    with pytest.raises(DataError, match="item_id 2 has an empty title"):
        Catalog.from_tables(pa.table({"item_id": [1, 2], "title": ["A", " "]}))


def test_catalog_for_dataset_uses_nouns_and_ml1m_age_buckets():
    items = pa.table({"item_id": [1], "title": ["A"]})
    users = pa.table({"user_id": [3], "gender": ["F"], "age": [25], "occupation": ["artist"]})
    ml1m = Catalog.for_dataset("ml-1m", items, users)
    assert ml1m.profile_sentence(3) == "The user is a female aged 25-34 whose occupation is artist."
    assert ml1m.item_plural == "movies"
    assert Catalog.for_dataset("bookcrossing", items, None).item_noun == "book"
    assert Catalog.for_dataset("ml-100k", items, users).profile_sentence(3) == (
        "The user is a 25-year-old female whose occupation is artist."
    )


class _FakeTokenizer:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return f"<user>{messages[0]['content']}</user><assistant>"


def test_render_applies_template_only_when_present_and_enabled():
    tok = _FakeTokenizer()
    assert render(tok, "hi", use_chat_template=True) == "<user>hi</user><assistant>"
    assert render(tok, "hi", use_chat_template=False) == "hi"
    tok.chat_template = None
    assert render(tok, "hi", use_chat_template=True) == "hi"
