"""Malformed data files: each must give ONE exact line naming the file (and row, column) and exit code 2.

The files are tiny: some are committed under tests/data/bad/ (so the CLI's tests can reuse them), the rest are
written here into tmp_path. Everything goes through `load_dataset`, the path a user's run takes.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignuser_sim.config import DatasetConfig
from alignuser_sim.data import load_dataset
from alignuser_sim.errors import DataError, UserError

BAD = Path(__file__).parent / "data" / "bad"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNUSER_SIM_HOME", str(tmp_path / "home"))


def expect(message: str, **dataset) -> DataError:
    with pytest.raises(DataError) as info:
        load_dataset(DatasetConfig(**dataset), refresh=True)
    assert str(info.value) == message
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    return info.value


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


# --- generic CSV ----------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    expect(f"{path}: file not found", name="generic", interactions=path)


def test_empty_file() -> None:
    path = BAD / "empty.csv"
    expect(f"{path}: empty file", name="generic", interactions=path)


def test_header_only(tmp_path: Path) -> None:
    path = write(tmp_path / "inter.csv", "user_id,item_id,rating\n")
    expect(f"{path}: no data rows (only a header)", name="generic", interactions=path)


def test_missing_mapped_column(tmp_path: Path) -> None:
    path = write(tmp_path / "inter.csv", "user,item_id,rating\nu1,i1,4\n")
    expect(
        f"{path}: missing column 'user_id' (mapped from 'uid'; found: user, item_id, rating)",
        name="generic",
        interactions=path,
        columns={"user_id": "uid"},
    )


def test_missing_column(tmp_path: Path) -> None:
    path = write(tmp_path / "inter.csv", "user_id,rating\nu1,4\n")
    expect(f"{path}: missing column 'item_id' (found: user_id, rating)", name="generic", interactions=path)


def test_unparsable_rating() -> None:
    path = BAD / "bad_rating.csv"
    message = f"{path}: row 2: column 'rating': cannot parse 'abc' as a number"
    error = expect(message, name="generic", interactions=path)
    assert (error.row, error.column) == (2, "rating")


def test_unparsable_rating_names_the_source_column(tmp_path: Path) -> None:
    path = write(tmp_path / "inter.csv", "user_id,item_id,stars\nu1,i1,4\nu2,i1,4.5\nu3,i1,four\n")
    expect(
        f"{path}: row 3: column 'stars': cannot parse 'four' as a number",
        name="generic",
        interactions=path,
        columns={"rating": "stars"},
    )


def test_rating_out_of_range(tmp_path: Path) -> None:
    path = write(tmp_path / "inter.csv", "user_id,item_id,rating\nu1,i1,4\nu2,i1,7\n")
    expect(f"{path}: row 2: column 'rating': rating 7.0 outside 1..5", name="generic", interactions=path)


def test_bad_timestamp() -> None:
    path = BAD / "bad_timestamp.csv"
    expect(
        f"{path}: row 3: column 'ts': cannot parse 'yesterday' as a timestamp "
        "(a number of seconds since 1970)",
        name="generic",
        interactions=path,
    )


def test_milliseconds_read_as_seconds(tmp_path: Path) -> None:
    path = write(tmp_path / "inter.csv", "user_id,item_id,ts\nu1,i1,1602813575301\n")
    expect(
        f"{path}: row 1: column 'ts': timestamp 1602813575301 is beyond the year 3000; "
        "if the file holds milliseconds set dataset.timestamp_unit: ms",
        name="generic",
        interactions=path,
    )


def test_unknown_item_names_the_source_row() -> None:
    """Row 1 has no user id and is dropped; the unknown item is still reported at its row in the file, 3."""
    folder = BAD / "unknown_item"
    expect(
        f"{folder / 'interactions.csv'}: row 3: unknown item 'i9' (not in items.csv)",
        name="generic",
        interactions=folder / "interactions.csv",
        items=folder / "items.csv",
    )


def test_wrong_number_of_fields() -> None:
    path = BAD / "wrong_fields.csv"
    expect(f"{path}: line 3: expected 4 fields, found 5", name="generic", interactions=path)


def test_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path / "inter.csv", b"user_id,item_id\nu1,i1\nu\xe92,i2\n")
    expect(f"{path}: line 3: not UTF-8 text", name="generic", interactions=path)


def test_quote_left_open(tmp_path: Path) -> None:
    path = write(tmp_path / "inter.csv", 'user_id,item_id\nu1,i1\nu2,"i2\nu3,i3\n')
    expect(
        f"{path}: row 2: column 'item_id': id 'i2\\nu3,i3' spans lines (a quote left open?)",
        name="generic",
        interactions=path,
    )


def test_duplicate_header_column(tmp_path: Path) -> None:
    path = write(tmp_path / "inter.csv", "user_id,item_id,rating,rating\nu1,i1,4,5\n")
    expect(f"{path}: column 'rating' appears twice in the header", name="generic", interactions=path)


def test_duplicate_item_in_items_file(tmp_path: Path) -> None:
    inter = write(tmp_path / "inter.csv", "user_id,item_id\nu1,i1\n")
    items = write(tmp_path / "items.csv", "item_id,title\ni1,A\ni2,B\ni1,C\n")
    message = f"{items}: row 3: duplicate item 'i1' (first at row 1)"
    expect(message, name="generic", interactions=inter, items=items)


def test_duplicate_user_in_users_file(tmp_path: Path) -> None:
    inter = write(tmp_path / "inter.csv", "user_id,item_id\nu1,i1\n")
    users = write(tmp_path / "users.csv", "user_id,age\nu1,30\nu1,31\n")
    message = f"{users}: row 2: duplicate user 'u1' (first at row 1)"
    expect(message, name="generic", interactions=inter, users=users)


def test_unknown_file_type(tmp_path: Path) -> None:
    path = write(tmp_path / "inter.xlsx", "not a spreadsheet")
    message = f"{path}: unknown file type '.xlsx' (expected .csv, .tsv or .parquet)"
    expect(message, name="generic", interactions=path)


# --- generic Parquet ------------------------------------------------------------------------------------


def test_damaged_parquet(tmp_path: Path) -> None:
    path = write(tmp_path / "inter.parquet", b"PAR1 this is not really parquet")
    expect(f"{path}: not a Parquet file, or a damaged one", name="generic", interactions=path)


def test_parquet_text_rating(tmp_path: Path) -> None:
    path = tmp_path / "inter.parquet"
    pq.write_table(pa.table({"user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "rating": ["4", "abc"]}), path)
    message = f"{path}: row 2: column 'rating': cannot parse 'abc' as a number"
    expect(message, name="generic", interactions=path)


def test_parquet_float_ids(tmp_path: Path) -> None:
    path = tmp_path / "inter.parquet"
    pq.write_table(pa.table({"user_id": [1.0, 2.0], "item_id": ["i1", "i2"]}), path)
    message = f"{path}: column 'user_id': ids must be text or integers, not double"
    expect(message, name="generic", interactions=path)


# --- Amazon Books -----------------------------------------------------------------------------------------


def test_amazon_malformed_json_line() -> None:
    path = BAD / "amazon_broken.jsonl"
    message = f"{path}: row 2: invalid JSON: Expecting ',' delimiter (column 48)"
    expect(message, name="amazon-books", path=path)


def _review(**fields) -> dict:
    return {"ParentASIN": "B1", "Rating": 4.0, "Timestamp": 1602813575301, "ItemName": "One", **fields}


def test_amazon_unparsable_rating(tmp_path: Path) -> None:
    line = json.dumps({"UserID": "A1", "ReviewList": [_review(), _review(ParentASIN="B2", Rating="five")]})
    path = write(tmp_path / "books.jsonl", line + "\n")
    message = f"{path}: row 1: column 'Rating': review 2: cannot parse 'five' as a number"
    expect(message, name="amazon-books", path=path)


def test_amazon_review_list_not_a_list(tmp_path: Path) -> None:
    lines = '{"UserID": "A1", "ReviewList": []}\n{"UserID": "A2", "ReviewList": 3}\n'
    path = write(tmp_path / "books.jsonl", lines)
    expect(f"{path}: row 2: ReviewList must be a list of reviews", name="amazon-books", path=path)


def test_amazon_blank_file(tmp_path: Path) -> None:
    path = write(tmp_path / "books.jsonl", "\n\n")
    expect(f"{path}: empty file", name="amazon-books", path=path)


def test_amazon_review_without_rating_is_skipped_and_counted(tmp_path: Path) -> None:
    reviews = [_review(), _review(ParentASIN="B2", Rating=None), _review(ParentASIN="B3")]
    reviews[2].pop("Timestamp")
    path = write(tmp_path / "books.jsonl", json.dumps({"UserID": "A1", "ReviewList": reviews}) + "\n")
    ds = load_dataset(DatasetConfig(name="amazon-books", path=path), refresh=True)
    assert ds.interactions["item_id"].to_pylist() == ["B1", "B3"]
    assert ds.interactions["ts"].to_pylist() == [1602813575, None]
    assert ds.skipped == {"review without rating": 1, "review without timestamp (kept, ts null)": 1}


# --- MovieLens-100K atomic files, ML-1M Agent4Rec and Steam layouts --------------------------------------


def _ml100k_folder(tmp_path: Path, inter: str) -> Path:
    headers = {
        "inter": "user_id:token item_id:token rating:float timestamp:float",
        "item": "item_id:token movie_title:token_seq release_year:token class:token_seq",
        "user": "user_id:token age:token gender:token occupation:token zip_code:token",
    }
    for part, header in headers.items():
        rows = inter if part == "inter" else ""
        write(tmp_path / f"ml-100k.{part}", header.replace(" ", "\t") + "\n" + rows)
    return tmp_path


def test_ml100k_unparsable_rating(tmp_path: Path) -> None:
    folder = _ml100k_folder(tmp_path, "1\t1\t3\t881250949\n2\t1\tx\t881250950\n")
    message = f"{folder / 'ml-100k.inter'}: row 2: column 'rating': cannot parse 'x' as a number"
    expect(message, name="ml-100k", path=folder)


def test_ml100k_short_row(tmp_path: Path) -> None:
    folder = _ml100k_folder(tmp_path, "1\t1\t3\n")
    message = f"{folder / 'ml-100k.inter'}: row 1: expected 4 tab-separated fields, found 3"
    expect(message, name="ml-100k", path=folder)


def test_ml100k_download_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No index reachable (here: none allowed) -> a UserError saying what failed and how to get around it."""
    links = tmp_path / "no-wheels"
    links.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    with pytest.raises(UserError) as info:
        load_dataset(DatasetConfig(name="ml-100k"))
    dest = tmp_path / "home" / "downloads" / "ml-100k"
    assert str(info.value) == (
        "could not download MovieLens-100K: 'pip download recbole==1.2.1' failed "
        "(ERROR: No matching distribution found for recbole==1.2.1); check the network, "
        f"or put the RecBole atomic files ml-100k.inter, .item and .user in {dest}"
    )
    assert info.value.exit_code == 2


