"""Every loader, on a few rows written in its official format, gives exactly the expected tables."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures_data import (
    AMAZON_META,
    AMAZON_REVIEWS,
    EXPECTED,
    WRITERS,
    write_amazon,
    write_bookcrossing,
    write_lines,
    write_ml100k_atomic,
    write_ml100k_raw,
)

from distrec.data import schema
from distrec.data.loaders import DATASETS, dropped_rows, label_rule, load_dataset
from distrec.errors import DataError


def assert_tables(tables: schema.CanonicalTables, expected: dict) -> None:
    assert tables.interactions.schema.equals(schema.INTERACTIONS, check_metadata=False)
    assert tables.items.schema.equals(schema.ITEMS)
    assert tables.users.schema.equals(schema.USERS)
    assert tables.interactions.to_pylist() == expected["interactions"]
    assert tables.items.to_pylist() == expected["items"]
    assert tables.users.to_pylist() == expected["users"]


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_loader_reads_official_format(name: str, tmp_path: Path) -> None:
    folder = WRITERS[name](tmp_path / name)
    assert_tables(load_dataset(name, folder), EXPECTED[name])


def test_ml100k_recbole_atomic_files_equal_grouplens_files(tmp_path: Path) -> None:
    folder = write_ml100k_atomic(tmp_path / "recbole")
    assert_tables(load_dataset("ml-100k", folder), EXPECTED["ml-100k"])


def test_ml100k_recbole_odd_release_year_falls_back_to_title(tmp_path: Path) -> None:
    # The real ml-100k.item has "Land Before Time III: ... (1995)" with release_year "V".
    folder = write_ml100k_atomic(tmp_path / "recbole")
    item = folder / "ml-100k.item"
    item.write_text(item.read_text() + "50\tLand Before Time III (1995)\tV\tAnimation\n")
    items = load_dataset("ml-100k", folder).items.to_pylist()
    assert items[-1]["title"] == "Land Before Time III"
    assert items[-1]["year"] == 1995


def test_rerating_an_item_at_another_time_is_not_a_duplicate(tmp_path: Path) -> None:
    folder = write_ml100k_raw(tmp_path)
    with open(folder / "u.data", "a") as fh:
        fh.write("1\t10\t2\t891250949\n")
    assert load_dataset("ml-100k", folder).interactions.num_rows == 5


def test_ml100k_without_any_known_files_names_both_layouts(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="u.data.*ml-100k.inter"):
        load_dataset("ml-100k", tmp_path)


def test_bookcrossing_counts_ratings_of_missing_isbns(tmp_path: Path) -> None:
    tables = load_dataset("bookcrossing", write_bookcrossing(tmp_path))
    assert dropped_rows(tables) == {"ratings of ISBNs missing from BX-Books.csv": 1}


def test_bookcrossing_skips_and_counts_malformed_book_lines(tmp_path: Path) -> None:
    folder = write_bookcrossing(tmp_path)
    books = folder / "BX-Books.csv"
    # A line of the official file broken by an escaped quote: 7 fields instead of 8.
    broken = '"0789466953";"DK Readers (Level 4)\\";James Buckley";"2000";"DK";"s";"m";"l"\n'
    books.write_bytes(books.read_bytes() + broken.encode("latin-1"))
    tables = load_dataset("bookcrossing", folder)
    assert tables.items.num_rows == 3
    assert dropped_rows(tables)["BX-Books.csv lines with a wrong number of fields"] == 1


def test_amazon_counts_repeats(tmp_path: Path) -> None:
    tables = load_dataset("amazon", write_amazon(tmp_path))
    assert dropped_rows(tables) == {
        "exact repeats of an earlier review in Musical_Instruments.json.gz": 1,
        "repeated asin records in meta_Musical_Instruments.json.gz (first kept)": 1,
    }


def test_amazon_meta_with_varying_field_types_still_loads(tmp_path: Path) -> None:
    # Arrow rejects a field whose JSON type changes between lines; the fallback coerces it.
    meta = [dict(m) for m in AMAZON_META]
    meta[3]["category"] = "Musical Instruments"
    meta[1]["brand"] = ["Shure"]
    tables = load_dataset("amazon", write_amazon(tmp_path, AMAZON_REVIEWS, meta))
    expected = [dict(i) for i in EXPECTED["amazon"]["items"]]
    expected[2]["publisher"] = None
    assert tables.items.to_pylist() == expected


def test_ml25m_reads_half_stars_and_large_ids(tmp_path: Path) -> None:
    folder = tmp_path
    write_lines(folder / "ratings.csv",
                ["userId,movieId,rating,timestamp", "162541,209171,4.5,1240953372"])
    write_lines(folder / "movies.csv", [
        "movieId,title,genres", "209171,Women of Devil's Island (1962),Action|Adventure|Drama",
    ])
    tables = load_dataset("ml-25m", folder)
    assert tables.interactions.to_pylist() == [
        {"user_id": 162541, "item_id": 209171, "rating": 4.5, "timestamp": 1240953372}
    ]


def test_label_rules() -> None:
    assert {n: label_rule(n) for n in DATASETS if n != "custom"} == {
        "ml-100k": 4.0, "ml-1m": 4.0, "ml-25m": 3.5, "bookcrossing": 5.0, "amazon": 4.0, "amazon2023": 4.0,
    }


def test_unknown_dataset_name_lists_valid_names_and_suggests(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"valid names: ml-100k, ml-1m.*Did you mean 'ml-1m'"):
        load_dataset("ml1m", tmp_path)
    with pytest.raises(DataError, match="Did you mean 'bookcrossing'"):
        label_rule("book-crossing")


def test_path_must_be_a_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("ml-1m", tmp_path / "nope")
