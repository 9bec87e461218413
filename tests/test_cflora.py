"""CFLoRA (ReLLaX §3.7, §4 items 6-8) against independent truth.

Every reduction is checked against a computation that does not use CFLoRA's own code path:
PEFT's LoRA on a copy of the same base model, the untouched base model, and mixtures of LoRA
experts written out by hand.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
import torch.nn.functional as F
from tiny_models import cflora_adapter, tiny_llama
from torch import nn
from transformers import LlamaForCausalLM

from distrec.errors import ModelError
from distrec.model.adapters.cflora import (
    CFLoraAdapter,
    CFLoraLinear,
    InstanceContext,
    InteractionGenerator,
    cflora_layers,
    find_instance_context,
    generator_parameter_count,
)

pytestmark = pytest.mark.usefixtures("one_thread")

R, D_H = 8, 16


def ids(batch: int = 3, length: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 100, (batch, length), generator=torch.Generator().manual_seed(seed))


def no_gather(params):
    return contextlib.nullcontext()


def randomise_b(model: nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def cflora(mode: str, **kw) -> tuple[LlamaForCausalLM, CFLoraAdapter]:
    adapter = cflora_adapter(D_H, r=R, alpha=16, mode=mode, **kw)
    return adapter.attach(tiny_llama()).eval(), adapter


def layer(mode: str = "fixed", d_in: int = 12, d_out: int = 10, seed: int = 5) -> CFLoraLinear:
    torch.manual_seed(seed)
    lay = CFLoraLinear(nn.Linear(d_in, d_out), r=R, alpha=16, dropout=0.0, mode=mode, d_instance=D_H)
    with torch.no_grad():
        lay.lora_B.weight.normal_()
    return lay


# --------------------------------------------------------------------------- reductions


@pytest.mark.parametrize("mode", ["identity", "fixed", "static"])
def test_g_identity_reproduces_peft_lora(mode):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_llama(), LoraConfig(r=R, lora_alpha=16, lora_dropout=0.05,
                                                         target_modules=["q_proj", "v_proj"]))
    randomise_b(peft_model)
    peft_model.eval()
    model, adapter = cflora(mode, g_init="identity")
    layers = cflora_layers(model)
    assert len(layers) == 4
    with torch.no_grad():
        for path, lay in layers.items():
            peft_layer = peft_model.base_model.model.get_submodule(path)
            lay.lora_A.weight.copy_(peft_layer.lora_A["default"].weight)
            lay.lora_B.weight.copy_(peft_layer.lora_B["default"].weight)
    x = ids()
    with torch.no_grad(), adapter.instance(g=torch.eye(R)):
        ours = model(x).logits
        ref = peft_model(input_ids=x).logits
    assert torch.allclose(ours, ref, atol=1e-6)
    assert (ref - tiny_llama()(x).logits).abs().max() > 1e-3  # the LoRA update is not trivially 0


@pytest.mark.parametrize("mode", ["zero", "fixed"])
def test_g_zero_reproduces_base_model(mode):
    model, adapter = cflora(mode)
    randomise_b(model)
    x = ids()
    with torch.no_grad(), adapter.instance(g=torch.zeros(R, R)):
        assert torch.allclose(model(x).logits, tiny_llama()(x).logits, atol=1e-6)


def by_hand(lay: CFLoraLinear, x: torch.Tensor, delta_fn) -> torch.Tensor:
    """W0 x + b + s·ΔW_u x per row, ΔW_u from ``delta_fn(row)``."""
    w0, b0 = lay.base.weight, lay.base.bias
    out = []
    for u in range(x.shape[0]):
        out.append(x[u] @ w0.T + b0 + lay.scaling * x[u] @ delta_fn(u).T)
    return torch.stack(out)


def test_block_diagonal_g_is_a_mixture_of_lora_experts():
    lay, n_exp = layer(), 4
    k = R // n_exp
    gates = torch.rand(3, n_exp, generator=torch.Generator().manual_seed(0))
    g = torch.stack([torch.block_diag(*[gates[u, e] * torch.eye(k) for e in range(n_exp)]) for u in range(3)])
    x = torch.randn(3, 5, 12)
    a, b = lay.lora_A.weight, lay.lora_B.weight
    experts = [(b[:, e * k:(e + 1) * k], a[e * k:(e + 1) * k]) for e in range(n_exp)]

    def moe(u):
        return sum(gates[u, e] * be @ ae for e, (be, ae) in enumerate(experts))

    with torch.no_grad(), lay.context(g=g):
        assert torch.allclose(lay(x), by_hand(lay, x, moe), atol=1e-5)


def test_rank_one_kronecker_g_is_the_reclora_mixture():
    lay, n_exp = layer(), 2
    k = R // n_exp
    w = torch.softmax(torch.randn(3, n_exp, generator=torch.Generator().manual_seed(1)), dim=-1)
    g = torch.stack([torch.kron(torch.outer(w[u], w[u]), torch.eye(k)) for u in range(3)])
    x = torch.randn(3, 5, 12)
    a, b = lay.lora_A.weight, lay.lora_B.weight

    def reclora(u):
        b_u = sum(w[u, e] * b[:, e * k:(e + 1) * k] for e in range(n_exp))
        a_u = sum(w[u, e] * a[e * k:(e + 1) * k] for e in range(n_exp))
        return b_u @ a_u

    with torch.no_grad(), lay.context(g=g):
        assert torch.allclose(lay(x), by_hand(lay, x, reclora), atol=1e-5)


def test_generated_g_matches_the_authors_formula_and_has_rank_at_most_r():
    lay = layer("generated", d_in=32, d_out=32)
    with torch.no_grad():
        for p in lay.gate.parameters():  # non-trivial LayerNorm and biases too
            p.add_(torch.randn_like(p) * 0.1)
    h = torch.randn(4, D_H)
    x = torch.randn(4, 6, 32)
    gen = lay.gate
    # Independent: y = W0x + s · (bmm(A x, G_code)) Bᵀ, G_code = reshape(W2·GELU(W1·LN(h)+b1)+b2)
    hn = F.layer_norm(h, (D_H,), gen.norm.weight, gen.norm.bias, gen.norm.eps)
    g_code = (F.gelu(hn @ gen.fc1.weight.T + gen.fc1.bias) @ gen.fc2.weight.T + gen.fc2.bias).view(4, R, R)
    expect = x @ lay.base.weight.T + lay.base.bias + lay.scaling * torch.bmm(x @ lay.lora_A.weight.T, g_code) @ lay.lora_B.weight.T
    with torch.no_grad(), lay.context(h):
        got = lay(x)
        delta = lay.delta_weight(4)
    assert torch.allclose(got, expect, atol=1e-5)
    # ΔW_u reproduces the forward, and its rank is at most r although d_in = d_out = 32 > r
    via_delta = x @ lay.base.weight.T + lay.base.bias + torch.einsum("utd,uod->uto", x, delta)
    assert torch.allclose(got, via_delta, atol=1e-5)
    ranks = torch.linalg.matrix_rank(delta)
    assert ranks.max() <= R and ranks.min() > 0
    assert not torch.allclose(delta[0], delta[1])


# --------------------------------------------------------------------- instance dependence


def test_outputs_depend_on_h_u_and_only_on_it():
    model, adapter = cflora("generated")
    randomise_b(model)
    x = ids(batch=1).repeat(3, 1)
    h = torch.randn(3, D_H)
    h[1] = h[0]
    with torch.no_grad(), adapter.instance(h):
        out = model(x).logits
    assert torch.equal(out[0], out[1])
    assert (out[0] - out[2]).abs().max() > 1e-4


def test_generated_layer_without_instance_raises():
    model, adapter = cflora("generated")
    with pytest.raises(ModelError, match="adapter.instance"):
        model(ids())
    with pytest.raises(ModelError, match="rows"), adapter.instance(torch.randn(2, D_H)):
        model(ids(batch=3))
    with pytest.raises(ModelError, match="d_instance"), adapter.instance(torch.randn(3, D_H + 1)):
        pass
    assert find_instance_context(model) is adapter.context
    assert adapter.context.h is None  # cleared on exit


def test_backward_under_gradient_checkpointing_needs_the_context_open():
    model, adapter = cflora("generated")
    randomise_b(model)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    x, h = ids(), torch.randn(3, D_H)
    with adapter.instance(h):
        model(x, labels=x).loss.backward()
    gate_grads = [p.grad for n, p in model.named_parameters() if ".gate." in n]
    assert gate_grads and all(g is not None for g in gate_grads)
    assert all(p.grad is None for n, p in model.named_parameters() if "lora" not in n and ".gate." not in n)
    with adapter.instance(h):
        loss = model(x, labels=x).loss
    with pytest.raises(ModelError, match="backward"):
        loss.backward()  # recomputation after the context closed


def test_bf16_base_runs_with_fp32_adapter():
    model, adapter = cflora("generated")
    model.to(torch.bfloat16)
    lay = next(iter(cflora_layers(model).values()))
    lay_fresh = CFLoraLinear(nn.Linear(8, 8).to(torch.bfloat16), r=4, alpha=8, mode="generated", d_instance=D_H)
    assert lay_fresh.lora_A.weight.dtype == torch.float32 and lay_fresh.base.weight.dtype == torch.bfloat16
    with torch.no_grad(), adapter.instance(torch.randn(3, D_H)):
        out = model(ids()).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert lay.base.weight.dtype == torch.bfloat16


# ------------------------------------------------------------------------- frozen zero B


def test_frozen_zero_b_is_rejected():
    with pytest.raises(ModelError, match="all zeros"):
        cflora("generated", freeze_ab=True)
    lay = CFLoraLinear(nn.Linear(6, 6), r=2, alpha=4, mode="static", freeze_ab=True)
    with pytest.raises(ModelError, match="all zeros"):
        lay(torch.randn(1, 2, 6))
    with torch.no_grad():
        lay.lora_B.weight.fill_(0.1)
    lay(torch.randn(1, 2, 6))  # a trained (non-zero) frozen B is fine


def peft_export(tmp_path, zero_b: bool = False):
    from peft import LoraConfig, get_peft_model

    from distrec.config import AdapterConfig
    from distrec.model.adapters.lora import LoraAdapter

    lora = LoraAdapter(AdapterConfig(kind="lora", r=R, alpha=16))
    peft_model = get_peft_model(tiny_llama(), LoraConfig(r=R, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    if not zero_b:
        randomise_b(peft_model)
    lora.export(peft_model, tmp_path / "lora", no_gather, True)
    return peft_model.eval(), tmp_path / "lora"


def test_two_stage_init_from_peft_lora(tmp_path):
    peft_model, lora_dir = peft_export(tmp_path)
    model, _ = cflora("identity", freeze_ab=True, lora_init_dir=str(lora_dir))
    x = ids()
    with torch.no_grad():
        assert torch.allclose(model(x).logits, peft_model(input_ids=x).logits, atol=1e-6)
    gen, _ = cflora("generated", freeze_ab=True, lora_init_dir=str(lora_dir))
    trainable = {n for n, p in gen.named_parameters() if p.requires_grad}
    assert trainable and all(".gate." in n for n in trainable)
    _, zero_dir = peft_export(tmp_path / "z", zero_b=True)
    with pytest.raises(ModelError, match="all zeros"):
        cflora("generated", freeze_ab=True, lora_init_dir=str(zero_dir))
    wrong_r = cflora_adapter(D_H, r=4, alpha=8, mode="identity", lora_init_dir=str(lora_dir))
    with pytest.raises(ModelError, match="must match"):
        wrong_r.attach(tiny_llama())


# --------------------------------------------------------------------- parameter counts


def test_parameter_counts():
    assert generator_parameter_count(256, 8) == 41_664
    assert sum(p.numel() for p in InteractionGenerator(256, 8).parameters()) == 41_664
    lay = CFLoraLinear(nn.Linear(32, 16), r=8, alpha=16, mode="generated", d_instance=256)
    assert sum(p.numel() for p in lay.gate.parameters()) == generator_parameter_count(256, 8)
    model, _ = cflora("generated")
    ab = 2 * (R * 32 + 32 * R) + 2 * (R * 32 + 16 * R)  # q: 32->32, v: 32->16, two layers
    gen = 4 * generator_parameter_count(D_H, R)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == ab + gen
    static, _ = cflora("static")
    assert sum(p.numel() for p in static.parameters() if p.requires_grad) == ab + 4 * R * R


# -------------------------------------------------------------------- export / load / merge


def test_export_load_round_trip(tmp_path):
    model, adapter = cflora("generated")
    torch.manual_seed(11)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    assert adapter.export(model, tmp_path / "other", no_gather, is_rank0=False) is None
    assert not (tmp_path / "other").exists()
    out = adapter.export(model, tmp_path / "adapter", no_gather, is_rank0=True)
    meta = json.loads((out / "adapter_config.json").read_text())
    assert meta["peft_type"] == "CFLORA" and meta["r"] == R and meta["lora_alpha"] == 16
    assert meta["mode"] == "generated" and meta["d_instance"] == D_H
    assert meta["target_modules"] == ["q_proj", "v_proj"]

    fresh = cflora_adapter(mode="static")  # the folder's own config wins
    loaded = fresh.load(tiny_llama(), out).eval()
    assert not any(p.requires_grad for p in loaded.parameters())
    x, h = ids(), torch.randn(3, D_H)
    with torch.no_grad(), adapter.instance(h), fresh.instance(h):
        assert torch.equal(model(x).logits, loaded(x).logits)


def test_export_refuses_missing_or_empty_tensors(tmp_path):
    with pytest.raises(ModelError, match="no CFLoRA layers"):
        cflora_adapter(D_H).export(tiny_llama(), tmp_path, no_gather, True)
    model, adapter = cflora("generated")
    lay = next(iter(cflora_layers(model).values()))
    lay.lora_A.weight.data = torch.empty(0)  # what an un-gathered ZeRO-3 partition looks like
    with pytest.raises(ModelError, match="empty"):
        adapter.export(model, tmp_path / "a", no_gather, True)
    assert not (tmp_path / "a").exists()


def test_merge_equals_unmerged_for_static_g():
    model, adapter = cflora("static")
    randomise_b(model)
    x = ids()
    with torch.no_grad():
        before = model(x).logits
        merged = adapter.merge(model)
        after = merged(x).logits
    assert not cflora_layers(merged)
    assert type(merged.model.layers[0].self_attn.q_proj) is nn.Linear
    assert torch.allclose(before, after, atol=1e-5)
    assert (after - tiny_llama()(x).logits).abs().max() > 1e-3
    gen, gen_adapter = cflora("generated")
    with pytest.raises(ModelError, match="generated"):
        gen_adapter.merge(gen)


def test_config_and_attach_validation():
    from distrec.config import load_job_config
    from distrec.errors import ConfigError

    with pytest.raises(ConfigError, match="adapter.cflora.mode"):
        load_job_config(None, ["adapter.cflora.mode=dense"])
    with pytest.raises(ConfigError, match="adapter.dropout"):
        load_job_config(None, ["adapter.dropout=1.5"])
    with pytest.raises(ModelError, match="not found"):
        cflora_adapter(target_modules=["nope_proj"]).attach(tiny_llama())
    model, adapter = cflora("identity")
    with pytest.raises(ModelError, match="already"):
        adapter.attach(model)
    assert isinstance(adapter.context, InstanceContext)
