"""Helpers for the field-input tests: a byte-level tokenizer, a scripted beam generator on a real
tiny Llama, a one-process stand-in for the training strategy, and tokenised generative rows.

The scripted generator replaces only ``generate``: every forward (item and generated-title
embeddings) runs the real tiny Llama, so grounding is exercised exactly as in a run; only the
text the "model" produces is fixed by the test, as a user reproducing a report would do.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from distrec.predict.run_model import OneProcess  # noqa: F401 - re-exported to the field-input tests
from distrec.config import PromptConfig
from distrec.data.prompts import Catalog
from distrec.data.tokenize import tokenize_batch
from distrec.train.data_stream import to_column

SPECIALS = ["<pad>", "</s>"]


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per UTF-8 byte (no merges): any text, quotes and accents included, round-trips."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIALS + alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>",
                                   clean_up_tokenization_spaces=False)


def tiny_llama_for(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      bos_token_id=None)
    return LlamaForCausalLM(cfg).eval()


class ScriptedGenerator(torch.nn.Module):
    """The tiny Llama for every forward; ``generate`` returns scripted beams per prompt text.

    ``script(prompt_text) -> list of beam strings`` (best first). Each beam is encoded, EOS
    appended, right-padded and placed after the (left-padded) input, as HF ``generate`` returns
    it. The keyword arguments of every call are kept in ``calls``.
    """

    def __init__(self, model, tokenizer, script: Callable[[str], Sequence[str]]):
        super().__init__()
        self.model, self.tok, self.script = model, tokenizer, script
        self.calls: list[dict] = []

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def generate(self, input_ids, attention_mask, **kwargs):
        self.calls.append(dict(kwargs))
        n_ret = kwargs.get("num_return_sequences", 1)
        outs = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            prompt = self.tok.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False)
            beams = list(self.script(prompt))[:n_ret]
            assert len(beams) == n_ret, f"script gave {len(beams)} beams, generate asked {n_ret}"
            outs += [self.tok.encode(b, add_special_tokens=False) + [self.tok.eos_token_id] for b in beams]
        width = max(len(o) for o in outs)
        new = torch.full((len(outs), width), self.tok.pad_token_id, dtype=torch.long)
        for i, o in enumerate(outs):
            new[i, :len(o)] = torch.tensor(o)
        return torch.cat([input_ids.repeat_interleave(n_ret, 0), new], dim=1)


def generative_rows(samples: Sequence[Mapping], catalog: Catalog, tokenizer, history_k: int = 10) -> dict:
    """Tokenised generative rows (``input_ids``, ``labels``, ids) as the training workers hold them."""
    cfg = PromptConfig(history_k=history_k, max_length=4096, use_chat_template=False)
    batch = {k: [s[k] for s in samples] for k in ("sample_id", "user_id", "item_id", "history_item_ids")}
    out = tokenize_batch(batch, catalog, tokenizer, cfg, "generative")
    return {k: to_column(v) for k, v in out.items()}


def prompt_of(rows: dict, i: int, tokenizer) -> str:
    """Row ``i``'s prompt text, as ``generation.prompt_texts`` recovers it."""
    ids, labels = np.asarray(rows["input_ids"][i]), np.asarray(rows["labels"][i])
    return tokenizer.decode(ids[labels == -100].tolist(), skip_special_tokens=False)


def response_of(rows: dict, i: int, tokenizer) -> str:
    """Row ``i``'s exact training response (its labelled tokens; EOS dropped on decoding)."""
    ids, labels = np.asarray(rows["input_ids"][i]), np.asarray(rows["labels"][i])
    return tokenizer.decode(ids[labels != -100].tolist(), skip_special_tokens=True)


def items_table(titles: Mapping[int, str], **columns) -> pa.Table:
    return pa.table({"item_id": pa.array(list(titles), pa.int64()),
                     "title": pa.array(list(titles.values()), pa.string()), **columns})
