"""FLOP accounting of one training step of a Llama-style decoder, and model FLOPs utilisation.

Notation (read from a ``transformers`` config): ``h`` hidden_size, ``L`` num_hidden_layers,
``n_q`` num_attention_heads, ``n_kv`` num_key_value_heads (GQA; = ``n_q`` when absent),
``d`` head_dim (``h / n_q`` when absent), ``I`` intermediate_size, ``V`` vocab_size. A
matmul of a ``[m, k]`` by a ``[k, n]`` matrix costs ``2·m·k·n`` FLOPs (one multiply, one add);
element-wise work (norms, activations, softmax, residual adds, LoRA scaling) is not counted.

Counts, per token unless said otherwise:

- dense (weight) matmuls: ``N = N_body + N_head`` weight elements (:func:`dense_params`),
  forward ``2·N``. The LM head (``N_head = h·V``) runs only at the positions whose logits are
  computed (``logit_positions``: distrec asks for logits only where the loss needs them).
  The embedding lookup is a gather, not a matmul.
- attention scores and mixing (no weights): ``QKᵀ`` and ``softmax·V`` each cost
  ``2·(n_q·d)·c`` per token and layer, ``c`` the number of keys a query sees. Causal
  masking: ``c = seq/2`` on average (``causal_half=True``, the usual convention; exact is
  ``(seq+1)/2``); ``causal_half=False`` counts the full ``c = seq`` that a kernel without
  causal block skipping computes.
- backward of a matmul ``Y = X·W``: ``dX`` and ``dW`` each cost as much as the forward.
  Frozen weights need only ``dX`` (``2·N``), trained weights both (``4·N``): full
  fine-tuning is ``6·N`` per token, LoRA on a frozen base ``4·N`` plus the adapter. Both
  operands of the attention matmuls are activations, so attention backward is always
  twice its forward. (With frozen embeddings autograd may skip ``dX`` of the first layer's
  input projections; that is ignored, an over-count of at most ``(q+k+v of one layer)/N``.)
- LoRA on a linear ``d_in → d_out`` at rank r: forward ``2·r·(d_in + d_out)``, backward
  ``4·r·(d_in + d_out)`` (dA, dB and the two input gradients).
- CFLoRA adds the ``r×r`` interaction per token and adapted linear: forward ``2·r²``,
  backward ``4·r²``; in mode "generated" also the G-generator once per sequence and adapted
  linear (``cflora_d_instance`` given): forward ``2·(d_h·2r² + 2r²·r²)``, backward twice that.

``model_flops`` is the useful work of a step (what MFU divides); ``hardware_flops`` adds the
forward that activation checkpointing recomputes during backward. Hugging Face's gradient
checkpointing re-runs every decoder layer (adapters included) but not the final norm and the
LM head, so the recomputed forward is the forward *minus the LM head*.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

DENSE_BF16_PEAK: dict[str, float] = {
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H200": 989e12,
    "A100": 312e12,
}
"""Vendor dense (no sparsity) bf16 tensor-core peaks, FLOP/s per GPU."""


# ------------------------------------------------------------------------------ shapes


@dataclass(frozen=True)
class DecoderShape:
    """The sizes the FLOP counts need, read from a ``transformers`` config."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def of(cls, config) -> DecoderShape:
        heads = int(config.num_attention_heads)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            hidden=int(config.hidden_size),
            layers=int(config.num_hidden_layers),
            heads=heads,
            kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=int(head_dim),
            intermediate=int(config.intermediate_size),
            vocab=int(config.vocab_size),
        )

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """``{module name: (d_in, d_out)}`` of the linears inside one decoder layer."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {
            "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }


def layer_params(config) -> int:
    """Weight elements of the matmuls of one decoder layer.

    ``h·n_q·d`` (q) + ``2·h·n_kv·d`` (k, v) + ``n_q·d·h`` (o) + ``3·h·I`` (gate, up, down).
    """
    return sum(a * b for a, b in DecoderShape.of(config).linear_shapes().values())


def head_params(config) -> int:
    """Weight elements of the LM head: ``h·V``."""
    s = DecoderShape.of(config)
    return s.hidden * s.vocab


def dense_params(config) -> int:
    """Parameters that take part in a matmul for every token: ``L·layer_params + h·V``.

    Equals the summed ``numel`` of every ``nn.Linear`` weight of a ``LlamaForCausalLM``
    (the LM head counts even when tied to the embedding, which is not a matmul).
    """
    return DecoderShape.of(config).layers * layer_params(config) + head_params(config)


def attention_flops_per_token(config, seq_len: int, causal_half: bool = True) -> float:
    """Forward FLOPs of ``QKᵀ`` and ``softmax·V`` per token: ``L · 2 · 2 · (n_q·d) · c``,
    ``c = seq_len/2`` when ``causal_half`` else ``seq_len``."""
    s = DecoderShape.of(config)
    context = seq_len / 2 if causal_half else seq_len
    return s.layers * 2 * 2 * s.heads * s.head_dim * context


def adapter_width(config, adapted_modules) -> int:
    """``Σ (d_in + d_out)`` over the adapted linears of all layers (LoRA cost is ``r`` times this)."""
    shapes = DecoderShape.of(config).linear_shapes()
    unknown = [m for m in adapted_modules if m not in shapes]
    if unknown:
        raise ValueError(f"unknown adapted modules {unknown}; known: {sorted(shapes)}")
    return DecoderShape.of(config).layers * sum(sum(shapes[m]) for m in adapted_modules)


# --------------------------------------------------------------------------- the step


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one training step. ``adapter_flops`` (forward and backward of the adapter
    alone) is already inside forward/backward."""

    forward_flops: float
    backward_flops: float
    adapter_flops: float
    recompute_flops: float

    @property
    def model_flops(self) -> float:
        """The useful work: forward + backward (what MFU divides)."""
        return self.forward_flops + self.backward_flops

    @property
    def hardware_flops(self) -> float:
        """What the device runs: model FLOPs + the activation-checkpointing recompute."""
        return self.model_flops + self.recompute_flops

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "model_flops": self.model_flops, "hardware_flops": self.hardware_flops}


