"""EIMF building blocks: IBIM multi-interest backbones, ESIM typical-user labelling, losses,
training and full-catalogue retrieval evaluation (methods.md §2, §4 "EIMF").

No public code of EIMF exists and the paper's body was unreachable, so only the structure is
the paper's; every concrete choice is a switch in :mod:`distrec.interests.config`.
[P] = stated by the paper's abstracts; [C] = ComiRec's public code (the usual IBIM backbone);
[I] = a distrec placeholder (methods.md §2.4), to be replaced once the paper is read.

=========================================  ====  =====================================================
Choice                                     Tag   Where / switch
=========================================  ====  =====================================================
IBIM learns K behavioural interests        [P]   ``backbones`` (``backbone.kind``)
IBIM = ComiRec-SA or ComiRec-DR            [I]   ``backbone.kind`` = ``sa`` | ``dr``
K = 4, d = 64, max_len 20                  [I]   ``backbone.num_interests``, ``dim``, ``max_len``
SA: 4d tanh attention, position emb.       [C]   ``backbone.sa_hidden_mult``, ``sa_add_pos``
DR: 3 iters, squash, shared bilinear map   [C]   ``backbone.dr_iters``, ``dr_bilinear``
DR: routing logits drawn once (buffer)     [I]   ``backbone.dr_init`` = ``fixed_normal`` | ``zeros``
Train on argmax interest vs target         [C]   ``backbones.MultiInterestBackbone.readout``
Sampled softmax, log-uniform, logQ         [C]   ``loss.sampler``, ``num_negatives``, ``logq_correction``
Log-uniform over popularity rank           [I]   ``loss.popularity_rank``
Serving = max over interests, IBIM only    [P]   ``EimfModel.serving_model()``; ``evaluate``
faiss IndexFlatIP, per-interest search     [C]   ``evaluate.merged_topn``
Recall/NDCG/HR @ 20, 50, full catalogue    [I]   ``eval.ks``, ``eval.exclude_history``
Typical samples chosen by clustering       [P]   ``typical_users``
k-means over users, m nearest / centroid   [I]   ``selection.n_clusters``, ``per_cluster``, ``assign``
User vector = mean of interests | items    [I]   ``selection.representation``
LLM prompted for explicit interests        [P]   ``labelling``
Prompt wording, line format, parser        [I]   ``labelling.interest_prompt`` / ``parse_interests``
Greedy + one seeded sampled retry          [I]   ``label.retry``, ``retry_temperature``
Phrases -> frozen text encoder -> vectors  [I]   ``label_typical_users(encoder=...)``
Multi-task: semantic prediction + align    [P]   ``losses.auxiliary_losses``
L_pred: projection, 1-cos | MSE            [I]   ``esim.head``, ``esim.pred_loss``
Matching: Hungarian | greedy on cosine     [I]   ``esim.matching``, ``esim.match_on``
L_align: in-batch InfoNCE, τ = 0.1         [I]   ``esim.tau``, ``esim.align_symmetric``
λ_pred = λ_align = 0.1                     [I]   ``esim.lambda_pred``, ``esim.lambda_align``
Aux losses only on typical users           [I]   ``train.SemanticBank`` (mask)
Optimiser Adam 1e-3, batch 128             [C]   ``train.lr``, ``train.batch_size``
=========================================  ====  =====================================================

Imports are lazy (``from distrec.interests import train_eimf`` works), so Ray workers that only
need :mod:`distrec.interests.labelling` do not import torch models they never use.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EimfConfig": "config",
    "BackboneConfig": "config",
    "RecLossConfig": "config",
    "EsimConfig": "config",
    "SelectionConfig": "config",
    "LabelConfig": "config",
    "EimfTrainConfig": "config",
    "EimfEvalConfig": "config",
    "eimf_config_from_dict": "config",
    "ItemIndex": "backbones",
    "ComiRecSA": "backbones",
    "ComiRecDR": "backbones",
    "build_backbone": "backbones",
    "NegativeSampler": "losses",
    "sampled_softmax_loss": "losses",
    "match_interests": "losses",
    "semantic_prediction_loss": "losses",
    "alignment_loss": "losses",
    "auxiliary_losses": "losses",
    "EimfModel": "train",
    "EsimHeads": "train",
    "SemanticBank": "train",
    "step": "train",
    "train_eimf": "train",
    "evaluate_retrieval": "evaluate",
    "merged_topn": "evaluate",
    "brute_force_topn": "evaluate",
    "retrieval_metrics": "evaluate",
    "TypicalUsers": "typical_users",
    "select_typical_users": "typical_users",
    "select_from_model": "typical_users",
    "user_representations": "typical_users",
    "interest_prompt": "labelling",
    "parse_interests": "labelling",
    "label_typical_users": "labelling",
    "LABELS_SCHEMA": "labelling",
    "LabelStats": "labelling",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"distrec.interests.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'distrec.interests' has no attribute {name!r}")
