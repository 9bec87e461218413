"""CFT (Counterfactual Fine-Tuning): the SFT loss plus a loss on the causal-effect logits.

Spec: ``methods.md`` §1.3 (algorithm), §1.9 (pitfalls), §4 "CFT" (tested properties).

Per example there are two rows with byte-identical response ids (``tokenize_generative``):
the factual prompt ``x_h`` (with history) and the counterfactual prompt ``x_∅`` (history
block deleted). At every response position t, with factual logits ``z_f(t)`` and
counterfactual logits ``z_cf(t)``::

    ℓ_n(t) = CE(z_f(t), y_t)                       ordinary next-token cross-entropy
    ℓ_c(t) = CE(z_f(t) − z_cf(t), y_t)             softmax(z_f − z_cf)_v ∝ p_f(v)/p_cf(v)
    L      = Σ w·ℓ_n / Σ w  +  λ · Σ w·ℓ_c / Σ w    sums over the GLOBAL batch
    L_eval = L_n                                   (no counterfactual term, no CF forward)

with token weights ``w`` decaying along the response (:func:`token_weights`).

Conventions of this package (see ``ctr.py``, ``normalisation.py``):

- Rows are LEFT-padded and end with the response + EOS, so response token k of every row
  sits in the same column counted from the right. One forward with
  ``logits_to_keep = n_keep + 1`` yields exactly the logits that predict the last
  ``n_keep`` tokens (:func:`response_logits`); the full ``[B, T, V]`` logits never exist.
- Both branches run in ONE forward. By default the shared-prefix forward below; where it
  shares nothing (one row, or prompts that differ from their first token), or with
  ``cft.share_cf_prompt: false``, :func:`cft_logits`. Packed (``cft.pack``): each instance's
  factual row and the part of its counterfactual row after the prefix the two share sit side by
  side in one row, with positions and a 4-D attention mask that give every token what it sees in
  its own row (:func:`pack_branches`), so the counterfactual row costs only its tail. Stacked:
  one ``[2B, max(Tf, Tcf)]`` batch (:func:`stack_branches`), the counterfactual rows padded to
  the factual width.
- With ``train.share_prefix``, :func:`shared_cft_logits` runs instead: the common prefix of the
  micro-batch's factual rows and that of its counterfactual rows run once, and every branch pays
  only for what follows them (``objectives.shared_prefix``). Without it, by default
  (``cft.share_cf_prompt``), only the counterfactual rows' common prefix runs once: their prompt
  is the same text for every instance, so the branch costs one prompt per micro-batch plus the
  responses, and the factual rows run as in SFT.
- Losses are returned as SUMS with their normalisers (:func:`cft_loss_sums`); the caller
  sums them over micro-batches and ranks and calls :func:`combine` — so gradient
  accumulation k and k workers equal one k-times larger batch exactly.

Switches, and which follow the authors' code (``itsmeyjt/CFT@5bd1805:train.py``):

- ``weight_both=True`` (authors): the token weights multiply ``L_n`` too, and both terms
  are normalised by ``Σ w``. ``False`` (alternative, closer to the paper's wording): ``L_n``
  is the plain mean token CE (normaliser: token count), only ``L_c`` is weighted.
- ``cf_grad=True`` (authors): the counterfactual branch gets gradient. ``False``
  (alternative): ``z_cf`` is detached (stop-gradient); :func:`cft_logits` with
  ``stacked=False`` then also runs the CF forward under ``no_grad`` to save activations.
- ``rule="linear", beta=0.25`` (authors' current rule, since 3b682a8);
  ``rule="legacy", beta=3.6`` (first commit ae87599); ``rule="uniform"`` (all 1: no weighting).
- ``lam=0.1`` (authors, hard-coded).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from distrec.data.batching import position_ids_for

IGNORE_INDEX = -100
LINEAR_BETA = 0.25
"""β of the authors' current linear rule (``w_n = β``)."""
LEGACY_BETA = 3.6
"""β of the authors' first rule ``w_t = 1 − t/(β·n)``."""
DEFAULT_LAMBDA = 0.1
WEIGHT_RULES = ("linear", "legacy", "uniform")

# ---------------------------------------------------------------------------- weights