def _ml1m_copy(tmp_path: Path, shared_datasets: Path) -> Path:
    """The shared ML-1M folder by symlinks, with cf_data/ real files we can break."""
    source, folder = shared_datasets / "ml-1m-agent4rec", tmp_path / "ml1m"
    (folder / "cf_data").mkdir(parents=True)
    for sub in ("raw_data", "simulation"):
        (folder / sub).symlink_to(source / sub)
    for split in ("train", "valid", "test"):
        shutil.copy(source / "cf_data" / f"{split}.txt", folder / "cf_data" / f"{split}.txt")
    return folder


def test_ml1m_bad_item_id(tmp_path: Path, shared_datasets: Path) -> None:
    folder = _ml1m_copy(tmp_path, shared_datasets)
    write(folder / "cf_data" / "valid.txt", "0 1 2\n1 x12 3\n")
    message = f"{folder / 'cf_data' / 'valid.txt'}: row 2: 'x12' is not an integer id"
    expect(message, name="ml-1m-agent4rec", path=folder)


def test_ml1m_missing_file(tmp_path: Path, shared_datasets: Path) -> None:
    folder = _ml1m_copy(tmp_path, shared_datasets)
    (folder / "cf_data" / "test.txt").unlink()
    expect(f"{folder / 'cf_data' / 'test.txt'}: file not found", name="ml-1m-agent4rec", path=folder)


