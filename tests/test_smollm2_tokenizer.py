"""The real SmolLM2 tokenizer (offline GGUF, converted once): ChatML prompts end with the
assistant header, so the CTR answer words are "Yes"/"No" without a leading space, each one token."""

from __future__ import annotations

import pyarrow as pa
from fixtures_data import shared_home

from distrec.config import ModelConfig, PromptConfig
from distrec.data.prompts import Catalog
from distrec.data.tokenize import answer_words, ctr_label_ids, tokenize_ctr


def test_chat_prompt_answer_words_are_single_tokens():
    from distrec.model.backbone import load_tokenizer

    shared_home()
    tok = load_tokenizer(ModelConfig(name_or_path="smollm2-135m"))
    cfg = PromptConfig(history_k=2, max_length=256)
    assert answer_words(tok, cfg) == ("Yes", "No")
    assert answer_words(tok, PromptConfig(use_chat_template=False)) == (" Yes", " No")
    yes_id, no_id = ctr_label_ids(tok, cfg)
    assert tok.decode([yes_id]) == "Yes" and tok.decode([no_id]) == "No" and yes_id != no_id

    items = pa.table({"item_id": [1, 2, 3], "title": ["Toy Story", "Heat", "Babe"]})
    catalog = Catalog.from_tables(items, item_noun="movie")
    sample = {"sample_id": 7, "user_id": 1, "item_id": 3, "label": 1,
              "history_item_ids": [1, 2], "history_ratings": [5.0, 2.0]}
    out = tokenize_ctr(sample, catalog, tok, cfg, yes_id, no_id)
    assert out["input_ids"][-1] == yes_id and out["labels"][-1] == yes_id
    assert tok.decode(out["input_ids"][:-1]).endswith("<|im_start|>assistant\n")