def _branch(
    config, tokens: int, seq_len: int, logit_positions: int | None, adapter_rank: int, adapted_modules,
    full_finetune: bool, causal_half: bool, cflora: bool, cflora_d_instance: int | None,
) -> tuple[float, float, float, float]:
    """``(forward, backward, adapter fwd+bwd, forward of the decoder layers)`` of one branch."""
    s = DecoderShape.of(config)
    positions = tokens if logit_positions is None else logit_positions
    body = 2.0 * s.layers * layer_params(config) * tokens
    head = 2.0 * head_params(config) * positions
    attn = attention_flops_per_token(config, seq_len, causal_half) * tokens
    r = adapter_rank if adapted_modules else 0
    n_adapted = s.layers * len(adapted_modules or ())
    ad_fwd = 2.0 * r * adapter_width(config, adapted_modules or ()) * tokens
    if cflora and r:
        ad_fwd += 2.0 * r * r * n_adapted * tokens
        if cflora_d_instance:
            sequences = tokens // seq_len
            ad_fwd += 2.0 * (cflora_d_instance * 2 * r * r + 2 * r * r * r * r) * n_adapted * sequences
    dense_bwd = 2.0 if full_finetune else 1.0  # dX (+ dW when the weights train)
    forward = body + head + attn + ad_fwd
    backward = dense_bwd * (body + head) + 2.0 * attn + 2.0 * ad_fwd
    return forward, backward, 3.0 * ad_fwd, body + attn + ad_fwd


def train_step_flops(
    config,
    tokens: int,
    seq_len: int,
    adapter_rank: int = 0,
    adapted_modules=(),
    full_finetune: bool = False,
    logit_positions: int | None = None,
    cft: bool = False,
    activation_checkpointing: bool = False,
    *,
    cft_tokens: int | None = None,
    cft_seq_len: int | None = None,
    cft_logit_positions: int | None = None,
    cflora: bool = False,
    cflora_d_instance: int | None = None,
    causal_half: bool = True,
) -> StepFlops:
    """FLOPs of one optimiser step over ``tokens`` tokens in rows of ``seq_len`` (no padding).

    Per token (see the module docstring), ``N_b = L·layer_params``, ``N_h = h·V``,
    ``A`` = attention forward, ``W = Σ(d_in+d_out)`` of the adapted linears::

        forward  = 2·N_b + 2·N_h·(P/T) + A + 2·r·W [+ 2·r²·L·m for CFLoRA]
        backward = k·(2·N_b + 2·N_h·(P/T)) + 2·A + 2·(adapter forward)

    with ``k = 1`` for a frozen base (activation gradients only) and ``k = 2`` for full
    fine-tuning (6·N in total), ``P`` the logit positions (default: every token), ``m`` the
    number of adapted module names.

    Args:
        config: a ``transformers`` Llama-style config.
        tokens: tokens in the step (rows × seq_len), factual branch only for CFT.
        seq_len: row length (sets the attention context).
        adapter_rank, adapted_modules: LoRA/CFLoRA rank and module names (e.g. q_proj, v_proj).
        full_finetune: every base weight trains (dW counted).
        logit_positions: positions whose logits are computed (LM head); None = all tokens.
        cft: add the counterfactual branch, a second forward+backward over ``cft_tokens``
            (default ``tokens``) in rows of ``cft_seq_len`` (default ``seq_len``), scoring
            ``cft_logit_positions`` (default: ``logit_positions``, else every CF token).
        activation_checkpointing: the hardware also re-runs the decoder layers' forward.
        cflora: add CFLoRA's r×r interaction; ``cflora_d_instance`` (mode "generated") also
            the per-sequence G-generator.
        causal_half: count causal attention at half the context (see module docstring).
    """
    common = {"adapter_rank": adapter_rank, "adapted_modules": tuple(adapted_modules or ()),
              "full_finetune": full_finetune, "causal_half": causal_half, "cflora": cflora,
              "cflora_d_instance": cflora_d_instance}
    if cft_tokens is not None and not cft:
        raise ValueError("cft_tokens given but cft=False")
    parts = [_branch(config, tokens, seq_len, logit_positions, **common)]
    if cft:
        cf_tokens = tokens if cft_tokens is None else cft_tokens
        cf_positions = cft_logit_positions if cft_logit_positions is not None else logit_positions
        if cf_positions is None:
            cf_positions = cf_tokens
        parts.append(_branch(config, cf_tokens, cft_seq_len or seq_len, cf_positions, **common))
    forward, backward, adapter, layers_fwd = (sum(p[i] for p in parts) for i in range(4))
    return StepFlops(forward, backward, adapter, layers_fwd if activation_checkpointing else 0.0)


