"""Each kind of bad raw input fails with a DataError naming the file and the line or column."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from fixtures_data import (
    AMAZON_META,
    AMAZON_REVIEWS,
    write_amazon,
    write_bookcrossing,
    write_lines,
    write_ml1m,
    write_ml25m,
    write_ml100k_atomic,
    write_ml100k_raw,
)

from distrec.data.loaders import load_dataset
from distrec.errors import DataError


def replace_line(path: Path, line: int, text: str, encoding: str = "utf-8") -> None:
    """Set 1-based ``line`` of ``path`` to ``text``."""
    lines = path.read_bytes().decode(encoding).splitlines()
    lines[line - 1] = text
    write_lines(path, lines, encoding)


def append_line(path: Path, text: str, encoding: str = "utf-8") -> None:
    path.write_bytes(path.read_bytes() + (text + "\n").encode(encoding))


def fails(name: str, folder: Path, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(name, folder)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_missing_file(tmp_path: Path) -> None:
    (write_ml100k_raw(tmp_path) / "u.item").unlink()
    fails("ml-100k", tmp_path, f"{tmp_path / 'u.item'}: file not found")


def test_recbole_header_without_rating(tmp_path: Path) -> None:
    inter = write_ml100k_atomic(tmp_path) / "ml-100k.inter"
    replace_line(inter, 1, "user_id:token\titem_id:token\tscore:float\ttimestamp:float")
    fails("ml-100k", tmp_path, "ml-100k.inter: line 1: missing column(s) ['rating']")


def test_csv_with_misnamed_column(tmp_path: Path) -> None:
    ratings = write_ml25m(tmp_path) / "ratings.csv"
    replace_line(ratings, 1, "userid,movieId,rating,timestamp")
    fails("ml-25m", tmp_path, "ratings.csv: line 1: missing column(s) ['userId']", "userid")


def test_non_numeric_rating(tmp_path: Path) -> None:
    replace_line(write_ml100k_raw(tmp_path) / "u.data", 2, "2\t10\tfive\t881250950")
    fails("ml-100k", tmp_path, "u.data: line 2: column 'rating': cannot read 'five'")


def test_non_numeric_id_in_double_colon_file(tmp_path: Path) -> None:
    replace_line(write_ml1m(tmp_path) / "ratings.dat", 3, "2::x1193::4::978298413")
    fails("ml-1m", tmp_path, "ratings.dat: line 3: column 'item_id': cannot read 'x1193'")


def test_nan_rating(tmp_path: Path) -> None:
    replace_line(write_ml25m(tmp_path) / "ratings.csv", 3, "1,11,NaN,1147868817")
    fails("ml-25m", tmp_path, "ratings.csv: line 3: rating is NaN")


def test_empty_rating(tmp_path: Path) -> None:
    replace_line(write_ml25m(tmp_path) / "ratings.csv", 4, "3,296,,1439474476")
    fails("ml-25m", tmp_path, "ratings.csv: line 4: column 'rating' is missing or empty")


def test_movielens_rating_out_of_range(tmp_path: Path) -> None:
    replace_line(write_ml1m(tmp_path) / "ratings.dat", 2, "1::661::6::978302109")
    fails("ml-1m", tmp_path, "ratings.dat: line 2: rating 6 is outside the scale 1..5")


def test_ml25m_rating_below_half_star(tmp_path: Path) -> None:
    replace_line(write_ml25m(tmp_path) / "ratings.csv", 2, "1,296,0.0,1147880044")
    fails("ml-25m", tmp_path, "ratings.csv: line 2: rating 0 is outside the scale 0.5..5")


def test_bookcrossing_rating_out_of_range(tmp_path: Path) -> None:
    replace_line(write_bookcrossing(tmp_path) / "BX-Book-Ratings.csv", 3,
                 '"276726";"0155061224";"11"')
    fails("bookcrossing", tmp_path,
          "BX-Book-Ratings.csv: line 3: rating 11 is outside the scale 0..10")


def test_amazon_rating_out_of_range(tmp_path: Path) -> None:
    reviews = [dict(r) for r in AMAZON_REVIEWS]
    reviews[1]["overall"] = 0.0
    write_amazon(tmp_path, reviews, AMAZON_META)
    fails("amazon", tmp_path,
          "Musical_Instruments.json.gz: line 2: rating 0 is outside the scale 1..5")


def test_amazon_review_missing_field(tmp_path: Path) -> None:
    reviews = [dict(r) for r in AMAZON_REVIEWS]
    del reviews[2]["unixReviewTime"]
    write_amazon(tmp_path, reviews, AMAZON_META)
    fails("amazon", tmp_path, "Musical_Instruments.json.gz: line 3: column 'unixReviewTime'")


def test_amazon_review_with_string_rating(tmp_path: Path) -> None:
    reviews = [dict(r) for r in AMAZON_REVIEWS]
    reviews[1]["overall"] = "five"
    write_amazon(tmp_path, reviews, AMAZON_META)
    fails("amazon", tmp_path, "Musical_Instruments.json.gz: line 2: field 'overall'")


def test_unknown_item_id(tmp_path: Path) -> None:
    append_line(write_ml100k_raw(tmp_path) / "u.data", "1\t99\t3\t881250960")
    fails("ml-100k", tmp_path, "u.data: line 5: item id 99 is not in u.item")


def test_unknown_user_id(tmp_path: Path) -> None:
    append_line(write_ml1m(tmp_path) / "ratings.dat", "7::661::3::978302109")
    fails("ml-1m", tmp_path, "ratings.dat: line 4: user id 7 is not in users.dat")


def test_amazon_review_of_unknown_asin(tmp_path: Path) -> None:
    reviews = [*AMAZON_REVIEWS, {"overall": 2.0, "reviewerID": "A1", "asin": "B0NOTTHERE",
                                 "unixReviewTime": 1}]
    write_amazon(tmp_path, reviews, AMAZON_META)
    fails("amazon", tmp_path, "Musical_Instruments.json.gz: line 5: asin 'B0NOTTHERE' is not in "
          "meta_Musical_Instruments.json.gz")


def test_truncated_tab_line(tmp_path: Path) -> None:
    replace_line(write_ml100k_raw(tmp_path) / "u.data", 3, "1\t20\t1")
    fails("ml-100k", tmp_path, "u.data: line 3: expected 4 fields, found 3")


def test_truncated_double_colon_line(tmp_path: Path) -> None:
    replace_line(write_ml1m(tmp_path) / "users.dat", 2, "2::M::56")
    fails("ml-1m", tmp_path, "users.dat: line 2: expected 5 fields", "found 3")


def test_truncated_json_gz(tmp_path: Path) -> None:
    reviews = [dict(AMAZON_REVIEWS[0], unixReviewTime=i, reviewText="x" * (i % 97))
               for i in range(3000)]
    path = write_amazon(tmp_path, reviews, AMAZON_META) / "Musical_Instruments.json.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    fails("amazon", tmp_path, f"{path}: truncated or corrupt gzip file")


def test_not_gzip(tmp_path: Path) -> None:
    path = write_amazon(tmp_path) / "meta_Musical_Instruments.json.gz"
    path.write_bytes(b"this is not gzip data\n")
    fails("amazon", tmp_path, f"{path}: truncated or corrupt gzip file")


def test_invalid_json_line(tmp_path: Path) -> None:
    path = write_amazon(tmp_path) / "Musical_Instruments.json.gz"
    with gzip.open(path, "ab") as fh:
        fh.write(b'{"overall": 5.0, "reviewerID": \n')
    fails("amazon", tmp_path, "Musical_Instruments.json.gz: line 5: not valid JSON")


def test_duplicate_interaction(tmp_path: Path) -> None:
    data = write_ml100k_raw(tmp_path) / "u.data"
    append_line(data, "1\t20\t2\t881250951")  # repeats line 3's (user, item, timestamp)
    fails("ml-100k", tmp_path, "u.data: line 5: duplicate interaction (user_id=1, item_id=20, ",
          "first seen at line 3")


def test_amazon_conflicting_repeat(tmp_path: Path) -> None:
    reviews = [*AMAZON_REVIEWS, dict(AMAZON_REVIEWS[1], overall=1.0)]
    write_amazon(tmp_path, reviews, AMAZON_META)
    # Line 4 (an exact repeat of line 3) is dropped; line numbers still follow the file.
    fails("amazon", tmp_path, "Musical_Instruments.json.gz: line 5: duplicate review",
          "first seen at line 2")


def test_duplicate_item_id(tmp_path: Path) -> None:
    append_line(write_ml1m(tmp_path) / "movies.dat", "661::Copy (1990)::Drama", "latin-1")
    fails("ml-1m", tmp_path, "movies.dat: line 4: duplicate item id", "first seen at line 2")


def test_ml1m_unknown_occupation_code(tmp_path: Path) -> None:
    replace_line(write_ml1m(tmp_path) / "users.dat", 1, "1::F::1::21::48067")
    fails("ml-1m", tmp_path, "users.dat: line 1: occupation code 21")


def test_recbole_fractional_timestamp(tmp_path: Path) -> None:
    replace_line(write_ml100k_atomic(tmp_path) / "ml-100k.inter", 3, "2\t10\t5\t881250950.5")
    fails("ml-100k", tmp_path, "ml-100k.inter: line 3: column 'timestamp'")


def test_latin1_file_read_as_utf8_is_reported(tmp_path: Path) -> None:
    movies = write_ml25m(tmp_path) / "movies.csv"
    append_line(movies, "5,Misérables (1995),Drama", "latin-1")
    fails("ml-25m", tmp_path, f"{movies}: cannot parse (is the file not utf8-encoded?)", "Row #5")


def test_amazon_folder_without_meta(tmp_path: Path) -> None:
    (write_amazon(tmp_path) / "meta_Musical_Instruments.json.gz").unlink()
    fails("amazon", tmp_path, "meta_<Category>.json.gz", "Musical_Instruments.json.gz")


def test_empty_ratings_file(tmp_path: Path) -> None:
    (write_ml1m(tmp_path) / "ratings.dat").write_bytes(b"")
    fails("ml-1m", tmp_path, "ratings.dat: no data rows")


def test_bookcrossing_bad_age(tmp_path: Path) -> None:
    replace_line(write_bookcrossing(tmp_path) / "BX-Users.csv", 3,
                 '"276726";"seattle, washington, usa";"thirty"', "latin-1")
    fails("bookcrossing", tmp_path, "BX-Users.csv: line 3: column 'Age': cannot read 'thirty'")
