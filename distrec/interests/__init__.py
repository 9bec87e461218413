"""EIMF's experiment: typical users, their LLM labelling, full-catalogue retrieval evaluation
and the stages of ``distrec eimf`` (methods.md §2, §4 "EIMF"). The model and its losses are in
:mod:`distrec.model.interests`; it trains in the one training loop (``model.kind: eimf``).

No public code of EIMF exists and the paper's body was unreachable, so only the structure is
the paper's; every concrete choice is a switch in :mod:`distrec.config.eimf`.
[P] = stated by the paper's abstracts; [C] = ComiRec's public code (the usual IBIM backbone);
[I] = a distrec placeholder (methods.md §2.4), to be replaced once the paper is read.

=========================================  ====  =====================================================
Choice                                     Tag   Where / switch
=========================================  ====  =====================================================
IBIM learns K behavioural interests        [P]   ``model.interests.backbones`` (``backbone.kind``)
IBIM = ComiRec-SA or ComiRec-DR            [I]   ``backbone.kind`` = ``sa`` | ``dr``
K = 4, d = 64, max_len 20                  [I]   ``backbone.num_interests``, ``dim``, ``max_len``
SA: 4d tanh attention, position emb.       [C]   ``backbone.sa_hidden_mult``, ``sa_add_pos``
DR: 3 iters, squash, shared bilinear map   [C]   ``backbone.dr_iters``, ``dr_bilinear``
DR: routing logits drawn once (buffer)     [I]   ``backbone.dr_init`` = ``fixed_normal`` | ``zeros``
Train on argmax interest vs target         [C]   ``MultiInterestBackbone.readout``
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
Multi-task: semantic prediction + align    [P]   ``model.interests.losses.auxiliary_losses``
L_pred: projection, 1-cos | MSE            [I]   ``esim.head``, ``esim.pred_loss``
Matching: Hungarian | greedy on cosine     [I]   ``esim.matching``, ``esim.match_on``
L_align: in-batch InfoNCE, τ = 0.1         [I]   ``esim.tau``, ``esim.align_symmetric``
λ_pred = λ_align = 0.1                     [I]   ``esim.lambda_pred``, ``esim.lambda_align``
Aux losses only on typical users           [I]   ``model.interests.eimf.SemanticBank`` (mask)
Optimiser Adam(W) 1e-3, global batch 128   [C]   ``eimf.train.lr``, ``eimf.train.batch_size``
=========================================  ====  =====================================================

Import the modules themselves (``distrec.interests.labelling``, ...): Ray workers that only
label do not import the torch models.
"""
