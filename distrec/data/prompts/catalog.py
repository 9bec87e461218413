"""Item titles and user profile sentences, looked up by id while prompts are built.

Built once per dataset from the canonical ``items`` / ``users`` tables
(:mod:`distrec.data.schema`) and passed, read-only, to every prompt builder. It holds plain
dicts only, so it pickles cheaply into Ray Data workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import pyarrow as pa

from distrec.data.titles import display_titles
from distrec.errors import DataError

# Occupation values that carry no information (MovieLens "none"/"other" and the like).
_UNKNOWN_OCCUPATIONS = frozenset({"", "none", "other", "other or not specified", "unknown", "n/a"})
_GENDER_WORDS = {"m": "male", "male": "male", "f": "female", "female": "female"}

# ML-1M stores an age bucket code, not an age (ML-1M README).
ML1M_AGE_LABELS: Mapping[int, str] = {
    1: "under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+",
}
# Per dataset (names as in ``distrec.data.loaders``): (item noun, age bucket labels).
_DATASET_TEXT: Mapping[str, tuple[str, Optional[Mapping[int, str]]]] = {
    "ml-100k": ("movie", None),
    "ml-1m": ("movie", ML1M_AGE_LABELS),
    "ml-25m": ("movie", None),
    "bookcrossing": ("book", None),
    "amazon": ("item", None),
    "amazon2023": ("item", None),
}


@dataclass(frozen=True)
class Catalog:
    """Id -> text lookups for one dataset.

    ``titles``: item_id -> the text that stands for the item in prompts and responses
    (:func:`distrec.data.titles.display_titles`). ``profiles``: user_id -> the profile
    sentence (already rendered, "" when nothing is known). ``item_noun``: how items are called in prompts
    ("item", "movie", "book"); the plural adds an "s".
    """

    titles: Mapping[int, str]
    profiles: Mapping[int, str] = field(default_factory=dict)
    item_noun: str = "item"

    @classmethod
    def for_dataset(
        cls, dataset: str, items: pa.Table, users: Optional[pa.Table] = None
    ) -> "Catalog":
        """:meth:`from_tables` with the dataset's item noun and age rendering."""
        noun, age_labels = _DATASET_TEXT.get(dataset, ("item", None))
        return cls.from_tables(items, users, item_noun=noun, age_labels=age_labels)

    @classmethod
    def from_tables(
        cls,
        items: pa.Table,
        users: Optional[pa.Table] = None,
        item_noun: str = "item",
        age_labels: Optional[Mapping[int, str]] = None,
    ) -> "Catalog":
        """Build from the canonical tables; ``users`` may be absent or empty (Amazon).

        Titles are :func:`distrec.data.titles.display_titles`: one normal form, and colliding
        titles told apart by year or maker ("Cape Fear (1962)"); DataError naming the item
        when a title is empty. ``age_labels``: when ages are bucket codes (ML-1M), code ->
        label ("18-24").
        """
        titles = display_titles(items)
        profiles: dict[int, str] = {}
        if users is not None and users.num_rows:
            for row in users.to_pylist():
                age = row.get("age")
                profiles[int(row["user_id"])] = profile_sentence(
                    gender=row.get("gender"),
                    age=age,
                    age_label=age_labels.get(age) if age_labels and age is not None else None,
                    occupation=row.get("occupation"),
                    location=row.get("location"),
                )
        return cls(titles=titles, profiles=profiles, item_noun=item_noun)

    def title(self, item_id: int) -> str:
        """The item's title; DataError naming the id when the catalog lacks it."""
        try:
            return self.titles[int(item_id)]
        except KeyError:
            raise DataError(
                f"unknown item_id {int(item_id)}: not in the items table this catalog was built "
                f"from ({len(self.titles)} items)"
            ) from None

    def profile_sentence(self, user_id: int) -> str:
        """The user's profile sentence, or "" when the users table says nothing about them."""
        return self.profiles.get(int(user_id), "")

    @property
    def item_plural(self) -> str:
        return self.item_noun + "s"


def _clean(value: object) -> Optional[str]:
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text or None


def _article(phrase: str) -> str:
    """'a' or 'an' before a word or an age: "an 18-year-old", "an 8-year-old", "a male"."""
    number = phrase.split("-", 1)[0]
    if number.isdigit():
        return "an" if number.startswith("8") or number in ("11", "18") else "a"
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def profile_sentence(
    gender: Optional[str] = None,
    age: Optional[int] = None,
    occupation: Optional[str] = None,
    location: Optional[str] = None,
    age_label: Optional[str] = None,
) -> str:
    """One sentence describing the user from whatever is known; "" when nothing is.

    MovieLens style (gender/age/occupation):
    ``"The user is a 24-year-old male whose occupation is technician."``
    BookCrossing style (location/age): ``"The user is 24 years old and lives in porto, portugal."``
    ``age_label`` (a bucket such as "18-24") replaces the exact age:
    ``"The user is a male aged 18-24 whose occupation is programmer."``
    """
    gender_word = _GENDER_WORDS.get((_clean(gender) or "").lower())
    occ = _clean(occupation)
    if occ is not None and occ.lower() in _UNKNOWN_OCCUPATIONS:
        occ = None
    loc = _clean(location)
    age_label = _clean(age_label)
    age_ok = age_label is None and age is not None and int(age) > 0

    if gender_word or occ:
        noun = gender_word or "person"
        if age_label:
            desc = f"{noun} aged {age_label}"
        else:
            desc = f"{int(age)}-year-old {noun}" if age_ok else noun
        text = f"The user is {_article(desc)} {desc}"
        if occ:
            text += f" whose occupation is {occ}"
            return text + (f" and who lives in {loc}." if loc else ".")
        return text + (f" and lives in {loc}." if loc else ".")
    if age_ok or age_label:
        age_text = f"aged {age_label}" if age_label else f"{int(age)} years old"
        return f"The user is {age_text}" + (f" and lives in {loc}." if loc else ".")
    if loc:
        return f"The user lives in {loc}."
    return ""
