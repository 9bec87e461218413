"""Publishing files and folders so that readers see nothing or the complete thing.

Every artefact distrec shares between processes (fetched data, converted and tiny models,
prepared datasets, SUBR folders, the trained DIN, EIMF labels, exported adapters, metrics)
reaches its final path through this module, and nothing else renames into place:

- :func:`write_file` writes one file to a hidden temporary sibling, fsyncs it and moves it
  onto the path with ``os.replace``.
- :func:`staged` yields a temporary sibling folder to fill; on success the files the folder
  must hold are checked, then it is renamed onto the target.
- :func:`ensure_folder` wraps check -> build -> publish in a lock file (``filelock``) next to
  the target, so when several processes need the same folder at once one builds it and the
  others wait and reuse it. A folder that exists but lacks a required file is named in a
  warning and rebuilt; :func:`require_complete` lets a reader refuse it instead.

``required`` entries are file names or glob patterns relative to the folder (for example
``"model*.safetensors"`` for sharded weights); each must match at least one non-empty file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock

from distrec.errors import DistrecError

log = logging.getLogger(__name__)

#: Seconds a process waits for another to finish building a folder before giving up.
LOCK_TIMEOUT_S = 3600.0


class IncompleteError(DistrecError):
    """A folder lacks files it must hold (a half-written or foreign folder at a distrec path)."""


def _temp_sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}")


def missing(folder: Path, required: Sequence[str]) -> list[str]:
    """The entries of ``required`` that match no non-empty file in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return list(required)
    return [p for p in required if not any(f.is_file() and f.stat().st_size > 0 for f in folder.glob(p))]


def is_complete(folder: Path, required: Sequence[str]) -> bool:
    return not missing(folder, required)


def require_complete(folder: Path, required: Sequence[str], what: str) -> Path:
    """Return ``folder`` if it holds every required file; else raise IncompleteError naming it."""
    lacks = missing(folder, required)
    if lacks:
        state = "does not exist" if not Path(folder).is_dir() else f"lacks {lacks}"
        raise IncompleteError(f"{what} {folder} {state}; delete it and rebuild")
    return Path(folder)


def lock(target: Path, timeout: float = LOCK_TIMEOUT_S) -> FileLock:
    """The inter-process lock guarding ``target`` (a lock file ``.<name>.lock`` beside it)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(target.with_name(f".{target.name}.lock")), timeout=timeout)


def write_file(path: Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a hidden temporary sibling of ``path``, then move it onto ``path``.

    Readers see the old file or the whole new one; a failing ``write`` leaves no temporary.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path, "tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: Path, text: str) -> Path:
    return write_file(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2) + "\n")


def _publish(tmp: Path, target: Path, overwrite: bool, required: Sequence[str]) -> None:
    """Rename the complete ``tmp`` onto ``target``; an old ``target`` is restored if that fails.

    Without ``overwrite`` a complete ``target`` that appeared meanwhile wins and ``tmp`` is
    dropped; an incomplete one is always replaced.
    """
    require_complete(tmp, required, "staged folder for")
    if target.exists():
        if not overwrite and is_complete(target, required):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        aside = _temp_sibling(target, "old")
        os.replace(target, aside)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(aside, target)
            raise
        shutil.rmtree(aside, ignore_errors=True)
        return
    os.replace(tmp, target)


@contextlib.contextmanager
def staged(target: Path, required: Sequence[str] = (), *, overwrite: bool = False,
           exists_error: type[Exception] | None = None) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``target``; on success publish it as ``target``.

    ``required``: files the folder must hold (checked before the rename, IncompleteError).
    ``overwrite``: replace an existing complete ``target``; otherwise a complete ``target``
    is kept, or, with ``exists_error``, that error is raised before any work.
    On any exception (KeyboardInterrupt included) the temporary folder is removed and
    ``target`` is left as it was.
    """
    target = Path(target)
    if exists_error is not None and target.exists() and not overwrite:
        raise exists_error(f"{target} already exists (pass overwrite=True to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(target, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        _publish(tmp, target, overwrite, required)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_folder(target: Path, build: Callable[[Path], Any], required: Sequence[str], what: str,
                  *, rebuild: bool = False) -> Path:
    """Return ``target`` once it holds ``required``, building it with ``build(tmp)`` if needed.

    Safe when many processes (ranks, actors, drivers) call it at once on one machine or on a
    shared filesystem with working ``flock``: the first builds under the lock, the rest wait
    and reuse. ``rebuild`` replaces a complete folder too. An incomplete ``target`` (a crash
    of an older version, a hand-made folder) is named in a warning and replaced.
    """
    target = Path(target)
    if not rebuild and is_complete(target, required):
        return target
    with lock(target):
        if not rebuild and is_complete(target, required):
            return target
        if target.exists() and not rebuild:
            log.warning("%s %s lacks %s; rebuilding it", what, target, missing(target, required))
        with staged(target, required, overwrite=True) as tmp:
            build(tmp)
    return target
