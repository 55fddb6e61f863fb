"""MovieLens-1M as sampled and split by Agent4Rec: 1,000 users, remapped ids, train/valid/test, no timestamps.

Interactions come from `cf_data/{train,valid,test}.txt` (one line per user: `user item item ...`), in that
order, so a user's `seq` puts train before valid before test. The split has no ratings; the real ratings
that exist are the up-to-25 per user in `raw_data/agg_top_25.csv`, given by movie title. Titles are matched
to remapped ids through `simulation/movie_detail.csv` (exact match: both files carry the same strings,
mis-encoded ones included, and all 22,924 match). A rating lands on the interaction row of its
(user, movie) pair. A rating whose pair is not in cf_data is counted and NOT added: cf_data is the
benchmark's definition of who saw what and of the split, and a row without a split would blur it (none
occur in the shared copy). An unmatched title is counted too.

Users: demographics from agg_top_25.csv (ML-1M's age bucket is kept as `age_group` text and as `age`, the
bucket's lower bound as ML-1M codes it: 1 for "Under 18"), the Agent4Rec taste profiles (the '|'-separated
sentences of `all_personas_like_modify.csv`, row i = user i, joined into one paragraph), and Agent4Rec's own
trait levels (1..3) as `a4r_activity`, `a4r_diversity`, `a4r_conformity`, to compare ours against.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

from alignuser_sim.config import DatasetConfig
from alignuser_sim.data.tables import Dataset, make_interactions, make_items
from alignuser_sim.errors import DataError
from alignuser_sim.paths import locate_dataset

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
_AGE_CODES = {"Under 18": 1, "18-24": 18, "25-34": 25, "35-44": 35, "45-49": 45, "50-55": 50, "56+": 56}
_GENDERS = {"male": "M", "female": "F", "m": "M", "f": "F"}


def _folder(cfg: DatasetConfig) -> Path:
    return locate_dataset("ml-1m-agent4rec", cfg.path)


def _files(folder: Path) -> dict[str, Path]:
    files = {split: folder / "cf_data" / f"{split}.txt" for split in SPLITS}
    files["movies"] = folder / "simulation" / "movie_detail.csv"
    files["ratings"] = folder / "raw_data" / "agg_top_25.csv"
    files["personas"] = folder / "simulation" / "all_personas_like_modify.csv"
    files["traits"] = folder / "simulation" / "user_statistic.csv"
    return files


def interactions_file(cfg: DatasetConfig) -> Path:
    return _folder(cfg) / "cf_data"


def sources(cfg: DatasetConfig) -> list[Path]:
    files = _files(_folder(cfg))
    for path in files.values():
        if not path.is_file():
            raise DataError(path, "file not found")
    return list(files.values())


def load(cfg: DatasetConfig) -> Dataset:
    folder = _folder(cfg)
    files = _files(folder)
    sources(cfg)
    skipped: Counter[str] = Counter()
    users, items, splits = _cf_data(files)
    items_table, title_to_id = _movies(files["movies"])
    demographics, ratings = _agg_ratings(files["ratings"], title_to_id, skipped)
    pairs = set(zip(users, items, strict=True))
    for pair in ratings.keys() - pairs:
        del ratings[pair]
        skipped["agg_top_25 rating for a (user, movie) not in cf_data (not added)"] += 1
    rating = [ratings.get(pair) for pair in zip(users, items, strict=True)]
    user_ids = list(dict.fromkeys(users))
    users_table = _users(user_ids, demographics, files["personas"], files["traits"], skipped)
    for reason, count in skipped.items():
        log.warning("%s: %s: %d", folder, reason, count)
    return Dataset(
        "ml-1m-agent4rec",
        make_interactions(users, items, rating=rating, split=splits),
        items_table,
        users_table,
        dict(skipped),
        source=str(folder),
    )


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            return list(reader.fieldnames or []), list(reader)
    except UnicodeDecodeError:
        raise DataError(path, "not UTF-8 text") from None
    except csv.Error as exc:
        raise DataError(path, f"cannot read as CSV ({exc})") from None


def _need(path: Path, header: list[str], *columns: str) -> None:
    if not header:
        raise DataError(path, "empty file")
    for column in columns:
        if column not in header:
            raise DataError(path, f"missing column '{column}' (found: {', '.join(header)})")


def _cf_data(files: dict[str, Path]) -> tuple[list[str], list[str], list[str]]:
    users: list[str] = []
    items: list[str] = []
    splits: list[str] = []
    for split in SPLITS:
        path = files[split]
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line_no, line in enumerate(handle, 1):
                tokens = line.split()
                if not tokens:
                    continue
                for token in tokens:
                    if not token.isdigit():
                        raise DataError(path, f"'{token}' is not an integer id", row=line_no)
                user = tokens[0]
                users.extend([user] * (len(tokens) - 1))
                items.extend(tokens[1:])
                splits.extend([split] * (len(tokens) - 1))
    return users, items, splits


def _movies(path: Path) -> tuple[pa.Table, dict[str, str]]:
    header, rows = _read_csv(path)
    _need(path, header, "movie_id", "title", "genres")
    ids, titles, genres, summaries, means = [], [], [], [], []
    title_to_id: dict[str, str] = {}
    for number, row in enumerate(rows, 1):
        movie = (row["movie_id"] or "").strip()
        if not movie:
            raise DataError(path, "missing movie_id", row=number, column="movie_id")
        title = (row["title"] or "").strip()
        ids.append(movie)
        titles.append(title or None)
        genres.append([g for g in (row["genres"] or "").split("|") if g])
        summaries.append((row.get("summary") or "").strip() or None)
        means.append(_float(path, number, "rating", row.get("rating")))
        title_to_id.setdefault(title, movie)
    table = make_items(ids, titles, genres, summaries, extra={"mean_rating": pa.array(means, pa.float32())})
    return table, title_to_id


def _float(path: Path, row: int, column: str, value: str | None) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        return float(value)
    except ValueError:
        raise DataError(path, f"cannot parse '{value}' as a number", row=row, column=column) from None


def _agg_ratings(
    path: Path, title_to_id: dict[str, str], skipped: Counter[str]
) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], float]]:
    """Demographics per user and the real ratings per (user, remapped movie id)."""
    header, rows = _read_csv(path)
    _need(path, header, "user_id", "movie_title_list", "rating_list")
    demographics: dict[str, dict[str, Any]] = {}
    ratings: dict[tuple[str, str], float] = {}
    for row in rows:
        user = (row["user_id"] or "").strip()
        if not user:
            skipped["agg_top_25 row without user_id"] += 1
            continue
        age_group = (row.get("age") or "").strip() or None
        demographics[user] = {
            "gender": _GENDERS.get((row.get("gender") or "").strip().lower()),
            "age": _AGE_CODES.get(age_group or ""),
            "age_group": age_group,
            "occupation": (row.get("occupation") or "").strip() or None,
            "zip": (row.get("zip-code") or row.get("zip") or "").strip() or None,
        }
        titles = [t.strip() for t in (row["movie_title_list"] or "").split(";")]
        values = [v.strip() for v in (row["rating_list"] or "").split(";")]
        if len(titles) != len(values):
            skipped["agg_top_25 row with title and rating lists of different lengths"] += 1
            continue
        for title, value in zip(titles, values, strict=True):
            if not title:
                continue
            movie = title_to_id.get(title)
            if movie is None:
                skipped["agg_top_25 rating of a title not in movie_detail.csv"] += 1
                continue
            try:
                rating = float(value)
            except ValueError:
                skipped["agg_top_25 rating that is not a number"] += 1
                continue
            if not 1.0 <= rating <= 5.0:
                skipped["agg_top_25 rating outside 1..5"] += 1
                continue
            ratings[(user, movie)] = rating
    return demographics, ratings


def _taste(text: str) -> str | None:
    parts = [p.strip() for p in (text or "").split("|")]
    return " ".join(p for p in parts if p) or None


def _users(
    user_ids: list[str],
    demographics: dict[str, dict[str, Any]],
    personas_path: Path,
    traits_path: Path,
    skipped: Counter[str],
) -> pa.Table:
    header, persona_rows = _read_csv(personas_path)
    _need(personas_path, header, "taste")
    taste = {str(i): _taste(row["taste"]) for i, row in enumerate(persona_rows)}  # row i is user i
    header, trait_rows = _read_csv(traits_path)
    _need(traits_path, header, "user_id", "activity", "diversity", "conformity")
    traits: dict[str, dict[str, int | None]] = {}
    for number, row in enumerate(trait_rows, 1):
        levels = {}
        for trait in ("activity", "diversity", "conformity"):
            value = (row[trait] or "").strip()
            if value and not value.isdigit():
                raise DataError(traits_path, f"cannot parse '{value}' as a level", row=number, column=trait)
            levels[trait] = int(value) if value else None
        traits[(row["user_id"] or "").strip()] = levels
    without = sum(1 for u in user_ids if u not in demographics)
    if without:
        skipped["user without an agg_top_25 row (kept, no demographics)"] += without
    columns: dict[str, pa.Array] = {"user_id": pa.array(user_ids, pa.string())}
    for name, kind in (
        ("gender", pa.string()),
        ("age", pa.int64()),
        ("age_group", pa.string()),
        ("occupation", pa.string()),
        ("zip", pa.string()),
    ):
        columns[name] = pa.array([demographics.get(u, {}).get(name) for u in user_ids], kind)
    columns["taste"] = pa.array([taste.get(u) for u in user_ids], pa.string())
    for trait in ("activity", "diversity", "conformity"):
        columns[f"a4r_{trait}"] = pa.array([traits.get(u, {}).get(trait) for u in user_ids], pa.int64())
    return pa.table(columns)
