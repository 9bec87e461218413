"""Where distrec keeps fetched data, converted models and prepared datasets.

`$DISTREC_HOME` wins; otherwise `~/.cache/distrec` (or `$XDG_CACHE_HOME/distrec`).
"""

from __future__ import annotations

import os
from pathlib import Path


def distrec_home() -> Path:
    env = os.environ.get("DISTREC_HOME")
    if env:
        return Path(env).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache, "distrec").resolve()


def raw_dir(dataset: str) -> Path:
    """Folder holding the raw files of a fetched dataset."""
    return distrec_home() / "raw" / dataset


def models_dir() -> Path:
    return distrec_home() / "models"


def prepared_root() -> Path:
    return distrec_home() / "prepared"
