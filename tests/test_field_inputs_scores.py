"""Field inputs (issue 14), metric paths: a non-finite score must stop evaluation with an error
naming the split, the step and the first sample id, on the CTR path and the ranking path."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from field_inputs_tools import OneProcess, byte_tokenizer, generative_rows, items_table, tiny_llama_for

from distrec.config import JobConfig
from distrec.data.prompts import Catalog
from distrec.errors import ModelError
from distrec.metrics.ctr_metrics import ctr_metrics
from distrec.eval.generation import grounded_metrics
from distrec.objectives.tasks import Batchify, CtrTask, GenerativeTask, pack_rows

# (sample id, user id, label, P(yes)) as the workers gather them; sample 2's score is NaN
ISSUE_ROWS = [(0, 1, 1, 0.8), (1, 1, 0, 0.3), (2, 2, 1, math.nan), (3, 2, 0, 0.4)]


class _ReplayCtr(CtrTask):
    """CtrTask whose forward is replaced by the rows of the report (metrics stay the real ones)."""

    def __init__(self, rows):
        super().__init__(0, 1, Batchify(0, torch.device("cpu")))
        self.by_id = {r[0]: r for r in rows}

    def eval_rows(self, engine, batch, n_real):
        return [self.by_id[int(s)] for s in batch["sample_id"][:n_real]]


class _Engine:
    def eval(self):
        pass

    def train(self):
        pass


class _Monitor:
    def __init__(self):
        self.logged = {}

    def scalars(self, step, values):
        self.logged.update(values)


def _evaluate(task, split: str, step):
    from distrec.train.loop import _Context, _evaluate

    job = JobConfig()
    job.eval.batch_size = 2
    ctx = _Context(job, OneProcess(), _Engine(), task, _Monitor(), Path("/nonexistent"))
    rows = {"sample_id": np.array(sorted(task.by_id), dtype=np.int64)}
    return _evaluate(ctx, rows, split, write=False, step=step)


def test_nan_prediction_in_validation_names_split_step_and_sample():
    with pytest.raises(ModelError) as err:
        _evaluate(_ReplayCtr(ISSUE_ROWS), "valid", step=7)
    msg = str(err.value)
    assert "split 'valid'" in msg and "step 7" in msg and "sample id 2" in msg
    assert "1 of 4" in msg


def test_finite_rows_still_give_the_sklearn_metrics():
    rows = [r if r[0] != 2 else (2, 2, 1, 0.9) for r in ISSUE_ROWS]
    got = _evaluate(_ReplayCtr(rows), "valid", step=7)
    from sklearn.metrics import roc_auc_score

    assert got["auc"] == pytest.approx(roc_auc_score([1, 0, 1, 0], [0.8, 0.3, 0.9, 0.4]))


def test_variant_infinite_and_nan_scores_on_the_final_test_and_the_din_path():
    rows = [(10, 1, 1, 0.8), (11, 1, 0, math.inf), (12, 2, 1, math.nan), (13, 2, 0, 0.4)]
    with pytest.raises(ModelError) as err:
        _evaluate(_ReplayCtr(rows), "test", step=None)
    msg = str(err.value)
    assert "split 'test'" in msg and "sample id 11" in msg and "2 of 4" in msg and "final" in msg
    # the DIN evaluation calls ctr_metrics without sample ids: the row is named instead
    with pytest.raises(ModelError, match=r"row 1"):
        ctr_metrics([1, 0, 1, 0], [0.8, math.inf, math.nan, 0.4], [1, 1, 2, 2])


def test_variant_nan_validation_loss_of_the_generative_task_names_its_batch():
    from distrec.config import CftConfig

    task = GenerativeTask(CftConfig(lam=0.0), Batchify(0, torch.device("cpu")))
    rows = pack_rows([(0, 1.5, 2.0, 1.5, 3.0), (4, math.nan, 2.0, math.nan, 3.0)], task.eval_columns)
    with pytest.raises(ModelError) as err:
        task.metrics({name: rows[name] for name in rows.dtype.names}, split="valid", step=3)
    msg = str(err.value)
    assert "split 'valid'" in msg and "step 3" in msg and "sample id 4" in msg


def test_variant_nan_hidden_states_stop_grounded_ranking_naming_the_split_and_item():
    tok = byte_tokenizer()
    model = tiny_llama_for(tok)
    with torch.no_grad():
        model.model.norm.weight.fill_(math.nan)  # every final hidden state is NaN
    catalog = Catalog.for_dataset("amazon", items_table({1: "Heat", 2: "Casablanca", 3: "Toy Story"}))
    samples = [{"sample_id": 40 + i, "user_id": 1, "item_id": i + 1, "history_item_ids": [(i + 1) % 3 + 1]}
               for i in range(3)]
    rows = generative_rows(samples, catalog, tok)
    with pytest.raises(ModelError) as err:
        grounded_metrics(model, tok, OneProcess(), rows, dict(catalog.titles), num_beams=1, max_new_tokens=4,
                         ks=(1,))
    msg = str(err.value)
    assert "split 'test'" in msg and "item id 1" in msg


def test_variant_nan_item_embedding_stops_eimf_retrieval_naming_the_item():
    from eimf_toy import toy_items, toy_samples

    from distrec.config.eimf import BackboneConfig, EimfConfig, EimfEvalConfig
    from distrec.interests.evaluate import evaluate_retrieval
    from distrec.model.interests.eimf import build_model

    items, samples = toy_items(12), toy_samples(4, 12)
    torch.manual_seed(0)
    model = build_model(12, EimfConfig(backbone=BackboneConfig(kind="sa", num_interests=2, dim=8, max_len=10)))
    with torch.no_grad():
        model.backbone.item_emb.weight[3].fill_(math.nan)  # embedding row 3 = the third item, id 102
    with pytest.raises(ModelError, match=r"EIMF retrieval evaluation: 1 of 12 item embeddings is not finite; "
                                         r"the first is item id 102"):
        evaluate_retrieval(model, samples, items, EimfEvalConfig(ks=[5]))
