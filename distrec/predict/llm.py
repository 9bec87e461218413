"""Scorers for LLM runs: CTR (P(yes) per row) and generative (top-K grounded items per row).

Both turn input rows into the run's samples (:mod:`distrec.predict.samples`), add SUBR's
``history_indices`` with the run's item space (:func:`distrec.retrieval.subr.retrieve_table`),
tokenise with the training path's :class:`~distrec.train.data_stream.TokenizeActor` and run
the task object of training (:class:`~distrec.objectives.tasks.CtrTask`) or the evaluation's
grounded generation (:func:`distrec.eval.generation.ground_prompts`), so nothing of prompting,
retrieval, CRM features or CFLoRA's instance context is written twice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from distrec.predict.samples import SampleRules, build_samples


class LlmScorer:
    """Built once per actor. ``job``: the run's config (dict); ``run``: its distrec folder;
    ``source``: the prepared folder holding the interaction log; ``prepared``: the folder whose
    tables the prompts name (the SUBR folder when SUBR is on); ``space``: ``[ObjectRef]`` of
    the SUBR item space or None; ``crm``: the CRM folder or None."""

    def __init__(self, job: dict, run: str, source: str, prepared: str, space: list | None, crm: str | None,
                 batch_size: int, use_gpu: bool) -> None:
        from distrec.config import job_config_from_dict
        from distrec.data import storage
        from distrec.predict.history import InteractionLog
        from distrec.predict.run_model import load_run_model
        from distrec.train.data_stream import TokenizeActor

        self.job = job_config_from_dict(job)
        self.batch_size, self.prepared = batch_size, Path(prepared)
        data = self.job.data
        self.rules = SampleRules.from_tables(data.task,
                                             data.max_history_stored if data.task == "ctr" else data.max_history,
                                             storage.open_table(Path(prepared), "items"),
                                             storage.open_table(Path(prepared), "users"))
        self.log = InteractionLog(storage.open_table(Path(source), "interactions"))
        self.tokenize = TokenizeActor(job, prepared).tokenize
        self.space = self.subr = None
        if space is not None:
            import ray

            from distrec.train.artefacts import subr_config

            self.space, self.subr = ray.get(space[0]), subr_config(self.job)
        device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.run = load_run_model(self.job, run, crm, device)

    def _tokenized(self, rows: pa.Table) -> tuple[dict[str, np.ndarray], np.ndarray, list[tuple[int, str]]]:
        samples, kept, bad = build_samples(rows, self.log, self.rules)
        if self.space is not None and samples.num_rows:
            from distrec.retrieval.subr import retrieve_table

            samples = retrieve_table(samples, self.space, self.subr)
        return self.tokenize(samples), kept, bad

    def _batches(self, columns: dict[str, np.ndarray]):
        n = len(columns["sample_id"])
        for lo in range(0, n, self.batch_size):
            yield {k: v[lo:lo + self.batch_size] for k, v in columns.items()}


class CtrScorer(LlmScorer):
    """Adds ``p_yes: float32``, P(yes) at the answer position (``objectives.ctr.p_yes``)."""

    def score(self, rows: pa.Table) -> tuple[pa.Table, list[tuple[int, str]]]:
        columns, kept, bad = self._tokenized(rows)
        scores: dict[int, float] = {}
        if len(kept):
            for batch in self._batches(columns):
                for sample_id, _, _, p in self.run.task.eval_rows(self.run.model, batch, len(batch["sample_id"])):
                    scores[sample_id] = p
        p_yes = pa.array([scores[int(i)] for i in kept], pa.float32())
        return rows.take(pa.array(kept, pa.int64())).append_column("p_yes", p_yes), bad


class GenerativeScorer(LlmScorer):
    """Adds ``top_item_ids: list<int64>`` and ``top_scores: list<float32>`` (best first, ``top_k``).

    The ranking is the evaluation's (``eval.grounding``: the top beam's nearest items, or the
    interleaved beams) over the catalogue embedded by the run's model. A score is minus the L2
    distance between the item's title embedding and the generated title it was grounded from
    (``top_beam``), or the nearest of the row's generated titles (``interleave``).
    """

    def __init__(self, *args, top_k: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        import pyarrow.parquet as pq

        from distrec.data.prompts import Catalog
        from distrec.eval.generation import catalogue_names, embed_catalogue
        from distrec.eval.grounding import ItemIndex, canonical_ids
        from distrec.predict.run_model import OneProcess

        e = self.job.eval
        self.top_k = top_k
        table = pq.read_table(self.prepared / "items.parquet")
        self.names = catalogue_names(dict(Catalog.for_dataset(self.job.data.dataset, table).titles))
        with torch.no_grad():
            ids, self.vectors = embed_catalogue(self.run.model, self.run.tokenizer, OneProcess(), self.names,
                                                e.batch_size, "predict")
        self.row_of = {int(i): r for r, i in enumerate(ids)}
        titles = self.names if e.merge_duplicate_titles else None
        self.index = ItemIndex(ids, self.vectors, titles=titles)
        self.canon = canonical_ids(self.names) if titles is not None else None

    @torch.no_grad()
    def score(self, rows: pa.Table) -> tuple[pa.Table, list[tuple[int, str]]]:
        from distrec.eval.generation import ground_prompts, prompt_texts
        from distrec.eval.grounding import final_ranking

        e = self.job.eval
        columns, kept, bad = self._tokenized(rows)
        top_ids: list[list[int]] = []
        top_scores: list[list[float]] = []
        for batch in self._batches(columns) if len(kept) else ():
            prompts = prompt_texts(self.run.tokenizer, batch["input_ids"], batch["labels"])
            grounded = ground_prompts(self.run.model, self.run.tokenizer, self.index, prompts,
                                      num_beams=e.num_beams, max_new_tokens=e.max_new_tokens,
                                      min_new_tokens=e.min_new_tokens, batch_size=e.batch_size,
                                      k=self.top_k, dedupe=e.merge_duplicate_titles)
            for i, beams in enumerate(grounded.rankings):
                ranking = final_ranking(beams, e.grounding, self.canon, cut=max(self.top_k, 500))[:self.top_k]
                generated = grounded.vectors[i * e.num_beams:(i + 1) * e.num_beams][grounded.named[i]]
                if e.grounding == "top_beam":
                    generated = generated[:1]
                top_ids.append([int(x) for x in ranking])
                top_scores.append(self._scores(ranking, generated))
        out = rows.take(pa.array(kept, pa.int64()))
        out = out.append_column("top_item_ids", pa.array(top_ids, pa.list_(pa.int64())))
        return out.append_column("top_scores", pa.array(top_scores, pa.list_(pa.float32()))), bad

    def _scores(self, ranking: list[int], generated: np.ndarray) -> list[float]:
        if not ranking or not len(generated):
            return []
        items = self.vectors[[self.row_of[i] for i in ranking]]
        dist = np.linalg.norm(items[:, None, :] - generated[None, :, :].astype(np.float32), axis=-1)
        return (-dist.min(axis=1)).astype(np.float32).tolist()
