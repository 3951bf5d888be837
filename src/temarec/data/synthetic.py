"""A generated two-domain world: the built-in default data of ``temarec quickstart``.

Latent genres are shared by both domains; every item belongs to one genre and its title is built from that
genre's vocabulary, so text (and tags mined from text) carries signal. Users prefer one or two genres and
their timestamped histories interleave both domains; with probability ``p_follow`` the next item follows
the previous one in a fixed per-genre order, which gives sequence models something to learn beyond
popularity. Everything is drawn from one seed. It is generated data, and every report says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from temarec.config import DataConfig
from temarec.data.dataset import leave_one_out, write_dataset

DOMAINS = ("Food", "Kitchen")
GENRES: dict[str, tuple[list[str], list[str]]] = {
    "italian": (["pasta", "basil", "parmesan", "olive oil", "tomato sauce", "risotto rice"],
                ["pasta maker", "pizza stone", "cheese grater", "espresso pot", "ravioli cutter", "garlic press"]),
    "baking": (["flour", "yeast", "vanilla extract", "cocoa powder", "sprinkles", "brown sugar"],
               ["mixing bowl", "cake pan", "rolling pin", "cookie sheet", "piping bag", "stand mixer"]),
    "tea": (["green tea", "oolong", "chamomile", "matcha", "earl grey", "herbal infusion"],
            ["teapot", "tea kettle", "infuser", "tea cups", "matcha whisk", "tea tin"]),
    "coffee": (["espresso beans", "dark roast", "cold brew", "decaf", "arabica", "coffee pods"],
               ["french press", "coffee grinder", "pour over dripper", "milk frother", "coffee mug", "moka pot"]),
    "asian": (["soy sauce", "ramen noodles", "jasmine rice", "sriracha", "miso paste", "sesame oil"],
              ["wok", "rice cooker", "bamboo steamer", "chopsticks", "sushi mat", "cleaver"]),
    "bbq": (["bbq sauce", "smoked paprika", "dry rub", "hickory chips", "hot sauce", "jerky"],
            ["grill brush", "meat thermometer", "smoker box", "tongs", "skewers", "cast iron skillet"]),
    "breakfast": (["oatmeal", "granola", "maple syrup", "pancake mix", "honey", "peanut butter"],
                  ["waffle iron", "toaster", "egg poacher", "griddle", "juicer", "cereal bowl"]),
    "healthy": (["quinoa", "chia seeds", "protein powder", "almonds", "kale chips", "coconut water"],
                ["blender", "salad spinner", "food scale", "meal prep containers", "spiralizer", "water bottle"]),
}
ADJECTIVES = ["organic", "premium", "classic", "deluxe", "family size", "gourmet", "everyday", "artisan",
              "stainless", "non-stick", "compact", "large", "value pack", "travel"]


def generate_world(n_users: int = 1500, items_per_genre: int = 60, min_len: int = 10, max_len: int = 24,
                   p_follow: float = 0.35, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Returns (items table, user timelines with internal idx) of the generated world."""
    rng = np.random.default_rng(seed)
    genres = list(GENRES)
    rows = []
    for d, domain in enumerate(DOMAINS):
        for g, genre in enumerate(genres):
            vocab = GENRES[genre][d]
            for k in range(items_per_genre):
                words = rng.choice(vocab, size=2, replace=False)
                title = f"{rng.choice(ADJECTIVES).title()} {words[0]} with {words[1]} no. {k + 1}"
                rows.append({"item": f"{domain[0]}{g:02d}{k:03d}", "domain": domain, "title": title,
                             "description": None,
                             "image": None, "genre": g})
    items = pd.DataFrame(rows)
    n_first = int((items["domain"] == DOMAINS[0]).sum())
    # items of (domain, genre) in their fixed "next item" order; popularity is Zipf-like within a genre
    by_dg = {(d, g): items.index[(items["domain"] == DOMAINS[d]) & (items["genre"] == g)].to_numpy()
             for d in (0, 1) for g in range(len(genres))}
    pop = 1.0 / np.arange(1, items_per_genre + 1) ** 0.8
    pop /= pop.sum()
    timelines = []
    for u in range(n_users):
        liked = rng.choice(len(genres), size=rng.integers(1, 3), replace=False)
        length = int(rng.integers(min_len, max_len + 1))
        t, seq, ts, prev = 1_600_000_000 + int(rng.integers(0, 10**7)), [], [], None
        while len(seq) < length or not _has_both(seq, n_first):
            d = int(rng.random() < 0.55)
            g = int(rng.choice(liked)) if rng.random() < 0.85 else int(rng.integers(len(genres)))
            pool = by_dg[(d, g)]
            if prev is not None and rng.random() < p_follow and items.at[prev, "genre"] == g:
                pos = (int(np.flatnonzero(by_dg[(int(prev >= n_first), g)] == prev)[0]) + 1) % items_per_genre
                item = int(pool[pos])
            else:
                item = int(rng.choice(pool, p=pop))
            t += int(rng.integers(3600, 30 * 86400))
            seq.append(item)
            ts.append(t)
            prev = item
        timelines.append((f"u{u:05d}", seq, ts))
    frame = pd.DataFrame(timelines, columns=["user", "items", "ts"])
    frame.attrs["n_first"] = n_first
    return items.drop(columns=["genre"]), frame


def _has_both(seq: list[int], n_first: int) -> bool:
    return any(i < n_first for i in seq) and any(i >= n_first for i in seq)


def write_synthetic(out: str | Path, cfg: DataConfig | None = None, overwrite: bool = False, **world_kw) -> Path:
    cfg = cfg or DataConfig()
    items, timelines = generate_world(**world_kw)
    train, valid, test = leave_one_out(timelines)
    return write_dataset(out, items=items, train=train, valid=valid, test=test, domains=DOMAINS,
                         train_source="leave_one_out", name="generated-world",
                         source={"format": "synthetic", "generated": True, "params": world_kw or "defaults"},
                         num_negatives=cfg.num_negatives, negative_seed=cfg.negative_seed, overwrite=overwrite)
