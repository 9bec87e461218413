"""Prepared Parquet shards -> Ray Data tokenisation on CPU actors -> per-rank micro-batches.

Driver side, :func:`tokenized_splits` reads the prepared splits with ``ray.data.read_parquet`` and
tokenises them in an actor pool (``map_batches``), in a fixed order; :mod:`distrec.train.token_cache`
writes the result once as token shards that later runs read instead.
Every training worker opens the token shards of each split (:mod:`distrec.train.row_source`) and
reads only its own deterministic slice of every *global* micro-batch of ``world × micro`` rows,
one record batch at a time, so its memory does not grow with the dataset. That keeps
three promises Ray's dynamic ``streaming_split`` cannot: the order is identical in every run
(resume equivalence), every rank takes exactly the same number of steps (ZeRO-3 collectives
would hang otherwise), and the data position is one integer we checkpoint ourselves.

Remainder rule: the rows after the last full optimiser step of an epoch are not trained on in
that epoch; each epoch's order is a fresh seeded permutation, so no row is always skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from distrec.config import JobConfig
from distrec.data.ray_data import quiet_ray_data


class TokenizeActor:
    """Ray Data actor: loads the tokenizer and catalog once, tokenises batches of samples."""

    def __init__(self, job: dict, prepared_dir: str) -> None:
        """``prepared_dir``: the folder whose ``items``/``users`` tables the prompts name."""
        import pyarrow.parquet as pq

        from distrec.config import job_config_from_dict
        from distrec.data.prompts import Catalog
        from distrec.data.tokenize import ctr_label_ids
        from distrec.model.backbone import load_tokenizer

        self.job = job_config_from_dict(job)
        root = Path(prepared_dir)
        self.catalog = Catalog.for_dataset(
            self.job.data.dataset, pq.read_table(root / "items.parquet"), pq.read_table(root / "users.parquet")
        )
        self.tokenizer = load_tokenizer(self.job.model)
        self.yes_no = ctr_label_ids(self.tokenizer, self.job.prompt) if self.job.data.task == "ctr" else (None, None)
        self.markers = ("", "")
        if self.job.spa.enabled:
            from distrec.model.soft_prompts import HIST_TOKEN, TARGET_TOKEN, add_placeholder_tokens

            add_placeholder_tokens(self.tokenizer)
            self.markers = (HIST_TOKEN, TARGET_TOKEN)

    def __call__(self, batch) -> dict[str, Any]:
        columns = self.tokenize(batch)
        columns["split"] = np.asarray([Path(p).parent.name for p in _paths(batch)])
        return columns

    def tokenize(self, batch) -> dict[str, np.ndarray]:
        """Token ids and the columns the tasks read, for a batch of prepared samples (also ``distrec predict``)."""
        from distrec.data.tokenize import tokenize_batch

        counterfactual = self.job.data.task == "generative" and self.job.cft.lam > 0
        out = tokenize_batch(
            batch, self.catalog, self.tokenizer, self.job.prompt, self.job.data.task, *self.yes_no,
            with_counterfactual=counterfactual, markers=self.markers,
        )
        keep = {"sample_id", "user_id", "item_id", "label", "input_ids", "labels", "cf_input_ids", "cf_labels",
                "n_truncated", "history_item_ids", "shown_item_ids"}
        return {k: to_column(v) for k, v in out.items() if k in keep}


def _paths(batch) -> list[str]:
    return batch.column("path").to_pylist() if hasattr(batch, "column") else list(batch["path"])


def to_column(values: list) -> np.ndarray:
    if values and isinstance(values[0], list):
        arr = np.empty(len(values), dtype=object)
        arr[:] = [np.asarray(v, dtype=np.int64) for v in values]
        return arr
    return np.asarray(values)


def tokenized_splits(job: JobConfig, prepared_dir: Path, splits: list[str]) -> dict[str, Any]:
    """Materialised Ray Datasets of tokenised samples, one per split, each in sample order.

    All splits go through one actor pool (the tokenizer loads once per actor, not per split).
    Columns: ``split, sample_id, user_id, item_id, history_item_ids, input_ids, n_truncated``, plus
    ``label`` and ``shown_item_ids`` (CTR: ``input_ids`` = prompt + answer) or ``labels`` and, for
    CFT, ``cf_input_ids``/``cf_labels``.
    """
    import ray.data

    quiet_ray_data()
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    files = [str(p) for s in splits for p in sorted((prepared_dir / s).glob("part-*.parquet"))]
    n_actors = max(1, job.ray.data_actors)
    tokenized = (
        ray.data.read_parquet(files, include_paths=True)
        .repartition(n_actors * 2)
        .map_batches(
            TokenizeActor,
            fn_constructor_kwargs={"job": _asdict(job), "prepared_dir": str(prepared_dir)},
            batch_size=256,
            compute=ray.data.ActorPoolStrategy(size=n_actors),
            num_cpus=job.ray.data_actor_cpus,
            batch_format="pyarrow",
        )
        .materialize()
    )
    return {s: tokenized.filter(expr=f"split == '{s}'").materialize() for s in splits}


def _asdict(job: JobConfig) -> dict:
    from distrec.config_loader import to_dict

    return to_dict(job)


# ----------------------------------------------------------------------------- worker side


def epoch_order(n_rows: int, seed: int, epoch: int) -> np.ndarray:
    """Seeded permutation of row indices for one epoch (the same on every rank)."""
    return np.random.default_rng([seed, epoch]).permutation(n_rows)


def n_rows(rows) -> int:
    """Rows of a split: a :class:`~distrec.train.row_source.ShardRows` or a dict of column arrays."""
    return rows.num_rows if hasattr(rows, "take") else len(rows["sample_id"])


def take(rows, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Rows ``idx`` of either form, as a dict of column arrays."""
    return rows.take(idx) if hasattr(rows, "take") else {k: v[idx] for k, v in rows.items()}


