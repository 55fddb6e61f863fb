"""McAuley's Australian Steam users: reviews (who reviewed which game, when) and the games' metadata.

Decisions, from looking at the data:
- Steam has no star ratings, only a recommend flag, so `rating` stays null and the flag goes into
  `liked`. A review with `recommend=False` is still an interaction (the user owned and played the game,
  then wrote about it): a consumed item the user disliked.
- `posted` is "Posted November 5, 2011." or, for reviews from the crawl's own year, "Posted March 3." with
  no year. The cleaned file's `Año` column repeats the year where there is one and holds the placeholder
  2024 where there is none, so a yearless review takes `Año` only when it is not 2024; otherwise it is kept
  with ts null and counted as undated (in this file every yearless row has the placeholder: 10,119 rows).
  Times are midnight UTC of the posting day.
- The same review appears more than once (874 exact repeats in this file): the first copy is kept.
- `steam_games.json.gz` is one pandas-dumped record per line, with bare `NaN` for missing values. Python's
  json module reads the bare constant through a hook (nothing is eval'd); NaN becomes None. Three quarters
  of the lines are all-NaN placeholder records: they are ignored like blank lines. A record whose `id` is
  NaN takes the id from its store URL (`/app/<id>`) when it has one (here that one repeats another record).
- The items table holds the reviewed games only (the catalogue the users act on, not 32k store pages).
  A reviewed game without a record keeps its interactions, with title null and genres [], and is counted.
"""

from __future__ import annotations

import calendar
import csv
import gzip
import json
import logging
import re
import zlib
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from alignuser_sim.config import DatasetConfig
from alignuser_sim.data.tables import Dataset, make_interactions, make_items
from alignuser_sim.errors import DataError
from alignuser_sim.paths import locate_dataset

log = logging.getLogger(__name__)

REVIEWS = "user_reviews.csv"
GAMES = "steam_games.json.gz"
UNDATED_YEAR = "2024"  # what the cleaned file's `Año` holds for reviews whose `posted` has no year
_MONTHS = {name: number for number, name in enumerate(calendar.month_name) if name}
_POSTED = re.compile(r"^\s*Posted\s+([A-Za-z]+)\s+(\d{1,2})(?:st|nd|rd|th)?(?:,\s*(\d{4}))?\s*\.?\s*$")
_APP_URL = re.compile(r"/app/(\d+)")


def _folder(cfg: DatasetConfig) -> Path:
    return locate_dataset("steam", cfg.path)


def interactions_file(cfg: DatasetConfig) -> Path:
    return _folder(cfg) / REVIEWS


def sources(cfg: DatasetConfig) -> list[Path]:
    folder = _folder(cfg)
    files = [folder / REVIEWS, folder / GAMES]
    for path in files:
        if not path.is_file():
            raise DataError(path, "file not found")
    return files


def load(cfg: DatasetConfig) -> Dataset:
    reviews_path, games_path = sources(cfg)
    skipped: Counter[str] = Counter()
    inter = _reviews(reviews_path, skipped)
    games = _games(games_path, skipped)
    items = _items(list(dict.fromkeys(inter["item_id"])), games, skipped)
    users = pa.table({"user_id": pa.array(list(dict.fromkeys(inter["user_id"])), pa.string())})
    for reason, count in skipped.items():
        log.warning("%s: %s: %d", reviews_path.parent, reason, count)
    folder = str(reviews_path.parent)
    return Dataset("steam", make_interactions(**inter), items, users, dict(skipped), source=folder)


# --- reviews ---------------------------------------------------------------------------------------------


def posted_seconds(posted: str, year_column: str | None) -> tuple[int | None, str | None]:
    """(epoch seconds at 00:00 UTC, None) or (None, why not) for one `posted` text."""
    match = _POSTED.match(posted or "")
    if not match:
        return None, "unreadable posted date (kept, ts null)"
    month_name, day, year = match.groups()
    month = _MONTHS.get(month_name.capitalize())
    if month is None:
        return None, "unreadable posted date (kept, ts null)"
    if year is None:
        year_column = (year_column or "").strip()
        if not year_column.isdigit() or year_column == UNDATED_YEAR:
            return None, "undated review (kept, ts null)"
        year = year_column
    try:
        when = datetime(int(year), month, int(day), tzinfo=UTC)
    except ValueError:
        return None, "unreadable posted date (kept, ts null)"
    return int(when.timestamp()), None


def _recommend(value: str | None) -> bool | None:
    """Steam's only dislike signal: `recommend` False. Anything else unreadable stays unknown."""
    text = (value or "").strip().lower()
    return True if text == "true" else False if text == "false" else None