def test_steam_missing_column(tmp_path: Path) -> None:
    reviews = write(tmp_path / "user_reviews.csv", "user_id,item_id,recommend\nu1,10,True\n")
    write(tmp_path / "steam_games.json.gz", b"")
    message = f"{reviews}: missing column 'posted' (found: user_id, item_id, recommend)"
    expect(message, name="steam", path=tmp_path)


def test_steam_games_not_gzip(tmp_path: Path) -> None:
    write(tmp_path / "user_reviews.csv", 'user_id,posted,item_id\nu1,"Posted May 1, 2014.",10\n')
    games = write(tmp_path / "steam_games.json.gz", '{"id": "10", "title": "Counter-Strike"}\n')
    expect(f"{games}: not a readable gzip file (Not a gzipped file (b'{{\"'))", name="steam", path=tmp_path)


def test_steam_games_unreadable(tmp_path: Path) -> None:
    write(tmp_path / "user_reviews.csv", 'user_id,posted,item_id\nu1,"Posted May 1, 2014.",10\n')
    games = tmp_path / "steam_games.json.gz"
    with gzip.open(games, "wt") as handle:
        handle.write("{'id': '10', 'title': 'Counter-Strike'}\n")  # a Python repr, not JSON
    expect(
        f"{games}: row 1: invalid JSON: Expecting property name enclosed in double quotes (column 2)",
        name="steam",
        path=tmp_path,
    )
