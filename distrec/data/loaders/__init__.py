"""Dataset loaders: official raw files -> validated canonical Arrow tables.

``load_dataset(name, path)`` is the one entry point the rest of distrec uses. Each loader
reads the files exactly as their publisher ships them (users download ML-1M, ML-25M,
BookCrossing and Amazon themselves; ML-100K can also be fetched offline, see
``distrec.data.fetch``) and fails with a ``DataError`` naming the file and line at fault.
The tables come back conformed to ``distrec.data.schema`` and validated.

``label_rule(name)`` is the rating threshold of a positive CTR label (label = rating >=
threshold), following the papers distrec reproduces: MovieLens-100K/1M 4 of 5; ML-25M
"rating > 3" on its half-star scale, i.e. >= 3.5; BookCrossing 5 of 10 (0 is an implicit
interaction, hence negative). Amazon (2018 and 2023 releases) has no agreed rule in those
papers: we chose 4 of 5, the same as MovieLens, since both use a 1-5 star scale.

``custom`` reads your own logs (``distrec.data.loaders.custom``); it has no default threshold:
its labels follow ``data.label_rule`` (and ``data.label_threshold``), passed as ``label_rule``.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping

from distrec.data.loaders._checks import dropped_rows
from distrec.data.loaders.amazon import load_amazon
from distrec.data.loaders.amazon2023 import load_amazon2023
from distrec.data.loaders.bookcrossing import load_bookcrossing
from distrec.data.loaders.custom import load_custom
from distrec.data.loaders.movielens import load_ml1m, load_ml25m, load_ml100k
from distrec.data.schema import CanonicalTables
from distrec.errors import DataError

Loader = Callable[[Path], CanonicalTables]

DATASETS: Mapping[str, Loader] = MappingProxyType({
    "ml-100k": load_ml100k,
    "ml-1m": load_ml1m,
    "ml-25m": load_ml25m,
    "bookcrossing": load_bookcrossing,
    "amazon": load_amazon,
    "amazon2023": load_amazon2023,
    "custom": load_custom,
})

_LABEL_THRESHOLDS: Mapping[str, float] = MappingProxyType({
    "ml-100k": 4.0,
    "ml-1m": 4.0,
    "ml-25m": 3.5,
    "bookcrossing": 5.0,
    "amazon": 4.0,
    "amazon2023": 4.0,
})

__all__ = ["DATASETS", "check_name", "dropped_rows", "label_rule", "load_dataset"]


def check_name(name: str) -> str:
    """Return ``name`` if it is a known dataset, else raise DataError suggesting one."""
    if name in DATASETS:
        return name
    close = difflib.get_close_matches(name.lower(), list(DATASETS), n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise DataError(f"unknown dataset '{name}'; valid names: {', '.join(DATASETS)}.{hint}")


def label_rule(name: str) -> float:
    """Rating threshold of a positive label for dataset ``name``: label = rating >= it.

    Raises DataError for ``custom``, which has no default: set ``data.label_threshold``.
    """
    if check_name(name) not in _LABEL_THRESHOLDS:
        raise DataError(f"dataset '{name}' has no default rating threshold: set data.label_threshold "
                        "(label = rating >= it), or data.label_rule=column or implicit")
    return _LABEL_THRESHOLDS[name]


def load_dataset(name: str, path: str | Path, label_rule: str = "threshold") -> CanonicalTables:
    """Load dataset ``name`` from the folder ``path`` holding its official raw files.

    ``label_rule`` (``data.label_rule``) tells the ``custom`` loader which column holds the
    labels; the built-in datasets always have ratings and ignore it.

    For ``amazon`` the folder holds one category of Amazon Reviews 2018: its reviews
    ``<Category>.json.gz`` and ``meta_<Category>.json.gz``; for ``amazon2023`` one category
    of Amazon Reviews 2023: ``<Category>.jsonl.gz`` and ``meta_<Category>.jsonl.gz``.
    """
    loader = DATASETS[check_name(name)]
    folder = Path(path).expanduser()
    if not folder.is_dir():
        what = "is a file, expected a folder" if folder.exists() else "does not exist"
        raise DataError(f"{folder}: raw data folder for '{name}' {what}")
    if loader is load_custom:
        return load_custom(folder, label_rule)
    return loader(folder)
