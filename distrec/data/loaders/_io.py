"""Read delimited text files into typed Arrow tables, failing with the file and line at fault.

Every loader reads official raw files that users download themselves, so a bad file is the
common case, not the exception. The fast path hands the whole file to ``pyarrow.csv`` with
explicit column types (ML-25M has 25M rows). Only when that fails do we re-read the file
slowly, as strings and single-threaded, to find the first bad line and say exactly what is
wrong with it. Line numbers are 1-based physical lines, counting a header line; they assume
one record per line, which holds for every supported format.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NoReturn, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from distrec.errors import DataError

# How many rows one probing cast covers when searching for the first bad value.
_PROBE_CHUNK = 65536


@dataclass(frozen=True)
class Col:
    """One column to read: its name (header name, or positional name) and target type."""

    name: str
    type: pa.DataType = field(default_factory=pa.string)
    nullable: bool = False  # numeric columns only: may an empty field mean "unknown"?


@dataclass(frozen=True)
class Lines:
    """Maps a row index of a table read from ``path`` back to its line in the file."""

    path: Path
    first_line: int  # line of row 0: 2 after a header, else 1
    skipped: tuple[int, ...] = ()  # lines dropped on purpose (sorted), see ``skip_bad_rows``

    def line(self, row: int) -> int:
        line = self.first_line + row
        # Each skipped line at or before the candidate pushes the row one line further down.
        pos = 0
        while True:
            n = bisect.bisect_right(self.skipped, line)
            if n == pos:
                return line
            line += n - pos
            pos = n

    def place(self, row: int) -> str:
        """Where row ``row`` is within the file: ``"line N"``."""
        return f"line {self.line(row)}"

    def at(self, row: int) -> str:
        return f"{self.path}: {self.place(row)}"


@dataclass(frozen=True)
class Rows(Lines):
    """Maps a row index of a table read from a Parquet file to its 0-based row there."""

    first_line: int = 0

    def line(self, row: int) -> int:
        return row

    def place(self, row: int) -> str:
        return f"row {row}"


@dataclass(frozen=True)
class Format:
    """How a delimited file is written."""

    delimiter: str
    header: bool
    encoding: str = "utf8"
    quoted: bool = False
    escape_char: str | None = None


def require_file(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return path


def require_content(path: Path) -> None:
    """Fail early, and clearly, on a file with nothing in it."""
    with open(path, "rb") as fh:
        if not fh.read(4096).strip():
            raise DataError(f"{path}: no data rows (the file is empty)")


def read_header(path: Path, fmt: Format) -> list[str]:
    """The header fields of ``path``, unquoted and stripped."""
    with open(path, "rb") as fh:
        first = fh.readline()
    if not first.strip():
        raise DataError(f"{path}: file is empty (expected a header line)")
    text = first.decode(fmt.encoding, errors="replace").lstrip("\ufeff").rstrip("\r\n")
    return [f.strip().strip('"') for f in text.split(fmt.delimiter)]


def read_delimited(
    path: Path,
    cols: Sequence[Col],
    fmt: Format,
    *,
    all_names: Sequence[str] | None = None,
    skip_bad_rows: bool = False,
) -> tuple[pa.Table, Lines]:
    """Read the columns ``cols`` of ``path`` into a table typed as they say.

    With a header, ``cols`` are looked up by header name (in any order, extra columns
    ignored). Without one, ``all_names`` names every field of a line in order.
    ``skip_bad_rows`` drops lines with the wrong number of fields instead of failing, and
    records them in the returned ``Lines`` (used only where the official file is known to
    hold a few such lines).
    """
    if fmt.header:
        header = read_header(path, fmt)
        missing = [c.name for c in cols if c.name not in header]
        if missing:
            raise DataError(
                f"{path}: line 1: missing column(s) {missing}; the header has {header}"
            )
        names = None
    else:
        assert all_names is not None, "a headerless file needs all_names"
        names = list(all_names)
        require_content(path)
    skipped: list[int] = []

    def on_bad_row(row: pacsv.InvalidRow) -> str:
        if not skip_bad_rows or row.number is None:
            return "error"
        skipped.append(row.number)
        return "skip"

    try:
        # Line numbers of bad rows are only known single-threaded; skipping needs them.
        table = _arrow_read(path, cols, fmt, names, threads=not skip_bad_rows,
                            on_bad_row=on_bad_row)
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        _diagnose(path, cols, fmt, names, exc)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    lines = Lines(path, 2 if fmt.header else 1, tuple(sorted(skipped)))
    if table.num_rows == 0:
        raise DataError(f"{path}: no data rows")
    numeric = [c.name for c in cols if not c.nullable and c.type != pa.string()]
    require_present(table, numeric, lines)
    return table, lines


def _arrow_read(
    path: Path,
    cols: Sequence[Col],
    fmt: Format,
    names: list[str] | None,
    *,
    threads: bool,
    on_bad_row: Callable[[pacsv.InvalidRow], str],
    as_strings: bool = False,
) -> pa.Table:
    read = pacsv.ReadOptions(
        use_threads=threads, encoding=fmt.encoding, column_names=names, block_size=1 << 24
    )
    parse = pacsv.ParseOptions(
        delimiter=fmt.delimiter,
        quote_char='"' if fmt.quoted else False,
        escape_char=fmt.escape_char or False,
        invalid_row_handler=on_bad_row,
    )
    convert = pacsv.ConvertOptions(
        include_columns=[c.name for c in cols],
        column_types={c.name: (pa.string() if as_strings else c.type) for c in cols},
        null_values=[""],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    return pacsv.read_csv(path, read_options=read, parse_options=parse, convert_options=convert)


def _diagnose(
    path: Path, cols: Sequence[Col], fmt: Format, names: list[str] | None, exc: Exception
) -> NoReturn:
    """Re-read ``path`` slowly, as strings, to name the first bad line; always raises."""
    bad: list[pacsv.InvalidRow] = []

    def first_bad(row: pacsv.InvalidRow) -> str:
        bad.append(row)
        return "error"

    try:
        strings = _arrow_read(path, cols, fmt, names, threads=False, on_bad_row=first_bad,
                              as_strings=True)
    except (pa.ArrowInvalid, UnicodeDecodeError) as again:
        if bad:
            row = bad[0]
            where = f"line {row.number}" if row.number is not None else "a line"
            raise DataError(
                f"{path}: {where}: expected {row.expected_columns} fields, found "
                f"{row.actual_columns} (truncated or malformed line): {row.text[:200]!r}"
            ) from None
        hint = f" (is the file not {fmt.encoding}-encoded?)" if "UTF8" in str(again) else ""
        raise DataError(f"{path}: cannot parse{hint}: {again}") from None
    cast_strings(strings, cols, Lines(path, 2 if fmt.header else 1))
    raise DataError(f"{path}: cannot parse: {exc}") from None


def cast_strings(table: pa.Table, cols: Sequence[Col], lines: Lines) -> pa.Table:
    """Cast string columns to ``cols``' types, naming the first value that does not fit."""
    out = []
    for c in cols:
        col = table.column(c.name)
        if c.type == pa.string():
            out.append(col)
            continue
        empty = pc.equal(pc.utf8_trim_whitespace(col), "")
        if c.nullable:
            col = pc.if_else(empty, pa.scalar(None, pa.string()), col)
        elif pc.any(empty).as_py():
            row = pc.index(empty, True).as_py()
            raise DataError(f"{lines.at(row)}: column '{c.name}' is empty")
        out.append(_cast_column(col, c, lines))
    return pa.Table.from_arrays(out, names=[c.name for c in cols])