def _reviews(path: Path, skipped: Counter[str]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {"user_id": [], "item_id": [], "ts": [], "liked": []}
    seen: set[tuple[str, str]] = set()
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames
            if not header:
                raise DataError(path, "empty file")
            for column in ("user_id", "item_id", "posted"):
                if column not in header:
                    raise DataError(path, f"missing column '{column}' (found: {', '.join(header)})")
            year_column = "Año" if "Año" in header else None
            for row in reader:
                user, item = (row.get("user_id") or "").strip(), (row.get("item_id") or "").strip()
                if not user or not item:
                    skipped["row without id"] += 1
                    continue
                if (user, item) in seen:
                    skipped["repeated review of the same game by the same user (dropped)"] += 1
                    continue
                seen.add((user, item))
                year = row.get(year_column) if year_column else None
                ts, why = posted_seconds(row.get("posted") or "", year)
                if why:
                    skipped[why] += 1
                out["user_id"].append(user)
                out["item_id"].append(item)
                out["ts"].append(ts)
                out["liked"].append(_recommend(row.get("recommend")))
    except UnicodeDecodeError:
        raise DataError(path, "not UTF-8 text") from None
    except csv.Error as exc:
        raise DataError(path, f"cannot read as CSV ({exc})") from None
    return out


# --- games -----------------------------------------------------------------------------------------------


def _missing(constant: str) -> None:
    """json's hook for the bare constants NaN/Infinity a pandas dump writes: all of them mean "missing"."""
    return None


def _game_id(record: dict[str, Any]) -> str | None:
    game_id = record.get("id")
    if isinstance(game_id, str | int) and not isinstance(game_id, bool) and str(game_id).strip():
        return str(game_id).strip()
    match = _APP_URL.search(record.get("url") or "")
    return match.group(1) if match else None


def _games(path: Path, skipped: Counter[str]) -> dict[str, dict[str, Any]]:
    games: dict[str, dict[str, Any]] = {}
    first_error: tuple[int, str] | None = None
    placeholders: set[str] = set()
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, 1):
                if not line.strip() or line in placeholders:
                    continue
                try:
                    record = json.loads(line, parse_constant=_missing)  # NaN -> None; nothing is eval'd
                except json.JSONDecodeError as exc:
                    first_error = first_error or (line_no, f"invalid JSON: {exc.msg} (column {exc.colno})")
                    skipped["unreadable game record"] += 1
                    continue
                if not isinstance(record, dict) or all(v is None for v in record.values()):
                    placeholders.add(line)  # all-NaN lines of the pandas dump: identical text, parsed once
                    continue
                game_id = _game_id(record)
                if game_id is None:
                    skipped["game record without id"] += 1
                elif game_id in games:
                    skipped["repeated game record (first kept)"] += 1
                else:
                    games[game_id] = record
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(path, f"not a readable gzip file ({exc})") from None
    except UnicodeDecodeError:
        raise DataError(path, "not UTF-8 text") from None
    if not games and first_error:
        raise DataError(path, first_error[1], row=first_error[0])
    return games


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v.strip() for v in value if isinstance(v, str) and v.strip()]


def _text(value: Any) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


def _price(value: Any) -> float | None:
    """Prices are numbers, or text: 'Free', 'Free to Play' (0.0) and store-button labels (unknown)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in ("free", "free to play"):
        return 0.0
    return None


def _items(item_ids: list[str], games: dict[str, dict[str, Any]], skipped: Counter[str]) -> pa.Table:
    records = [games.get(i) or {} for i in item_ids]
    missing = sum(1 for i in item_ids if i not in games)
    if missing:
        skipped["reviewed game without metadata (kept, title null)"] += missing
    early = [r.get("early_access") for r in records]
    return make_items(
        item_ids,
        [_text(r.get("title")) or _text(r.get("app_name")) for r in records],
        [_strings(r.get("genres")) for r in records],
        None,
        extra={
            "tags": pa.array([_strings(r.get("tags")) for r in records], pa.list_(pa.string())),
            "developer": pa.array([_text(r.get("developer")) for r in records], pa.string()),
            "publisher": pa.array([_text(r.get("publisher")) for r in records], pa.string()),
            "release_date": pa.array([_text(r.get("release_date")) for r in records], pa.string()),
            "price": pa.array([_price(r.get("price")) for r in records], pa.float32()),
            "early_access": pa.array([e if isinstance(e, bool) else None for e in early], pa.bool_()),
        },
    )
