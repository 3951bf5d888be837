"""Tiny tag-stage datasets shared by the tags tests (a plain module: test files import it by name)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

TITLES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "amazon-titles" / "food_kitchen_titles.tsv"

ITEMS = [
    ("F1", "Food", "Dark Chocolate Bar, 3.5 oz", "Organic cocoa, fair trade."),
    ("F2", "Food", "Green Tea Bags, 100 count", None),
    ("F3", "Food", "Whole Bean Coffee, Medium Roast", None),
    ("F4", "Food", "", None),  # no text: kept, never tagged
    ("F5", "Food", "Spicy Pasta Sauce", "Tomato and chili."),
    ("F6", "Food", "Chocolate Chip Cookies Snack Pack", None),
    ("K1", "Kitchen", "Chef Knife, 8 inch", "Stainless steel blade."),
    ("K2", "Kitchen", "Glass Food Storage Containers", None),
    ("K3", "Kitchen", "Ceramic Coffee Mug", None),
    ("K4", "Kitchen", None, None),  # no text
    ("K5", "Kitchen", "Nonstick Baking Sheet", None),
    ("K6", "Kitchen", "Tea Kettle, Stovetop", None),
]


def make_dataset(root: Path, rows=ITEMS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    items = pd.DataFrame(rows, columns=["item", "domain", "title", "description"])
    items["image"] = None
    items.to_parquet(root / "items.parquet", index=False)
    sizes = items["domain"].value_counts()
    (root / "manifest.json").write_text(json.dumps({"format_version": 1, "domains": ["Food", "Kitchen"],
                                                    "items": {d: int(sizes[d]) for d in ("Food", "Kitchen")}}))
    return root