def train_micro_batches(
    rows, rank: int, world: int, micro: int, grad_accum: int,
    seed: int, epoch: int, start_step: int, lengths: np.ndarray | None = None, group_steps: int = 32,
) -> Iterator[list[dict[str, np.ndarray]]]:
    """Yield, per optimiser step, this rank's ``grad_accum`` micro-batches.

    Step ``s`` of an epoch consumes global rows ``[s·G, (s+1)·G)`` of the epoch's permutation,
    ``G = world·micro·grad_accum``; within it, micro-batch ``a`` of rank ``r`` is the slice
    ``[(a·world + r)·micro, … + micro)``. Resuming at ``start_step`` skips exactly the rows
    already consumed. With ``lengths`` (one per row) the epoch's order is
    :func:`length_grouped_order` instead: the same rows, fewer padded tokens.
    """
    n = n_rows(rows)
    per_step = world * micro * grad_accum
    order = epoch_order(n, seed, epoch)
    if lengths is not None:
        order = length_grouped_order(order, lengths, per_step, group_steps, seed, epoch)
    for step in range(start_step, n // per_step):
        base = step * per_step
        micro_batches = []
        for a in range(grad_accum):
            lo = base + (a * world + rank) * micro
            idx = order[lo : lo + micro]
            micro_batches.append(take(rows, idx))
        yield micro_batches


def length_grouped_order(order: np.ndarray, lengths: np.ndarray, per_step: int, group_steps: int, seed: int,
                         epoch: int) -> np.ndarray:
    """The epoch's permutation regrouped so that each micro-batch holds rows of similar length.

    The rows the epoch trains on (the first ``⌊n / per_step⌋·per_step`` of ``order``) are cut
    into windows of ``group_steps`` optimiser steps; each window is sorted by length (stable,
    longest first), cut into steps of ``per_step`` consecutive rows (so every micro-batch is a
    run of similar lengths), and its steps are shuffled by ``default_rng([seed, epoch, window])``
    so long and short steps alternate. A function of ``(order, lengths, seed, epoch)`` only:
    identical on every rank and on every resume, and every row of the epoch exactly once.
    The idea is Hugging Face's ``group_by_length`` (mega-batches sorted by length); the
    windowing and seeding here are distrec's. Returns ``(⌊n / per_step⌋·per_step,)`` int64.
    """
    used = order[: len(order) // per_step * per_step]
    window = per_step * max(1, group_steps)
    out = []
    for w, lo in enumerate(range(0, len(used), window)):
        part = used[lo:lo + window]
        part = part[np.argsort(-np.asarray(lengths)[part], kind="stable")]
        steps = part.reshape(-1, per_step)
        out.append(steps[np.random.default_rng([seed, epoch, w]).permutation(len(steps))].reshape(-1))
    return np.concatenate(out) if out else used.astype(np.int64)


def padding_counts(micro_batches: list[dict]) -> tuple[int, int]:
    """``(padded tokens, token slots)`` of left-padding each micro-batch's ``input_ids`` to its
    longest row; ``(0, 0)`` for rows without token ids (the DIN's)."""
    pad = slots = 0
    for mb in micro_batches:
        if "input_ids" not in mb:
            continue
        lengths = [len(s) for s in mb["input_ids"]]
        slots += max(lengths) * len(lengths)
        pad += max(lengths) * len(lengths) - sum(lengths)
    return pad, slots


def eval_batches(rows, rank: int, world: int, batch: int) -> Iterator[tuple[dict, int]]:
    """Yield ``(batch, n_real)`` so that every rank runs the same number of forwards.

    Rows are dealt round-robin in global batches of ``world·batch``; a rank whose slice of the
    last global batch is short pads it by repeating its first row (or row 0) and reports how
    many rows are real.
    """
    n = n_rows(rows)
    per = world * batch
    for base in range(0, max(n, 1), per):
        lo = base + rank * batch
        idx = np.arange(lo, min(lo + batch, n))
        n_real = len(idx)
        if n_real < batch:
            fill = idx[0] if n_real else 0
            idx = np.concatenate([idx, np.full(batch - n_real, fill)]).astype(np.int64)
        if n == 0:
            return
        yield take(rows, idx), n_real