# ------------------------------------------------------------------------- utilisation


def mfu(model_flops: float, seconds: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: ``model_flops / seconds / peak_flops``."""
    return model_flops / seconds / peak_flops


def device_peak(name: str | None) -> float | None:
    """Dense bf16 peak of a GPU named like ``torch.cuda.get_device_name()``; None if unknown.

    "H100 … PCIe" is the PCIe card, any other H100 the SXM one; NVL variants (other clocks
    and power limits) are not in the table.
    """
    if not name:
        return None
    n = name.lower()
    if "nvl" in n:
        return None
    if "h100" in n:
        return DENSE_BF16_PEAK["H100 PCIe" if "pcie" in n else "H100 SXM"]
    for key in ("H200", "A100"):
        if key.lower() in n:
            return DENSE_BF16_PEAK[key]
    return None


def measure_matmul_peak(device="cpu", dtype=None, n: int = 4096, repeats: int = 10, warmup: int = 2) -> float:
    """Achieved FLOP/s of an ``n×n @ n×n`` matmul on ``device``: ``2·n³·repeats / seconds``.

    Warm-up runs are not timed; on CUDA the clock is read after ``torch.cuda.synchronize``.
    Use a small ``n`` on CPU (e.g. 128 in tests).
    """
    import torch

    device = torch.device(device)
    dtype = dtype or torch.float32
    cuda = device.type == "cuda"
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(max(warmup, 1)):
        torch.matmul(a, b, out=out)
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b, out=out)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = max(time.perf_counter() - start, 1e-9)
    return 2.0 * n ** 3 * repeats / seconds


# ------------------------------------------------------------------------- in the loop


class StepFlopCounter:
    """Model FLOPs of the training loop's micro-batches (:func:`train_step_flops` over each
    micro-batch's real, unpadded tokens), for the ``throughput/model_tflops_per_s`` and
    ``throughput/mfu`` scalars. ``config``: the backbone's ``transformers`` config; ``job``:
    the :class:`~distrec.config.JobConfig` (task, adapter, CFT switch). Raises ValueError (or
    AttributeError) for a backbone or adapter these counts do not describe."""

    def __init__(self, config, job) -> None:
        a = job.adapter
        self.config, self.task = config, job.data.task
        self.cft = job.data.task == "generative" and job.cft.lam > 0
        self.common = {"adapter_rank": a.r, "adapted_modules": tuple(a.target_modules),
                       "cflora": a.kind == "cflora",
                       "cflora_d_instance": job.crm.hidden_size if job.cflora_generated else None}
        adapter_width(config, self.common["adapted_modules"])  # a Llama-style decoder and known module names

    def micro_batch(self, mb: dict) -> float:
        lengths = [len(s) for s in mb["input_ids"]]
        if self.task == "ctr":  # the answer token is the label, not an input; one logit position per row
            tokens = sum(lengths) - len(lengths)
            flops = train_step_flops(self.config, tokens, max(lengths) - 1, logit_positions=len(lengths),
                                     **self.common)
            return flops.model_flops
        labelled = int(sum(int((s != -100).sum()) for s in mb["labels"]))
        extra = {}
        if self.cft:
            cf_lengths = [len(s) for s in mb["cf_input_ids"]]
            extra = {"cft": True, "cft_tokens": sum(cf_lengths), "cft_seq_len": max(cf_lengths),
                     "cft_logit_positions": labelled}
        flops = train_step_flops(self.config, sum(lengths), max(lengths), logit_positions=labelled,
                                 **extra, **self.common)
        return flops.model_flops


def peak_flops(device) -> float | None:
    """FLOP/s per rank MFU divides by: the GPU's dense bf16 peak (:data:`DENSE_BF16_PEAK`), or on
    CPU a measured fp32 matmul rate (n=1024; seconds, RNG state left alone); None for an unknown GPU."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return device_peak(torch.cuda.get_device_name(device))
    with torch.random.fork_rng(devices=[]):
        return measure_matmul_peak("cpu", n=1024, repeats=5, warmup=1)
