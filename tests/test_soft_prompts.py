"""SPA soft-prompt injection (ReLLaX §3.6, §4 item 5) against the plain embedding lookup."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch
from tiny_models import tiny_llama
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from distrec.data.prompts import Catalog, build_ctr_prompt
from distrec.errors import DataError
from distrec.model.soft_prompts import (
    HIST_TOKEN,
    TARGET_TOKEN,
    Projector,
    add_placeholder_tokens,
    inject,
    placeholder_token_ids,
)

pytestmark = pytest.mark.usefixtures("one_thread")

HIST, TARGET, D_CRM = 98, 99, 6
IDS = {"hist": HIST, "target": TARGET}


def prompts() -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Two rows: 3 and 1 history placeholders, one target each; CRM embeddings to match."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 90, (2, 12), generator=g)
    ids[0, [2, 5, 7]] = HIST
    ids[0, 10] = TARGET
    ids[1, [4]] = HIST
    ids[1, 9] = TARGET
    hist = [torch.randn(3, D_CRM, generator=g), torch.randn(1, D_CRM, generator=g)]
    return ids, hist, torch.randn(2, D_CRM, generator=g)


def test_projector_shape_and_init():
    proj = Projector(D_CRM, 32)
    assert proj(torch.randn(5, D_CRM)).shape == (5, 32)
    assert torch.count_nonzero(proj.fc1.bias) == 0 and torch.count_nonzero(proj.fc2.bias) == 0
    assert isinstance(proj.act, nn.GELU)
    # Xavier-normal: std = sqrt(2 / (fan_in + fan_out))
    big = Projector(200, 300)
    assert abs(big.fc1.weight.std().item() - (2 / 500) ** 0.5) < 0.005


def test_only_placeholder_positions_change():
    model, proj = tiny_llama(), Projector(D_CRM, 32)
    ids, hist, tgt = prompts()
    emb = model.get_input_embeddings()
    out = inject(emb, ids, IDS, hist, tgt, proj)
    plain = emb(ids)
    marker = (ids == HIST) | (ids == TARGET)
    assert out.shape == plain.shape == (2, 12, 32)
    assert torch.equal(out[~marker], plain[~marker].detach())
    with torch.no_grad():
        assert torch.allclose(out[0, [2, 5, 7]], proj(hist[0]))  # prompt order
        assert torch.allclose(out[1, 4], proj(hist[1])[0])
        assert torch.allclose(out[:, [10, 9]].diagonal(dim1=0, dim2=1).T, proj(tgt))
    # the padded form gives the same result
    padded = torch.zeros(2, 4, D_CRM)
    padded[0, :3], padded[1, :1] = hist[0], hist[1]
    assert torch.equal(inject(emb, ids, IDS, padded, tgt, proj, hist_counts=[3, 1]), out)
    # gradients reach the projector only; the LLM embedding stays frozen
    out.sum().backward()
    assert proj.fc1.weight.grad is not None and emb.weight.grad is None


class OwnEmbedding(nn.Module):
    """A "projector" returning the placeholder token's own embedding row (flag in column 0)."""

    def __init__(self, table: nn.Embedding) -> None:
        super().__init__()
        self.table = table

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        rows = torch.where(e[:, :1] > 0, self.table.weight[HIST], self.table.weight[TARGET])
        return rows.detach()


def test_own_embedding_projection_reproduces_the_plain_model():
    model = tiny_llama()
    ids, hist, tgt = prompts()
    hist = [torch.ones(len(h), D_CRM) for h in hist]
    tgt = -torch.ones(2, D_CRM)
    with torch.no_grad():
        spa = model(inputs_embeds=inject(model.get_input_embeddings(), ids, IDS, hist, tgt,
                                         OwnEmbedding(model.get_input_embeddings()))).logits
        plain = model(input_ids=ids).logits
        real = model(inputs_embeds=inject(model.get_input_embeddings(), ids, IDS, hist, tgt,
                                          Projector(D_CRM, 32))).logits
    assert torch.allclose(spa, plain, atol=1e-6)
    assert (real - plain).abs().max() > 1e-3


def test_count_mismatches_raise():
    model, proj = tiny_llama(), Projector(D_CRM, 32)
    emb = model.get_input_embeddings()
    ids, hist, tgt = prompts()
    with pytest.raises(DataError, match="row 1 has 1 \\[hist\\]"):
        inject(emb, ids, IDS, [hist[0], torch.randn(2, D_CRM)], tgt, proj)
    two = ids.clone()
    two[0, 0] = TARGET
    with pytest.raises(DataError, match="row 0 has 2 \\[target\\]"):
        inject(emb, two, IDS, hist, tgt, proj)
    none = ids.clone()
    none[1, 9] = 1
    with pytest.raises(DataError, match="row 1 has 0 \\[target\\]"):
        inject(emb, none, IDS, hist, tgt, proj)
    with pytest.raises(DataError, match="hist_counts"):
        inject(emb, ids, IDS, torch.zeros(2, 3, D_CRM), tgt, proj)


def test_placeholder_tokens_with_ctr_prompt():
    titles = {1: "Alpha", 2: "Bravo", 3: "Charlie", 4: "Delta"}
    catalog = Catalog.from_tables(
        pa.table({"item_id": list(titles), "title": list(titles.values())}),
        pa.table({"user_id": [1], "gender": ["F"], "age": [30], "occupation": ["writer"], "location": [None]}),
    )
    sample = {"sample_id": 1, "user_id": 1, "item_id": 4, "label": 1,
              "history_item_ids": [1, 2, 3], "history_ratings": [4.0, 1.0, 5.0]}
    plain_text = build_ctr_prompt(sample, catalog, 2)
    core = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.train_from_iterator([plain_text, "x y z"], trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]")
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=64))
    n_before = len(tok)
    ids = add_placeholder_tokens(tok, model)
    assert ids == placeholder_token_ids(tok) and set(ids.values()) == {n_before, n_before + 1}
    assert model.get_input_embeddings().num_embeddings == n_before + 2
    assert add_placeholder_tokens(tok, model) == ids and len(tok) == n_before + 2  # idempotent

    text = build_ctr_prompt(sample, catalog, 2, hist_marker=HIST_TOKEN, target_marker=TARGET_TOKEN)
    enc = tok.encode(text)
    assert enc.count(ids["hist"]) == 2 and enc.count(ids["target"]) == 1
    # each [hist] follows its rating's ")"; the text before the first marker is unchanged
    close = tok.convert_tokens_to_ids(")")
    assert all(enc[i - 1] == close for i, t in enumerate(enc) if t == ids["hist"])
    first = enc.index(ids["hist"])
    assert enc[:first] == tok.encode(plain_text)[:first]
    assert tok.decode(enc).count(HIST_TOKEN.strip()) == 2
    out = inject(model.get_input_embeddings(), torch.tensor([enc]), ids,
                 [torch.randn(2, D_CRM)], torch.randn(1, D_CRM), Projector(D_CRM, 32))
    assert out.shape == (1, len(enc), 32)