def token_weights(
    label_mask: torch.Tensor, beta: float | None = None, rule: str = "linear"
) -> torch.Tensor:
    """Per-token CFT weights, decaying along each row's label tokens. No gradient.

    For a row with n label positions (``label_mask`` True), numbered t = 1..n in column
    order:

    - ``"linear"`` (authors' current rule, default β = 0.25):
      ``w_t = 1 − (t−1)(1−β)/(n−1)``, i.e. 1 → β in equal steps. n = 1 gives ``w_1 = 1``
      (the authors' code divides by zero there).
    - ``"legacy"`` (authors' first rule, default β = 3.6): ``w_t = 1 − t/(β·n)``, about 1 →
      ``1 − 1/β``.
    - ``"uniform"``: every label token weighs 1 (plain SFT weighting).

    Args:
        label_mask: ``[B, T]`` bool (or 0/1), True at label (response + EOS) positions.
        beta: rule parameter; None takes the rule's default.
        rule: one of :data:`WEIGHT_RULES`.

    Returns:
        ``[B, T]`` float32, 0 at non-label positions.
    """
    if rule not in WEIGHT_RULES:
        raise ValueError(f"rule must be one of {WEIGHT_RULES}, got {rule!r}")
    with torch.no_grad():
        mask = label_mask.bool()
        t = mask.long().cumsum(-1).float()  # 1-based index among the row's label positions
        n = mask.sum(-1, keepdim=True).float()
        if rule == "linear":
            b = LINEAR_BETA if beta is None else float(beta)
            w = 1.0 - (t - 1.0) * (1.0 - b) / (n - 1.0).clamp(min=1.0)
        elif rule == "legacy":
            b = LEGACY_BETA if beta is None else float(beta)
            if b == 0:
                raise ValueError("legacy rule needs beta != 0")
            w = 1.0 - t / (b * n.clamp(min=1.0))
        else:
            w = torch.ones_like(t)
        return torch.where(mask, w, torch.zeros_like(w))


def label_normalisers(
    labels: torch.Tensor, beta: float | None = None, rule: str = "linear"
) -> dict[str, torch.Tensor]:
    """``{"weight_sum": Σ w, "tokens": n_label_tokens}`` from labels alone (0-dim float32).

    Weights depend only on where the labels are, so the global normalisers of a step can be
    all-reduced BEFORE any forward; pass them to :func:`combine` as ``normalisers`` to get
    each micro-batch's share of the global loss. ``labels`` may be the full ``[B, T]`` rows or
    the trimmed ``[B, n_keep]`` tail: the weights are the same.
    """
    mask = labels != IGNORE_INDEX
    w = token_weights(mask, beta, rule)
    return {"weight_sum": w.sum(), "tokens": mask.sum().to(torch.float32)}


# ---------------------------------------------------------------------- forward pieces


def keep_length(labels: torch.Tensor) -> int:
    """Smallest ``n_keep`` such that every label of ``labels [B, T]`` lies in the last
    ``n_keep`` columns (left padding: the longest response + EOS). 0 when there are none."""
    valid = (labels != IGNORE_INDEX).any(0)
    if not bool(valid.any()):
        return 0
    first = int(valid.nonzero()[0, 0])
    return labels.shape[1] - first


def response_labels(labels: torch.Tensor, n_keep: int) -> torch.Tensor:
    """``[B, n_keep]``: the last ``n_keep`` columns of ``labels [B, T]``, aligned with
    :func:`response_logits`. Raises if a label would be cut off."""
    if n_keep < keep_length(labels):
        raise ValueError(
            f"n_keep={n_keep} cuts off labels: the responses need the last {keep_length(labels)} columns"
        )
    return labels[:, labels.shape[1] - n_keep:]


def response_logits(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_keep: int
) -> torch.Tensor:
    """Logits that predict the last ``n_keep`` tokens of each left-padded row.

    One forward with explicit ``position_ids`` (each row starts at 0 on its first real
    token) and ``logits_to_keep = n_keep + 1``: the LM head runs on columns
    ``T−n_keep−1 … T−1`` only. Column i predicts token i+1, so dropping the last kept column
    leaves logits for tokens ``T−n_keep … T−1``.

    Args:
        input_ids, attention_mask: ``[B, T]``, left-padded.
        n_keep: number of trailing tokens to score, ``1 ≤ n_keep < T``
            (usually :func:`keep_length` of the labels).

    Returns:
        ``[B, n_keep, V]`` float32 logits; row b, column j predicts ``input_ids[b, T−n_keep+j]``
        and pairs with ``response_labels(labels, n_keep)[b, j]``.
    """
    T = input_ids.shape[1]
    if not 1 <= n_keep < T:
        raise ValueError(f"n_keep must be in [1, {T - 1}] for rows of length {T}, got {n_keep}")
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_for(attention_mask),
        logits_to_keep=n_keep + 1,
        use_cache=False,
    )
    return out.logits[:, :-1, :].float()


