"""Amazon Reviews 2023 (Books), 100 users x 30 reviews, as processed by ECPO (one JSON object per user).

Each line is `{"UserID": ..., "ReviewList": [review, ...]}`; a review carries the book's metadata with it.
A book reviewed by several users repeats that metadata, and its `Description` (an LLM-written summary) is
re-generated per review, so the texts differ; the first one read is kept, which makes the table depend only
on the file's order. The top-level category "Books" is on every book and says nothing, so it is dropped
from `genres`. Ratings are 1-5 stars, timestamps milliseconds (stored as seconds).

A line that is not JSON, or does not have the structure above, makes the file unusable (DataError naming the
line). A single review that lacks its rating or book id is dropped and counted.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

from alignuser_sim.config import DatasetConfig
from alignuser_sim.data.tables import Dataset, make_interactions, make_items
from alignuser_sim.errors import DataError
from alignuser_sim.paths import locate_dataset

log = logging.getLogger(__name__)

FILE_NAME = "books_100users_reviews.jsonl"
_PRICE = re.compile(r"^(?:from\s+)?\$?(\d+(?:\.\d+)?)$")


def interactions_file(cfg: DatasetConfig) -> Path:
    """`dataset.path` may name the folder (the shared layout) or the .jsonl file itself."""
    where = locate_dataset("amazon-books", cfg.path)
    return where if where.is_file() else where / FILE_NAME


def sources(cfg: DatasetConfig) -> list[Path]:
    path = interactions_file(cfg)
    if not path.is_file():
        raise DataError(path, "file not found")
    return [path]


def load(cfg: DatasetConfig) -> Dataset:
    path = sources(cfg)[0]
    skipped: Counter[str] = Counter()
    users: list[str] = []
    inter: dict[str, list[Any]] = {"user_id": [], "item_id": [], "rating": [], "ts": []}
    books: dict[str, dict[str, Any]] = {}
    lines = 0
    for line_no, record in _records(path):
        lines += 1
        user = record.get("UserID")
        if not isinstance(user, str | int) or str(user).strip() == "":
            skipped["line without UserID (its reviews dropped)"] += 1
            continue
        user = str(user).strip()
        users.append(user)
        reviews = record.get("ReviewList")
        if not isinstance(reviews, list):
            raise DataError(path, "ReviewList must be a list of reviews", row=line_no)
        for number, review in enumerate(reviews, 1):
            if not isinstance(review, dict):
                raise DataError(path, f"review {number}: must be a JSON object", row=line_no)
            item = review.get("ParentASIN")
            if not isinstance(item, str) or not item.strip():
                skipped["review without ParentASIN"] += 1
                continue
            rating = _rating(path, line_no, number, review.get("Rating"))
            if rating is None:
                skipped["review without rating"] += 1
                continue
            item = item.strip()
            inter["user_id"].append(user)
            inter["item_id"].append(item)
            inter["rating"].append(rating)
            inter["ts"].append(_seconds(path, line_no, number, review.get("Timestamp"), skipped))
            books.setdefault(item, review)
    if not lines:
        raise DataError(path, "empty file")
    for reason, count in skipped.items():
        log.warning("%s: %s: %d", path, reason, count)
    return Dataset(
        "amazon-books",
        make_interactions(**inter),
        _items(books),
        pa.table({"user_id": pa.array(list(dict.fromkeys(users)), pa.string())}),
        dict(skipped),
        source=str(path),
    )


def _records(path: Path):
    """(line number, object) per non-blank line; bad UTF-8 or bad JSON is a DataError naming the line."""
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(path, "not UTF-8 text", row=line_no) from None
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", row=line_no) from None
            if not isinstance(record, dict):
                raise DataError(path, "expected a JSON object with UserID and ReviewList", row=line_no)
            yield line_no, record


def _number(value: Any) -> float | None:
    """A JSON number or numeric text as float; None when it is neither (bools are not numbers here)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _rating(path: Path, line_no: int, number: int, value: Any) -> float | None:
    if value is None or value == "":
        return None
    rating = _number(value)
    if rating is None:
        message = f"review {number}: cannot parse {value!r} as a number"
        raise DataError(path, message, row=line_no, column="Rating")
    if not 0.5 <= rating <= 5.0:
        raise DataError(path, f"review {number}: rating {rating} outside 1..5", row=line_no, column="Rating")
    return rating


def _seconds(path: Path, line_no: int, number: int, value: Any, skipped: Counter[str]) -> int | None:
    if value is None or value == "":
        skipped["review without timestamp (kept, ts null)"] += 1
        return None
    millis = _number(value)
    if millis is None:
        message = f"review {number}: cannot parse {value!r} as a timestamp in ms"
        raise DataError(path, message, row=line_no, column="Timestamp")
    return int(millis // 1000)


def _price(value: Any) -> float | None:
    """Prices are numbers, or text such as 'from 10.63' (a range's low end) and '—' (unknown)."""
    number = _number(value)
    if number is not None:
        return number
    match = _PRICE.match(value.strip()) if isinstance(value, str) else None
    return float(match.group(1)) if match else None


def _text(value: Any) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


def _items(books: dict[str, dict[str, Any]]) -> pa.Table:
    ids = list(books)
    reviews = [books[i] for i in ids]
    genres = []
    for review in reviews:
        categories = review.get("Categories")
        categories = categories if isinstance(categories, list) else []
        names = [c.strip() for c in categories if isinstance(c, str)]
        genres.append([c for c in names if c and c != "Books"])
    counts = [review.get("RatingCount") for review in reviews]
    counts = [c if isinstance(c, int) and not isinstance(c, bool) else None for c in counts]
    return make_items(
        ids,
        [_text(r.get("ItemName")) for r in reviews],
        genres,
        [_text(r.get("Description")) for r in reviews],
        extra={
            "author": pa.array([_text(r.get("AuthorName")) for r in reviews], pa.string()),
            "average_rating": pa.array([_number(r.get("AverageRating")) for r in reviews], pa.float32()),
            "rating_count": pa.array(counts, pa.int64()),
            "price": pa.array([_price(r.get("Price")) for r in reviews], pa.float32()),
        },
    )
