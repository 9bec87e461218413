"""Canonical Arrow schemas shared by every loader and every later stage.

A loader turns a dataset's official raw files into three tables:

- ``interactions``: one row per rating/review.
  ``user_id:int64, item_id:int64, rating:float32, timestamp:int64`` (unix seconds;
  datasets without time, e.g. BookCrossing, get a documented deterministic order instead).
- ``items``: one row per item. ``item_id:int64, title:string, categories:list<string>,
  year:int32?, author:string?, publisher:string?, source_id:string`` (the raw key: a
  MovieLens id, an ISBN or an ASIN).
- ``users``: one row per user. ``user_id:int64, gender:string?, age:int32?,
  occupation:string?, zip:string?, location:string?, source_id:string``.

Datasets keyed by strings (ISBN, ASIN, BookCrossing user ids are ints already) get int64 ids
assigned in sorted order of the raw key, so ids are deterministic.

Prepared samples (see ``distrec.data.samples``):

- CTR: ``sample_id:int64, user_id, item_id, rating, timestamp, label:int8,
  history_item_ids:list<int64>, history_ratings:list<float32>`` — history in time order,
  oldest first.
- Generative: ``sample_id, user_id, item_id, timestamp, history_item_ids`` (≤ 10, oldest first).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from distrec.errors import DataError

INTERACTIONS = pa.schema(
    [
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("rating", pa.float32()),
        ("timestamp", pa.int64()),
    ]
)

ITEMS = pa.schema(
    [
        ("item_id", pa.int64()),
        ("title", pa.string()),
        ("categories", pa.list_(pa.string())),
        ("year", pa.int32()),
        ("author", pa.string()),
        ("publisher", pa.string()),
        ("source_id", pa.string()),
    ]
)

USERS = pa.schema(
    [
        ("user_id", pa.int64()),
        ("gender", pa.string()),
        ("age", pa.int32()),
        ("occupation", pa.string()),
        ("zip", pa.string()),
        ("location", pa.string()),
        ("source_id", pa.string()),
    ]
)

CTR_SAMPLES = pa.schema(
    [
        ("sample_id", pa.int64()),
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("rating", pa.float32()),
        ("timestamp", pa.int64()),
        ("label", pa.int8()),
        ("history_item_ids", pa.list_(pa.int64())),
        ("history_ratings", pa.list_(pa.float32())),
    ]
)

GENERATIVE_SAMPLES = pa.schema(
    [
        ("sample_id", pa.int64()),
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("timestamp", pa.int64()),
        ("history_item_ids", pa.list_(pa.int64())),
    ]
)


@dataclass(frozen=True)
class CanonicalTables:
    """The three canonical tables of one dataset, plus where they came from."""

    interactions: pa.Table
    items: pa.Table
    users: pa.Table
    source: str  # human-readable origin, e.g. the raw folder path

    def validate(self) -> "CanonicalTables":
        """Check schemas and referential integrity; raise DataError naming the problem."""
        for name, table, schema in (
            ("interactions", self.interactions, INTERACTIONS),
            ("items", self.items, ITEMS),
            ("users", self.users, USERS),
        ):
            conform(table, schema, f"{self.source} [{name}]")
        if self.interactions.num_rows == 0:
            raise DataError(f"{self.source}: no interactions")
        import pyarrow.compute as pc

        known_items = self.items.column("item_id")
        unknown = pc.invert(pc.is_in(self.interactions.column("item_id"), value_set=known_items))
        if pc.any(unknown).as_py():
            row = pc.index(unknown, True).as_py()
            bad = self.interactions.column("item_id")[row].as_py()
            raise DataError(
                f"{self.source}: interaction row {row} references unknown item_id {bad} "
                "(not in the items table)"
            )
        if self.users.num_rows:
            known_users = self.users.column("user_id")
            unknown = pc.invert(pc.is_in(self.interactions.column("user_id"), value_set=known_users))
            if pc.any(unknown).as_py():
                row = pc.index(unknown, True).as_py()
                bad = self.interactions.column("user_id")[row].as_py()
                raise DataError(
                    f"{self.source}: interaction row {row} references unknown user_id {bad} "
                    "(not in the users table)"
                )
        return self


def conform(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    """Return ``table`` with exactly ``schema``'s columns, in order, cast safely.

    Raises DataError naming ``where`` and the column when a column is missing or cannot be
    cast (a wrong dtype). Extra columns are dropped.
    """
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {missing}; found {table.column_names}"
        )
    cols = []
    for field in schema:
        col = table.column(field.name)
        if not col.type.equals(field.type):
            try:
                col = col.cast(field.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise DataError(
                    f"{where}: column '{field.name}' has type {col.type}, expected {field.type}: {exc}"
                ) from None
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema)