def left_pad_to(x: torch.Tensor, length: int, value: int) -> torch.Tensor:
    """``[B, t] → [B, length]`` by prepending columns filled with ``value``."""
    extra = length - x.shape[1]
    if extra < 0:
        raise ValueError(f"cannot left-pad width {x.shape[1]} to {length}")
    if extra == 0:
        return x
    return F.pad(x, (extra, 0), value=value)


def stack_branches(
    f_ids: torch.Tensor,
    f_mask: torch.Tensor,
    cf_ids: torch.Tensor,
    cf_mask: torch.Tensor,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``[2B, T]`` batch: factual rows ``0..B−1``, counterfactual rows ``B..2B−1``.

    Both branches (each already left-padded, widths ``Tf`` and ``Tcf``) are left-padded to
    ``T = max(Tf, Tcf)`` with ``pad_id`` / mask 0, so the shared response tokens stay in the
    same columns counted from the right and one forward serves both branches. Split the
    outputs with :func:`split_branches`.

    Returns:
        ``(input_ids [2B, T], attention_mask [2B, T])``.
    """
    if f_ids.shape[0] != cf_ids.shape[0]:
        raise ValueError(f"branch batch sizes differ: {f_ids.shape[0]} vs {cf_ids.shape[0]}")
    T = max(f_ids.shape[1], cf_ids.shape[1])
    ids = torch.cat([left_pad_to(f_ids, T, pad_id), left_pad_to(cf_ids, T, pad_id)], 0)
    mask = torch.cat([left_pad_to(f_mask, T, 0), left_pad_to(cf_mask, T, 0)], 0)
    return ids, mask


def shared_prefix_lengths(
    f_ids: torch.Tensor,
    f_mask: torch.Tensor,
    cf_ids: torch.Tensor,
    cf_mask: torch.Tensor,
    n_scored: torch.Tensor | int,
) -> torch.Tensor:
    """Per instance, how many leading real tokens the counterfactual prompt shares with the factual one.

    The longest common prefix of the two rows' real tokens (both left-padded), capped so that
    ``n_scored + 1`` counterfactual tokens stay after it (the labelled tokens and the one whose
    logits predict the first of them), and at 0 from below. Under causal attention those prefix
    tokens have identical hidden states in both branches, which is what lets
    :func:`pack_branches` compute them once.

    Args:
        n_scored: ``[B]`` (or one int for all rows): trailing tokens per row whose logits are scored.

    Returns:
        ``[B]`` int64 lengths ``P`` with ``0 ≤ P ≤ max(0, len_cf − n_scored − 1)``.
    """
    len_f, len_cf = f_mask.sum(1), cf_mask.sum(1)
    width = min(f_ids.shape[1], cf_ids.shape[1])
    cols = torch.arange(width, device=f_ids.device)
    f_at = (f_ids.shape[1] - len_f)[:, None] + cols  # column of each row's j-th real token
    cf_at = (cf_ids.shape[1] - len_cf)[:, None] + cols
    valid = cols[None, :] < torch.minimum(len_f, len_cf)[:, None]
    same = valid & (f_ids.gather(1, f_at.clamp(max=f_ids.shape[1] - 1))
                    == cf_ids.gather(1, cf_at.clamp(max=cf_ids.shape[1] - 1)))
    common = same.long().cumprod(1).sum(1)
    return torch.minimum(common, (len_cf - n_scored - 1).clamp(min=0))


def scored_counts(labels: torch.Tensor) -> torch.Tensor:
    """``[B]``: the labelled (scored) tokens of each row of ``labels [B, T]``."""
    return (labels != IGNORE_INDEX).sum(1)


def packed_forward_tokens(f_ids: torch.Tensor, f_mask: torch.Tensor, cf_ids: torch.Tensor, cf_mask: torch.Tensor,
                          f_labels: torch.Tensor) -> torch.Tensor:
    """Real tokens of the packed forward (:func:`pack_branches` as :func:`cft_logits` calls it): the
    factual rows plus the counterfactual tails."""
    shared = shared_prefix_lengths(f_ids, f_mask, cf_ids, cf_mask, scored_counts(f_labels))
    return f_mask.sum() + cf_mask.sum() - shared.sum()


def pack_branches(
    f_ids: torch.Tensor,
    f_mask: torch.Tensor,
    cf_ids: torch.Tensor,
    cf_mask: torch.Tensor,
    n_keep: int,
    n_scored: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One row per instance: ``[factual, left-padded to Tf | counterfactual tail, left-padded]``.

    The counterfactual prompt's first ``P`` tokens are the factual prompt's first ``P``
    (:func:`shared_prefix_lengths`: with one preamble for both branches, everything before the
    history block), so only its tail, the tokens after them, gets columns of its own. The
    attention mask lets each factual token see the factual tokens up to itself, and each tail
    token the factual row's first ``P`` tokens plus the tail up to itself; tail positions continue
    at ``P``. Every real token thus sees exactly the tokens, at the positions, it sees in its own
    left-padded row, so the logits of the scored tokens (``n_scored`` per row, the labelled
    ones; default ``n_keep``) and the losses and gradients equal those of two separate forwards
    (the shared prefix receives the sum of both branches' gradients, as it does there), while the
    counterfactual branch costs only its tail. Padding columns see only themselves.

    Returns:
        ``input_ids [B, T]``, ``position_ids [B, T]``, ``attention_mask [B, 1, T, T]`` (bool,
        True = attend; a custom 4-D mask Hugging Face models take as it is) with
        ``T = Tf + max tail``, and ``logits_to_keep``: the ``2·n_keep`` column indices whose
        logits predict the last ``n_keep`` tokens of the factual segment, then of the tail.

    Raises:
        ValueError: a segment is not longer than ``n_keep`` or the batch sizes differ.
    """
    if f_ids.shape[0] != cf_ids.shape[0]:
        raise ValueError(f"branch batch sizes differ: {f_ids.shape[0]} vs {cf_ids.shape[0]}")
    t_cf, t_f = cf_ids.shape[1], f_ids.shape[1]
    if not n_keep < min(t_cf, t_f):
        raise ValueError(f"n_keep must be below both segment widths ({t_cf}, {t_f}), got {n_keep}")
    device = f_ids.device
    prefix = shared_prefix_lengths(f_ids, f_mask, cf_ids, cf_mask, n_keep if n_scored is None else n_scored)
    len_tail = cf_mask.sum(1) - prefix
    t_tail = max(int(len_tail.max()), n_keep + 1)
    ids = torch.cat([f_ids, cf_ids[:, t_cf - t_tail:]], 1)
    tail_cols = torch.arange(t_tail, device=device)
    tail_real = tail_cols[None, :] >= (t_tail - len_tail)[:, None]
    tail_pos = (prefix[:, None] + tail_cols[None, :] - (t_tail - len_tail)[:, None]) * tail_real
    positions = torch.cat([position_ids_for(f_mask), tail_pos], 1)

    width = t_f + t_tail
    q = torch.arange(width, device=device)[:, None]
    k = torch.arange(width, device=device)[None, :]
    real = torch.cat([f_mask.bool(), tail_real], 1)  # [B, T]
    causal_real = (k <= q)[None] & real[:, None, :]
    in_f_q, in_f_k = (q < t_f)[None], (k < t_f)[None]
    f_start = (t_f - f_mask.sum(1))[:, None, None]
    sees_prefix = in_f_k & (k[None] >= f_start) & (k[None] < f_start + prefix[:, None, None])
    mask = torch.where(in_f_q, causal_real & in_f_k, (causal_real & ~in_f_k) | sees_prefix)
    mask = mask | torch.eye(width, dtype=torch.bool, device=device)[None]
    ends = torch.tensor([t_f, width], device=device)
    keep = (ends[:, None] - n_keep - 1 + torch.arange(n_keep, device=device)[None, :]).reshape(-1)
    return ids, positions, mask[:, None], keep


def split_branches(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`stack_branches` along dim 0: ``(factual, counterfactual)``."""
    if x.shape[0] % 2:
        raise ValueError(f"stacked batch must have an even size, got {x.shape[0]}")
    half = x.shape[0] // 2
    return x[:half], x[half:]


def cft_logits(
    model,
    f_ids: torch.Tensor,
    f_mask: torch.Tensor,
    f_labels: torch.Tensor,
    cf_ids: torch.Tensor | None = None,
    cf_mask: torch.Tensor | None = None,
    pad_id: int = 0,
    cf_labels: torch.Tensor | None = None,
    stacked: bool = True,
    cf_grad: bool = True,
    pack: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Forward(s) for one micro-batch: ``(z_f, z_cf, y)`` ready for :func:`cft_loss_sums`.

    Args:
        f_ids, f_mask, f_labels: factual rows ``[B, Tf]`` (left-padded; labels −100 off the
            response).
        cf_ids, cf_mask: counterfactual rows ``[B, Tcf]``; None = factual only (evaluation,
            or λ = 0), ``z_cf`` is then None.
        cf_labels: optional ``[B, Tcf]``; when given, checked to hold the same response ids
            in the same right-aligned columns as ``f_labels``.
        stacked: one forward for both branches (default) or two forwards.
        pack: with ``stacked``, the branches side by side in ``[B, Tcf + Tf]`` rows
            (:func:`pack_branches`) instead of on top of each other in ``[2B, T]`` rows; the
            logits are the same up to float rounding, and so are the losses and gradients.
        cf_grad: False with ``stacked=False`` runs the CF forward under ``no_grad``; with
            ``stacked=True`` the stop-gradient is applied later by ``cft_loss_sums``.

    Returns:
        ``z_f [B, n, V]``, ``z_cf [B, n, V]`` or None, ``y [B, n]`` with
        ``n = keep_length(f_labels)``.
    """
    n_keep = keep_length(f_labels)
    if n_keep == 0:
        raise ValueError("no label tokens in this micro-batch")
    y = response_labels(f_labels, n_keep)
    if cf_labels is not None:
        y_cf = response_labels(cf_labels, n_keep)
        if not torch.equal(y_cf, y):
            raise ValueError(
                "factual and counterfactual labels differ in their last "
                f"{n_keep} columns: the responses must be identical ids, right-aligned"
            )
    if cf_ids is None:
        return response_logits(model, f_ids, f_mask, n_keep), None, y
    if cf_mask is None:
        raise ValueError("cf_mask is required with cf_ids")
    if stacked and pack:
        ids, positions, mask, keep = pack_branches(f_ids, f_mask, cf_ids, cf_mask, n_keep, scored_counts(f_labels))
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep,
                    use_cache=False).logits.float()
        return out[:, :n_keep], out[:, n_keep:], y
    if stacked:
        ids, mask = stack_branches(f_ids, f_mask, cf_ids, cf_mask, pad_id)
        z_f, z_cf = split_branches(response_logits(model, ids, mask, n_keep))
        return z_f, z_cf, y
    z_f = response_logits(model, f_ids, f_mask, n_keep)
    with torch.set_grad_enabled(cf_grad and torch.is_grad_enabled()):
        z_cf = response_logits(model, cf_ids, cf_mask, n_keep)
    return z_f, z_cf, y


def shared_cft_logits(model, f_ids: torch.Tensor, f_mask: torch.Tensor, f_labels: torch.Tensor,
                      cf_ids: torch.Tensor | None = None, cf_mask: torch.Tensor | None = None,
                      share_factual: bool = True,
                      ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, int] | None:
    """:func:`cft_logits` with the micro-batch's common prefixes computed once
    (``objectives.shared_prefix``): the factual rows' common prefix and, with ``cf_ids``, the
    counterfactual rows' (CFT's counterfactual prompts differ only in their responses, so nearly
    all of each is shared), in one trunk; each instance's factual and counterfactual tails side by
    side in one row. Same logits as :func:`cft_logits` up to float rounding.

    ``share_factual=False`` (``cft.share_cf_prompt`` without ``train.share_prefix``): only the
    counterfactual prompt goes into the trunk; every factual row runs whole, as in SFT, so the
    counterfactual branch adds one prompt per micro-batch and the responses.

    Returns:
        ``(z_f, z_cf or None, y, forward tokens)`` as :func:`cft_logits`, plus the real tokens the
        forward ran; None when nothing is shared (the caller runs :func:`cft_logits`).
    """
    from distrec.objectives.shared_prefix import Group, trunk_forward

    n_keep = keep_length(f_labels)
    if n_keep == 0:
        raise ValueError("no label tokens in this micro-batch")
    need = scored_counts(f_labels) + 1
    groups = [Group(f_ids, f_mask, need if share_factual else f_mask.sum(1), n_keep + 1)]
    if cf_ids is not None:
        groups.append(Group(cf_ids, cf_mask, need, n_keep + 1))
    got = trunk_forward(model, groups)
    if got is None:
        return None
    logits, n_tokens = got
    z_cf = logits[1][:, :-1] if cf_ids is not None else None
    return logits[0][:, :-1], z_cf, response_labels(f_labels, n_keep), n_tokens


# ------------------------------------------------------------------------------ losses


def cft_loss_sums(
    z_f: torch.Tensor,
    z_cf: torch.Tensor | None,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    cf_grad: bool = True,
) -> dict[str, torch.Tensor]:
    """Summed CFT loss terms of one micro-batch, to be summed over micro-batches and ranks.

    Only label positions are scored (logits at prompt/pad positions are never touched, so
    garbage there cannot leak NaN into the loss or its gradient). CE is computed in float32.

    Args:
        z_f: ``[B, n, V]`` factual logits aligned with ``labels``.
        z_cf: ``[B, n, V]`` counterfactual logits, or None (no ``L_c``: evaluation, λ = 0).
        labels: ``[B, n]`` target ids, −100 off the response.
        weights: ``[B, n]`` token weights; None = ``token_weights(labels != −100)`` (linear,
            β = 0.25).
        cf_grad: False detaches ``z_cf`` (stop-gradient on the counterfactual branch).

    Returns:
        0-dim float32 tensors: ``ln_sum`` = Σ w·ℓ_n, ``ln_plain_sum`` = Σ ℓ_n,
        ``lc_sum`` = Σ w·ℓ_c (0 when ``z_cf`` is None), ``weight_sum`` = Σ w,
        ``tokens`` = number of label tokens. Each is additive over micro-batches and ranks.
    """
    valid = labels != IGNORE_INDEX
    if weights is None:
        weights = token_weights(valid)
    y = labels[valid]
    w = weights[valid].detach().to(torch.float32)
    zf = z_f[valid].float()  # [N, V]
    ln = F.cross_entropy(zf, y, reduction="none")
    out = {
        "ln_sum": (w * ln).sum(),
        "ln_plain_sum": ln.sum(),
        "weight_sum": w.sum(),
        "tokens": valid.sum().to(torch.float32),
    }
    if z_cf is None:
        out["lc_sum"] = zf.new_zeros(())
    else:
        zc = z_cf[valid].float()
        if not cf_grad:
            zc = zc.detach()
        lc = F.cross_entropy(zf - zc, y, reduction="none")
        out["lc_sum"] = (w * lc).sum()
    return out


def combine(
    sums: Mapping[str, torch.Tensor],
    lam: float = DEFAULT_LAMBDA,
    weight_both: bool = True,
    normalisers: Mapping[str, torch.Tensor | float] | None = None,
) -> torch.Tensor:
    """The CFT loss from summed terms.

    ``weight_both=True`` (authors)::

        L = Σ w·ℓ_n / Σ w  +  λ · Σ w·ℓ_c / Σ w

    ``weight_both=False``::

        L = Σ ℓ_n / N_tokens  +  λ · Σ w·ℓ_c / Σ w

    The sums and normalisers run over the whole global batch (every micro-batch of every
    rank in the optimiser step), so a sequence counts by its tokens (weights), not as one
    unit: longer responses weigh more.

    Two ways to use it:

    - ``sums`` already global (micro-batch sums added up / all-reduced): ``normalisers``
      None takes ``weight_sum`` / ``tokens`` from ``sums``.
    - ``sums`` of ONE micro-batch with the step's global ``normalisers``
      (:func:`label_normalisers`, all-reduced): returns that micro-batch's share; the shares
      add up to the global loss, and so do their gradients. For DeepSpeed multiply by
      ``grad_accum · world`` as in :mod:`distrec.objectives.normalisation`.
    """
    norm = sums if normalisers is None else normalisers
    w_total = torch.as_tensor(norm["weight_sum"], dtype=torch.float32).clamp(min=1e-12)
    if weight_both:
        ln = sums["ln_sum"] / w_total
    else:
        n_total = torch.as_tensor(norm["tokens"], dtype=torch.float32).clamp(min=1.0)
        ln = sums["ln_plain_sum"] / n_total
    if lam == 0:
        return ln
    return ln + lam * sums["lc_sum"] / w_total