def _cast_column(col: pa.ChunkedArray, c: Col, lines: Lines) -> pa.ChunkedArray:
    try:
        return pc.cast(col, c.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    flat = col.combine_chunks()
    for start in range(0, len(flat), _PROBE_CHUNK):
        chunk = flat.slice(start, _PROBE_CHUNK)
        try:
            pc.cast(chunk, c.type)
            continue
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        for i, value in enumerate(chunk.to_pylist()):
            try:
                pc.cast(pa.array([value], pa.string()), c.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise DataError(
                    f"{lines.at(start + i)}: column '{c.name}': cannot read {value!r} as {c.type}"
                ) from None
    raise DataError(f"{lines.path}: column '{c.name}': cannot read as {c.type}")


def require_present(table: pa.Table, names: Sequence[str], lines: Lines) -> None:
    """Fail on the first null in any of the columns ``names``."""
    for name in names:
        col = table.column(name)
        if col.null_count:
            row = pc.index(pc.is_null(col), True).as_py()
            raise DataError(f"{lines.at(row)}: column '{name}' is missing or empty")


def read_split_lines(
    path: Path, separator: str, cols: Sequence[Col], encoding: str = "utf8"
) -> tuple[pa.Table, Lines]:
    """Read a headerless file whose fields are separated by a multi-character ``separator``.

    MovieLens-1M uses ``::``, which ``pyarrow.csv`` cannot split on; we read whole lines and
    split them with Arrow kernels instead (still vectorised).
    """
    require_content(path)
    lines = Lines(path, 1)
    whole = Col("line")
    try:
        table = _arrow_read(path, [whole], Format("\x1f", header=False, encoding=encoding),
                            ["line"], threads=True, on_bad_row=lambda row: "error")
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    if table.num_rows == 0:
        raise DataError(f"{path}: no data rows")
    parts = pc.split_pattern(table.column("line"), separator, max_splits=len(cols) - 1)
    wrong = pc.not_equal(pc.list_value_length(parts), len(cols))
    if pc.any(wrong).as_py():
        row = pc.index(wrong, True).as_py()
        text = table.column("line")[row].as_py()
        found = len(text.split(separator))
        raise DataError(
            f"{lines.at(row)}: expected {len(cols)} fields separated by {separator!r}, found "
            f"{found} (truncated or malformed line): {text[:200]!r}"
        )
    strings = pa.Table.from_arrays(
        [pc.list_element(parts, i) for i in range(len(cols))], names=[c.name for c in cols]
    )
    return cast_strings(strings, cols, lines), lines
