"""Reading TensorBoard event files back (reports, benchmarks, tests); :mod:`distrec.train.monitor` writes them.

The readers accept a local folder or a URI (downloaded to a temporary folder first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

TEXT_SUFFIX = "/text_summary"
"""SummaryWriter.add_text stores tag ``t`` as ``t/text_summary``; read_texts strips it."""


def flatten_dict(values: Mapping[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into one level: {"a": {"b": 1}} -> {"a.b": 1} (``sep`` joins the keys)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_dict(value, sep=sep, prefix=f"{name}{sep}"))
        else:
            flat[name] = value
    return flat


def _accumulators(log_dir: str | Path) -> list[Any]:
    """One fully loaded EventAccumulator per folder (log_dir and its subfolders) holding event
    files; ``log_dir`` may be a URI (read from a temporary download)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from distrec.storage_uri import local_copy

    with local_copy(log_dir) as root:
        folders = sorted({p.parent for p in root.rglob("events.out.tfevents.*")})
        # size_guidance 0 = keep every event instead of TensorBoard's reservoir sample.
        guidance = {"scalars": 0, "tensors": 0}
        return [EventAccumulator(str(folder), size_guidance=guidance).Reload() for folder in folders]


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series under ``log_dir``, subfolders included: ``{tag: [(step, value), ...]}`` sorted by step.

    Values come back as float32-rounded floats (TensorBoard stores float32).
    """
    series: dict[str, list[tuple[int, float]]] = {}
    for acc in _accumulators(log_dir):
        for tag in acc.Tags()["scalars"]:
            series.setdefault(tag, []).extend((int(e.step), float(e.value)) for e in acc.Scalars(tag))
    return {tag: sorted(points, key=lambda p: p[0]) for tag, points in series.items()}


def read_texts(log_dir: str | Path) -> dict[str, list[str]]:
    """All texts logged with ``Monitor.text``: ``{tag: [text, ...]}`` in step order."""
    from tensorboard.util import tensor_util

    texts: dict[str, list[tuple[int, str]]] = {}
    for acc in _accumulators(log_dir):
        try:
            tags = acc.PluginTagToContent("text")
        except KeyError:  # no text in this folder
            continue
        for tag in tags:
            name = tag[: -len(TEXT_SUFFIX)] if tag.endswith(TEXT_SUFFIX) else tag
            for event in acc.Tensors(tag):
                raw = tensor_util.make_ndarray(event.tensor_proto).reshape(-1)[0]
                value = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
                texts.setdefault(name, []).append((int(event.step), value))
    return {tag: [text for _, text in sorted(items, key=lambda p: p[0])] for tag, items in texts.items()}


def read_hparams(log_dir: str | Path) -> dict[str, float | str | bool | None]:
    """The hparams of the last HParams session under ``log_dir`` ({} if none).

    Numbers come back as float (the plugin stores them as protobuf number values).
    """
    from tensorboard.plugins.hparams import plugin_data_pb2

    found: dict[str, float | str | bool | None] = {}
    for acc in _accumulators(log_dir):
        try:
            contents = acc.PluginTagToContent("hparams")
        except KeyError:
            continue
        for content in contents.values():
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            if not data.HasField("session_start_info"):
                continue
            for name, value in data.session_start_info.hparams.items():
                kind = value.WhichOneof("kind")
                found[name] = getattr(value, kind) if kind else None
    return found
