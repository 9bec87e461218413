"""Write the README's example logs: a made-up tea shop (no real data), CSV files in this folder.

60 customers with text ids, 48 products in four categories, 24 ratings each over 2024 in
ISO-8601 or unix-second timestamps. A customer prefers one category and rates it higher, so a
model has something to learn. Deterministic (seed 7); run it again to rebuild the files.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
CATEGORIES = ["Green tea", "Black tea", "Teaware", "Herbal"]
ADJECTIVES = ["Misty", "Golden", "Quiet", "Smoky", "Bright", "Velvet", "Amber", "Jade", "Silver", "Ember", "Cloud", "River"]


def main() -> None:
    rng = np.random.default_rng(7)
    items = [{"item_id": f"SKU-{100 + i}", "title": f"{ADJECTIVES[i % 12]} {CATEGORIES[i // 12]} No. {i % 12 + 1}",
              "genres": CATEGORIES[i // 12] + ("|Gift" if i % 5 == 0 else ""), "brand": ["Kettle & Co", "Leafline", ""][i % 3]}
             for i in range(48)]
    users = [{"user_id": f"cust-{u:03d}", "gender": ["F", "M", ""][u % 3], "age": str(20 + (u * 7) % 45)}
             for u in range(60)]
    start = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc).timestamp()
    interactions = []
    for u in range(60):
        liked = u % 4
        picks = rng.choice(48, size=24, replace=False)
        times = np.sort(rng.integers(0, 365 * 86400, size=24)) + int(start)
        for i, t in zip(picks, times):
            rating = int(np.clip(np.round(rng.normal(4.2 if i // 12 == liked else 2.6, 0.8)), 1, 5))
            stamp = str(int(t)) if u % 2 else dt.datetime.fromtimestamp(int(t), dt.timezone.utc).isoformat()
            interactions.append({"user_id": f"cust-{u:03d}", "item_id": f"SKU-{100 + i}", "timestamp": stamp,
                                 "rating": rating})
    for name, rows in (("items", items), ("users", users), ("interactions", interactions)):
        with open(HERE / f"{name}.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
