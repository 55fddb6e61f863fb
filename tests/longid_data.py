"""A synthetic Amazon-like dataset for the generic loader: ten-character ASIN-like item ids and five-level
category paths as genres (each level a genre, as Amazon's category lists load), long product titles.

`write_longid_dataset(folder, long_ids=False)` writes the same dataset with short ids ("0007"), so a test can
check that nothing learning asks or answers grows with the ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PLATFORMS = ["PC", "PlayStation 4", "Nintendo Switch", "Xbox One"]
KINDS = [("Accessories", "Gaming Mice", "Wireless"), ("Accessories", "Headsets", "Surround Sound"),
         ("Games", "Role-Playing", "Open World"), ("Games", "Strategy", "Real-Time Strategy")]
BRANDS = ["Logitech", "Razer", "SteelSeries", "Corsair", "Bandai Namco", "Ubisoft"]


def item_id(n: int, long_ids: bool) -> str:
    return f"B0{n:08d}" if long_ids else f"{n:04d}"


def write_longid_dataset(folder: Path, long_ids: bool = True, users: int = 12, items: int = 96,
                         per_user: int = 30, seed: int = 3) -> dict:
    """Write interactions.csv and items.parquet; return the scenario's `dataset:` section."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cluster = [n % (len(PLATFORMS) * len(KINDS)) for n in range(items)]
    genres, titles = [], []
    for n in range(items):
        platform, (kind, sub, leaf) = PLATFORMS[cluster[n] % len(PLATFORMS)], KINDS[cluster[n] // len(PLATFORMS)]
        genres.append(["Video Games", platform, kind, sub, leaf])
        titles.append(f"{BRANDS[n % len(BRANDS)]} {leaf} {sub} for {platform}, Edition {n} with Extra Content")
    rows = []
    for u in range(users):
        liked = {c for c in range(len(PLATFORMS) * len(KINDS)) if c % 4 == u % 4}
        pool = rng.permutation(items)
        chosen = [i for i in pool if cluster[i] in liked][: int(per_user * 0.7)]
        chosen += [i for i in pool if cluster[i] not in liked][: per_user - len(chosen)]
        ts = 1_500_000_000 + u * 1000
        for j, i in enumerate(rng.permutation(chosen)):
            ts += 600 if j % 6 else 3 * 86400  # sessions of six
            rating = int(rng.integers(4, 6)) if cluster[i] in liked else int(rng.integers(1, 4))
            rows.append((f"A{u:03d}", item_id(int(i), long_ids), rating, ts))
    inter = folder / "interactions.csv"
    inter.write_text("user_id,item_id,rating,ts\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows))
    pq.write_table(pa.table({"item_id": [item_id(n, long_ids) for n in range(items)], "title": titles,
                             "genres": pa.array(genres, pa.list_(pa.string()))}), folder / "items.parquet")
    return {"name": "generic", "interactions": str(inter), "items": str(folder / "items.parquet")}
