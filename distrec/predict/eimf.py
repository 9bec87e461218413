"""``distrec predict`` for EIMF runs: top-N items per input row from the backbone alone (no LLM).

A run is an EIMF stage folder as :func:`distrec.model.interests.artefact.save_eimf` writes it
(``model.safetensors`` + ``eimf_config.json``; e.g. ``<out_dir>/ibim`` or ``<out_dir>/eimf``).
Each Ray Data actor builds one :class:`EimfScorer`: the serving model
(``load_eimf(run, heads=False)``: the multi-interest backbone, no ESIM heads, no LLM), the
item embeddings of the run's catalogue, and an exact faiss inner-product index over them,
built by the functions :mod:`distrec.interests.evaluate` evaluates with.

Ranking rule (ComiRec-style, as :mod:`distrec.interests.evaluate` documents it): the history
gives K interest vectors; an item scores the maximum over the K interests of interest·item;
items are ranked by that score, best first, ties to the lower catalogue row; when the run's
``eval.exclude_history`` is true the items of the history the model read are never returned
(the rule its test metrics were computed with). :func:`~distrec.interests.evaluate.merged_topn`
does it (per-interest faiss search, exact rescoring), so a row's list equals the evaluation's.

Input rows (one query each), in one of two forms:

- ``history_item_ids``: list of item ids, oldest first, used as given (the model reads the
  most recent ``backbone.max_len``). Any other columns are carried through untouched.
- ``user_id`` (+ optional ``timestamp``, + optional ``item_id``): the history is rebuilt from
  the interaction log of the run's prepared dataset with the rule the samples were built
  with (:class:`distrec.predict.history.InteractionLog`, :mod:`distrec.data.samples`): the
  user's interactions earlier in the ``(timestamp, user_id, item_id)`` order, oldest first,
  the most recent ``data.max_history`` kept. ``timestamp`` (unix seconds, or an Arrow
  timestamp) cuts the log strictly before that second; ``item_id`` (the interaction the query
  stands for, e.g. a logged or held-out one) also keeps that user's same-second interactions
  with a smaller item id, exactly as a training/test sample's history does. Without
  ``timestamp`` (or where it is null) the history is everything the log holds for the user
  ("as of now"), as for the LLM methods (:mod:`distrec.predict.samples`). A test
  sample's ``(user_id, timestamp, item_id)`` therefore rebuilds its ``history_item_ids``.

Where the prepared dataset is: the ``prepared`` argument of :func:`eimf_spec`, else the
``prepared`` key of the run's ``report.json``, else of ``../results.json`` (what
``distrec eimf experiment`` writes next to its stage folders).

Output rows: the input row's columns plus ``top_item_ids`` (list<int64>, at most ``top_n``,
best first; shorter only when the catalogue minus the excluded history holds fewer items) and
``top_scores`` (list<float32>, the max-over-interests scores, same order).

Bad rows are reported, never raised (:class:`distrec.predict.pipeline.Scorer`): an empty or
null history, an item id outside the run's catalogue, a null or unknown ``user_id``, a user
with no interaction before the asked time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from distrec.errors import ConfigError, DataError
from distrec.predict.pipeline import ScorerSpec

HISTORY = "history_item_ids"
USER, TIME, ITEM = "user_id", "timestamp", "item_id"
OUT_IDS, OUT_SCORES = "top_item_ids", "top_scores"
REPORT, RESULTS = "report.json", "results.json"


def is_eimf_run(path: str | Path) -> bool:
    """True when ``path`` is a folder holding an EIMF artefact (``model.safetensors`` and
    ``eimf_config.json``, :func:`distrec.model.interests.artefact.save_eimf`)."""
    from distrec.model.interests.artefact import CONFIG, WEIGHTS

    root = Path(path)
    return root.is_dir() and (root / WEIGHTS).is_file() and (root / CONFIG).is_file()


def run_prepared(run: str | Path) -> Path | None:
    """The prepared dataset an EIMF stage folder was trained on, as its outputs record it:
    ``prepared`` in ``<run>/report.json``, else in ``<run>/../results.json``; None when neither says."""
    root = Path(run)
    for file in (root / REPORT, root.parent / RESULTS):
        if file.is_file():
            try:
                found = json.loads(file.read_text()).get("prepared")
            except (OSError, json.JSONDecodeError, AttributeError):
                continue
            if found:
                return Path(found)
    return None


def _is_int(t: pa.DataType) -> bool:
    return pa.types.is_integer(t)


def _check_type(schema: pa.Schema, name: str, ok: bool, want: str, run: str) -> None:
    if not ok:
        raise DataError(f"input column '{name}' is {schema.field(name).type}, EIMF run {run} needs {want}")


def _user_log_source(run: str, prepared: str | Path | None) -> tuple[str, int]:
    """``(prepared folder, data.max_history)`` for user_id inputs; DataError when unusable."""
    from distrec.data.storage import read_manifest

    folder = Path(prepared) if prepared is not None else run_prepared(run)
    if folder is None:
        raise DataError(f"EIMF run {run}: neither {REPORT} nor ../{RESULTS} records the prepared dataset it was "
                        f"trained on, so user_id rows cannot be resolved; give the input a '{HISTORY}' column "
                        "(item ids, oldest first) or name the prepared folder")
    manifest = read_manifest(folder)  # DataError naming the folder when it is missing or incomplete
    if manifest.get("task") != "generative":
        raise DataError(f"{folder}: EIMF run {run} needs a generative prepared dataset, "
                        f"this one is {manifest.get('task')!r}")
    if "interactions" not in manifest.get("tables", {}):
        raise DataError(f"{folder}: no 'interactions' table (prepared before distrec kept the interaction log), so "
                        f"user_id rows of EIMF run {run} cannot be resolved; prepare it again or give the input a "
                        f"'{HISTORY}' column")
    return str(folder), int(manifest["config"]["max_history"])


def eimf_spec(run: str, input_schema: pa.Schema, top_n: int, batch_size: int, use_gpu: bool, *,
              prepared: str | Path | None = None) -> ScorerSpec:
    """The :class:`~distrec.predict.pipeline.ScorerSpec` scoring ``input_schema``'s rows with EIMF run ``run``.

    Args:
        run: an EIMF stage folder (:func:`is_eimf_run`).
        input_schema: the input's columns: ``history_item_ids`` (list of integer item ids), or
            ``user_id`` (integer) with optional ``timestamp`` (integer unix seconds or an Arrow
            timestamp) and ``item_id`` (integer, same-second tie-break); see the module doc.
        top_n: items per row (>= 1; capped at the catalogue size).
        batch_size: histories per forward pass and faiss search (>= 1).
        use_gpu: one GPU per actor (model and, with faiss-gpu, the index).
        prepared: the run's prepared dataset folder, when its outputs do not record it
            (:func:`run_prepared`); only read for ``user_id`` inputs.

    Raises:
        ConfigError: ``top_n`` or ``batch_size`` < 1.
        ModelError: ``run`` is not an EIMF artefact or its weights do not fit its config.
        DataError: a needed column is missing or of the wrong type (naming it and the run);
            the input already has ``top_item_ids``/``top_scores``; for ``user_id`` inputs,
            the prepared dataset is unknown, missing, not generative or lacks its interaction log.
    """
    from distrec.model.interests.artefact import load_eimf

    if top_n < 1 or batch_size < 1:
        raise ConfigError(f"top_n and batch_size must be >= 1, got {top_n} and {batch_size}")
    load_eimf(run, heads=False)  # ModelError now rather than in every actor
    names = set(input_schema.names)
    for out in (OUT_IDS, OUT_SCORES):
        if out in names:
            raise DataError(f"input already has a column '{out}', which EIMF run {run} writes; rename it")
    kwargs: dict[str, Any] = {"run": str(run), "top_n": int(top_n), "batch_size": int(batch_size),
                              "device": "cuda" if use_gpu else "cpu"}
    if HISTORY in names:
        t = input_schema.field(HISTORY).type
        _check_type(input_schema, HISTORY, (pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_int(t.value_type),
                    "a list of integer item ids", run)
    elif USER in names:
        _check_type(input_schema, USER, _is_int(input_schema.field(USER).type), "integer user ids", run)
        if TIME in names:
            t = input_schema.field(TIME).type
            _check_type(input_schema, TIME, _is_int(t) or pa.types.is_timestamp(t),
                        "integer unix seconds or a timestamp", run)
        if ITEM in names:
            _check_type(input_schema, ITEM, _is_int(input_schema.field(ITEM).type), "integer item ids", run)
        kwargs["prepared"], kwargs["max_history"] = _user_log_source(run, prepared)
    else:
        raise DataError(f"input has no column '{USER}' (or '{HISTORY}'), needed by EIMF run {run}; "
                        f"found {sorted(names)}")
    return ScorerSpec(factory=EimfScorer, kwargs=kwargs, method="eimf", num_gpus=1.0 if use_gpu else 0.0)


def _seconds(column: pa.ChunkedArray) -> list:
    """Integer unix seconds (None for null) of an integer or timestamp column."""
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.timestamp("s", tz=column.type.tz), safe=False).cast(pa.int64())
    return column.to_pylist()


class EimfScorer:
    """One actor's EIMF scorer: the serving backbone, the item embeddings and their faiss index.

    Args:
        run: the EIMF stage folder; top_n, batch_size: as :func:`eimf_spec`; device: torch device;
        prepared: the prepared folder whose ``interactions`` table resolves ``user_id`` rows
            (None for ``history_item_ids`` inputs); max_history: its ``data.max_history``.

    Raises ModelError (artefact) or DataError (prepared folder) at construction, and ModelError
    from :meth:`score` when the model gives non-finite interests (never for a bad input row).
    """

    def __init__(self, run: str, top_n: int, batch_size: int, device: str = "cpu",
                 prepared: str | None = None, max_history: int | None = None) -> None:
        from distrec.metrics.finite import require_finite
        from distrec.interests.evaluate import _backbone, build_index, item_matrix
        from distrec.model.interests.artefact import load_eimf

        model, self.index, cfg = load_eimf(run, heads=False, device=device)
        self.backbone = _backbone(model)
        self.run, self.top_n, self.batch_size = run, top_n, batch_size
        self.exclude_history = cfg.eval.exclude_history
        self.items = item_matrix(self.backbone)  # [N, d]; position p is catalogue row p + 1
        require_finite(self.items, self.index.ids, where=f"EIMF run {run}", what="item embedding", id_name="item id")
        self.faiss_index = build_index(self.items)
        self.log, self.max_history = None, max_history
        if prepared is not None:
            from distrec.data.storage import open_table
            from distrec.predict.history import InteractionLog

            self.log = InteractionLog(open_table(Path(prepared), "interactions"))

    # ------------------------------------------------------------------ histories

    def _unknown(self, items: np.ndarray) -> int | None:
        """The first item id of ``items`` outside the catalogue, or None."""
        ids = self.index.ids
        pos = np.clip(np.searchsorted(ids, items), 0, max(ids.size - 1, 0))
        bad = ids[pos] != items if ids.size else np.ones(items.shape, bool)
        return int(items[bad][0]) if bad.any() else None

    def _explicit(self, rows: pa.Table) -> list[list[int] | str]:
        out: list[list[int] | str] = []
        for h in rows.column(HISTORY).to_pylist():
            if not h or any(x is None for x in h):
                out.append("empty history" if not h else f"{HISTORY} holds a null item id")
                continue
            unknown = self._unknown(np.asarray(h, dtype=np.int64))
            out.append(list(h) if unknown is None else f"item_id {unknown} is not in the run's catalogue")
        return out

    def _from_log(self, rows: pa.Table) -> list[list[int] | str]:
        n = rows.num_rows
        users = rows.column(USER).to_pylist()
        times = _seconds(rows.column(TIME)) if TIME in rows.column_names else [None] * n
        anchors = rows.column(ITEM).to_pylist() if ITEM in rows.column_names else [None] * n
        out: list[list[int] | str] = []
        for u, t, i in zip(users, times, anchors):
            if u is None:
                out.append("user_id is null")
                continue
            found = self.log.history(int(u), t, i if t is not None else None, max_len=self.max_history)
            if found is None:
                out.append(f"user_id {u} is not in the run's user table")
            elif found.item_ids.size == 0:
                when = f" before timestamp {t}" + (f" (item_id {i})" if i is not None else "") if t is not None else ""
                out.append(f"empty history: user_id {u} has no interaction{when}")
            else:
                unknown = self._unknown(found.item_ids)
                out.append(found.item_ids.tolist() if unknown is None
                           else f"item_id {unknown} (in user_id {u}'s history) is not in the run's catalogue")
        return out

    # ------------------------------------------------------------------ scoring

    def rank(self, histories: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Top-``top_n`` item ids [B, n] (-1 past the available items) and their float32 scores
        for item-id histories (oldest first, all in the catalogue), by the module doc's rule."""
        from distrec.metrics.finite import require_finite
        from distrec.model.interests.backbones import pad_histories
        from distrec.interests.evaluate import history_exclusions, merged_topn, user_interests

        hist, mask = pad_histories(histories, self.index, self.backbone.cfg.max_len)
        n = min(self.top_n, self.index.num_items)
        tops, scores = [np.zeros((0, n), np.int64)], [np.zeros((0, n), np.float32)]
        for s in range(0, len(hist), self.batch_size):
            sl = slice(s, s + self.batch_size)
            inter = user_interests(self.backbone, hist[sl], mask[sl], self.batch_size)
            require_finite(inter, None, where=f"EIMF run {self.run}", what="interest set")
            exclude = history_exclusions(hist[sl], mask[sl]) if self.exclude_history else None
            top, sc = merged_topn(inter, self.items, n, exclude, self.faiss_index)
            tops.append(top)
            scores.append(sc)
        return self.index.item_ids(np.concatenate(tops) + 1), np.concatenate(scores)  # positions -> ids; -1 stays

    def score(self, rows: pa.Table) -> tuple[pa.Table, list[tuple[int, str]]]:
        """``(output rows of the good input rows, in input order, + top_item_ids/top_scores;
        [(index in rows, reason)] for the bad ones)``; see the module doc."""
        resolved = self._explicit(rows) if HISTORY in rows.column_names else self._from_log(rows)
        good = [i for i, h in enumerate(resolved) if not isinstance(h, str)]
        bad = [(i, h) for i, h in enumerate(resolved) if isinstance(h, str)]
        ids, scores = self.rank([resolved[i] for i in good])
        keep = ids >= 0
        lengths = keep.sum(axis=1)
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
        top_ids = pa.ListArray.from_arrays(offsets, pa.array(ids[keep], pa.int64()))
        top_scores = pa.ListArray.from_arrays(offsets, pa.array(scores[keep], pa.float32()))
        out = rows.take(pa.array(good, pa.int64()))
        return out.append_column(OUT_IDS, top_ids).append_column(OUT_SCORES, top_scores), bad


__all__ = ["EimfScorer", "eimf_spec", "is_eimf_run", "run_prepared"]
