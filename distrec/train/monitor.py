"""Rank-0 TensorBoard logging.

Only the rank-0 worker should write events (N writers into one folder would
interleave duplicate curves), so every rank builds a ``Monitor`` and passes
``enabled=(rank == 0)``: the others get an instance whose methods do nothing and
that never touches the file system. No module-level writer exists.

Off local disk (``ray.storage_path: s3://...``) the writer logs into a local staging folder and
an ``upload`` callback copies it to the bucket at most every ``upload_every_s`` seconds while
scalars come in, at every :meth:`Monitor.sync` (each checkpoint) and on :meth:`Monitor.close`.
:mod:`distrec.eval.tensorboard` reads the event files back.
"""

from __future__ import annotations

import numbers
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from distrec.eval.tensorboard import flatten_dict

HPARAMS_RUN = "hparams"
"""Subfolder of the log dir that ``Monitor.hparams`` writes into (SummaryWriter.add_hparams makes one)."""

HPARAM_METRIC_PREFIX = "hparams/"
"""HParams metrics are also written as scalars; the prefix keeps them apart from the training curves."""

def _hparam_value(value: Any) -> int | float | str | bool:
    """A value the HParams plugin accepts: bool/int/float/str kept, anything else (None, lists, paths) as str."""
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        return value
    return str(value)


def _metric_values(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Flattened numeric metrics as floats; an interval ``[low, high]`` becomes ``<name>.low`` and
    ``<name>.high``; other non-numeric entries (HParams metrics are scalars) are left out."""
    out: dict[str, float] = {}
    for name, value in flatten_dict(metrics).items():
        if isinstance(value, numbers.Real):
            out[f"{HPARAM_METRIC_PREFIX}{name}"] = float(value)
        elif isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, numbers.Real) for v in value):
            out[f"{HPARAM_METRIC_PREFIX}{name}.low"], out[f"{HPARAM_METRIC_PREFIX}{name}.high"] = map(float, value)
    return out


class Monitor:
    """TensorBoard writer for rank 0; a no-op when ``enabled`` is False.

    Args:
        log_dir: local folder for the event files (created on first use by SummaryWriter).
        enabled: False on every rank but 0; then nothing is imported or written.
        upload: called (after a flush) to copy ``log_dir`` to the run's storage; None on local disk.
        upload_every_s: least seconds between two uploads triggered by :meth:`scalars`.
    """

    def __init__(self, log_dir: str | Path, enabled: bool = True, upload: Callable[[], None] | None = None,
                 upload_every_s: float = 30.0) -> None:
        self.log_dir = Path(log_dir)
        self.enabled = enabled
        self._writer = None
        self._upload = upload
        self._upload_every_s = upload_every_s
        self._uploaded_at = time.monotonic()
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def scalars(self, step: int, values: Mapping[str, Any]) -> None:
        """Log every numeric entry of ``values`` at ``step``.

        Nested dicts are joined with "/" ({"eval": {"auc": x}} -> "eval/auc", TensorBoard's
        grouping separator); 0-d tensors are unwrapped; non-numeric entries are skipped, so a
        whole metrics dict (with e.g. a split name in it) can be passed as is.
        """
        if self._writer is None:
            return
        for tag, value in flatten_dict(values, sep="/").items():
            if isinstance(value, torch.Tensor):
                value = value.item()
            if isinstance(value, numbers.Real):
                self._writer.add_scalar(tag, float(value), global_step=int(step))
        if self._upload is not None and time.monotonic() - self._uploaded_at >= self._upload_every_s:
            self.sync()

    def text(self, tag: str, step: int, text: str) -> None:
        """Log a text (config dump, sample generations) under ``tag`` at ``step``."""
        if self._writer is None:
            return
        self._writer.add_text(tag, text, global_step=int(step))

    def hparams(self, hparam_dict: Mapping[str, Any], metric_dict: Mapping[str, Any]) -> None:
        """Record one HParams session: the run's config and its final metrics.

        Nested dicts are flattened with dots; hparam values become int/float/str/bool;
        metrics are stored as ``hparams/<name>`` scalars in the ``hparams`` subfolder.
        torch's writer checks int before bool, so a bool hparam is stored as 1.0 / 0.0.
        """
        if self._writer is None:
            return
        hparams = {name: _hparam_value(v) for name, v in flatten_dict(hparam_dict).items()}
        self._writer.add_hparams(hparams, _metric_values(metric_dict), run_name=HPARAMS_RUN)

    def flush(self) -> None:
        """Push pending events to disk (e.g. before a report reads them back)."""
        if self._writer is not None:
            self._writer.flush()

    def sync(self) -> None:
        """Flush, then upload the event files (when an ``upload`` was given)."""
        if self._writer is None:
            return
        self._writer.flush()
        if self._upload is not None:
            self._upload()
            self._uploaded_at = time.monotonic()

    def close(self) -> None:
        """Flush, close and upload the writer's files; further calls become no-ops."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            if self._upload is not None:
                self._upload()

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _vm_hwm_bytes() -> int:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def peak_memory_bytes() -> dict[str, int]:
    """Peak memory of this process so far, in bytes.

    Returns:
        ``host_peak_rss`` (Linux: ``VmHWM`` of /proc/self/status, this process image's own peak;
        ``ru_maxrss`` there also carries the peak of the process that forked it, as the kernel
        keeps it across exec; elsewhere ``ru_maxrss``) and, when CUDA is available,
        ``cuda_max_allocated`` for the current device.
    """
    out = {"host_peak_rss": _vm_hwm_bytes()}
    if torch.cuda.is_available():
        out["cuda_max_allocated"] = int(torch.cuda.max_memory_allocated())
    return out

