"""Read gzip'd JSON-lines files (Amazon Reviews 2018) into Arrow, naming the line at fault.

The fast path is ``pyarrow.json`` with an explicit schema (review files run to millions of
lines). If it fails, the file is read again line by line in Python, which either finds the
first bad line (or a truncated gzip stream) and raises ``DataError`` naming it, or, where
Arrow was merely stricter than needed (a field whose JSON type varies between lines), builds
the table with the caller's per-record converter.
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.json as pajson

from distrec.errors import DataError

# Turns one parsed record into a tuple of column values; raises ValueError to reject it.
Converter = Callable[[dict[str, Any]], tuple[Any, ...]]


def read_json_lines(path: Path, schema: pa.Schema, convert: Converter) -> pa.Table:
    """Read the fields of ``schema`` from every line of ``path`` (``.gz`` or plain)."""
    try:
        return pajson.read_json(
            path,
            parse_options=pajson.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
            read_options=pajson.ReadOptions(block_size=1 << 24),
        )
    except (pa.ArrowInvalid, OSError, EOFError):
        pass
    rows = []
    for line, record in iter_records(path):
        try:
            rows.append(convert(record))
        except (ValueError, TypeError, KeyError) as exc:
            raise DataError(f"{path}: line {line}: {exc}") from None
    if not rows:
        raise DataError(f"{path}: no records")
    columns = list(zip(*rows))
    return pa.table(
        [pa.array(list(col), f.type) for col, f in zip(columns, schema)], schema=schema
    )


def iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, JSON object) for each non-blank line of ``path``."""
    opener = gzip.open if path.name.endswith(".gz") else open
    line = 0
    try:
        with opener(path, "rb") as fh:
            for line, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}: line {line}: not valid JSON ({exc})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}: line {line}: expected a JSON object")
                yield line, record
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(
            f"{path}: truncated or corrupt gzip file, unreadable after line {line} ({exc})"
        ) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None


def text(value: Any, field: str) -> str:
    """A required string field."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"field '{field}' must be a non-empty string, found {value!r}")
    return value


def number(value: Any, field: str) -> float:
    """A required JSON number (not a bool, not a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"field '{field}' must be a number, found {value!r}")
    return float(value)


def whole(value: Any, field: str) -> int:
    """A required integer (a float with no fraction is accepted)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"field '{field}' must be an integer, found {value!r}")
    return value
