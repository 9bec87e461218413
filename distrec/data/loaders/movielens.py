"""Loaders for the official GroupLens MovieLens releases: 100K, 1M and 25M.

Each release has its own layout (100K: tab/pipe files ``u.data``, ``u.item``, ``u.user``;
1M: ``::``-separated ``*.dat``; 25M: quoted csv with a header and no user file), but all
three end in the same canonical tables: MovieLens ids are kept as the canonical ids, the
"(1995)" year moves out of the title into ``year``, and genres become ``categories``.
The RecBole copy of 100K (what ``distrec data fetch ml-100k`` installs) is read by
``recbole.py``; ``load_ml100k`` picks whichever layout the folder holds.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from distrec.data.loaders import recbole
from distrec.data.loaders._checks import check_interactions, finish
from distrec.data.loaders._fields import int_strings, nulls, split_list, year_at_end
from distrec.data.loaders._io import (
    Col,
    Format,
    read_delimited,
    read_split_lines,
    require_file,
)
from distrec.data.loaders._movies import ML_SCALE, RATING_COLS, ml_users, movie_items
from distrec.data.schema import CanonicalTables
from distrec.errors import DataError

# The 19 genre flag columns of ML-100K ``u.item``, in file order (see ``u.genre``).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)

# ML-1M ``users.dat`` occupation codes, from the ML-1M README.
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)

ML25M_SCALE = (0.5, 5.0)


def load_ml100k(folder: Path) -> CanonicalTables:
    """MovieLens-100K from either the GroupLens files or RecBole's atomic files."""
    if (folder / "ml-100k.inter").is_file():
        return recbole.load_ml100k_atomic(folder)
    if (folder / "u.data").is_file():
        return load_ml100k_raw(folder)
    raise DataError(
        f"{folder}: no MovieLens-100K files found: expected the GroupLens files u.data, u.item, "
        "u.user or RecBole's ml-100k.inter, ml-100k.item, ml-100k.user"
    )


def load_ml100k_raw(folder: Path) -> CanonicalTables:
    """GroupLens ML-100K: ``u.data`` (tab), ``u.item`` and ``u.user`` (``|``, latin-1)."""
    inter, inter_lines = read_delimited(
        require_file(folder, "u.data"),
        RATING_COLS,
        Format("\t", header=False),
        all_names=[c.name for c in RATING_COLS],
    )
    flags = [f"g{i}" for i in range(len(ML100K_GENRES))]
    item_names = ["item_id", "title", "release_date", "video_release_date", "imdb_url", *flags]
    raw_items, item_lines = read_delimited(
        require_file(folder, "u.item"),
        [Col("item_id", pa.int64()), Col("title"), Col("release_date"),
         *(Col(f, pa.int8()) for f in flags)],
        Format("|", header=False, encoding="latin-1"),
        all_names=item_names,
    )
    genres = [
        [g for g, flag in zip(ML100K_GENRES, row) if flag]
        for row in zip(*(raw_items.column(f).to_pylist() for f in flags))
    ]
    items = movie_items(
        raw_items, item_lines, pa.array(genres, pa.list_(pa.string())),
        fallback_year=year_at_end(raw_items.column("release_date")),
    )
    user_cols = [Col("user_id", pa.int64()), Col("age", pa.int32()), Col("gender"),
                 Col("occupation"), Col("zip")]
    raw_users, user_lines = read_delimited(
        require_file(folder, "u.user"),
        user_cols,
        Format("|", header=False, encoding="latin-1"),
        all_names=[c.name for c in user_cols],
    )
    users = ml_users(raw_users, user_lines)
    check_interactions(inter, inter_lines, ML_SCALE, items.column("item_id"), "u.item",
                       users.column("user_id"), "u.user")
    return finish(inter, items, users, str(folder))


def load_ml1m(folder: Path) -> CanonicalTables:
    """GroupLens ML-1M: ``ratings.dat``, ``movies.dat``, ``users.dat``, ``::``-separated."""
    inter, inter_lines = read_split_lines(require_file(folder, "ratings.dat"), "::", RATING_COLS)
    raw_items, item_lines = read_split_lines(
        require_file(folder, "movies.dat"), "::",
        [Col("item_id", pa.int64()), Col("title"), Col("genres")], encoding="latin-1",
    )
    items = movie_items(raw_items, item_lines, split_list(raw_items.column("genres"), "|"))
    raw_users, user_lines = read_split_lines(
        require_file(folder, "users.dat"), "::",
        [Col("user_id", pa.int64()), Col("gender"), Col("age", pa.int32()),
         Col("occupation_code", pa.int64()), Col("zip")],
        encoding="latin-1",
    )
    codes = raw_users.column("occupation_code")
    bad = pc.or_(pc.less(codes, 0), pc.greater_equal(codes, len(ML1M_OCCUPATIONS)))
    if pc.any(bad).as_py():
        row = pc.index(bad, True).as_py()
        raise DataError(
            f"{user_lines.at(row)}: occupation code {codes[row].as_py()} is not one of "
            f"0..{len(ML1M_OCCUPATIONS) - 1} (see the ML-1M README)"
        )
    occupation = pc.take(pa.array(ML1M_OCCUPATIONS), codes)
    users = ml_users(raw_users.append_column("occupation", occupation), user_lines)
    check_interactions(inter, inter_lines, ML_SCALE, items.column("item_id"), "movies.dat",
                       users.column("user_id"), "users.dat")
    return finish(inter, items, users, str(folder))


def load_ml25m(folder: Path) -> CanonicalTables:
    """GroupLens ML-25M: ``ratings.csv`` and ``movies.csv`` (no user file: users are ids only)."""
    ratings_path = require_file(folder, "ratings.csv")
    raw, inter_lines = read_delimited(
        ratings_path,
        [Col("userId", pa.int64()), Col("movieId", pa.int64()), Col("rating", pa.float32()),
         Col("timestamp", pa.int64())],
        Format(",", header=True, quoted=True),
    )
    inter = raw.rename_columns(["user_id", "item_id", "rating", "timestamp"])
    raw_items, item_lines = read_delimited(
        require_file(folder, "movies.csv"),
        [Col("movieId", pa.int64()), Col("title"), Col("genres")],
        Format(",", header=True, quoted=True),
    )
    raw_items = raw_items.rename_columns(["item_id", "title", "genres"])
    items = movie_items(
        raw_items, item_lines,
        split_list(raw_items.column("genres"), "|", drop=("(no genres listed)",)),
    )
    check_interactions(inter, inter_lines, ML25M_SCALE, items.column("item_id"), "movies.csv")
    user_ids = pc.unique(inter.column("user_id"))
    user_ids = pc.take(user_ids, pc.sort_indices(user_ids))
    n = len(user_ids)
    users = pa.table({
        "user_id": user_ids, "gender": nulls(n), "age": nulls(n, pa.int32()),
        "occupation": nulls(n), "zip": nulls(n), "location": nulls(n),
        "source_id": int_strings(user_ids),
    })
    return finish(inter, items, users, str(folder))
