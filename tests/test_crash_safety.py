"""Files after a crash: what a resume or a later run reads is whole, or is rebuilt with one warning line.

- Atomic writes use a temporary unique to the writer (two writers of one file never collide) and flush the
  file and its folder.
- The dataset cache writes `meta.json` atomically; a damaged cache file (JSON or Parquet) is rebuilt with one
  warning instead of a traceback; two first loads at once both succeed.
- `eval` and `compare` take their folder's lock: a second one on the same folder gets one clear line.
- A truncated event part is moved aside with one warning and its pages are redone by the resume.
- A damaged completion-cache page is a miss with one warning, not an exception on `get`.
- The ML-100K wheel is pinned by its sha256.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignuser_sim import store
from alignuser_sim.config import DatasetConfig, scenario_from_dict
from alignuser_sim.data import load_dataset
from alignuser_sim.errors import UserError

# --- atomic writes -------------------------------------------------------------------------------------------------


def test_two_writers_of_one_file_do_not_collide(tmp_path):
    target = tmp_path / "meta.json"
    with store.replacing(target) as first:
        first.write_text('{"writer": 1}')
        with store.replacing(target) as second:  # another process's first load, at the same moment
            assert second != first
            second.write_text('{"writer": 2}')
        assert first.exists()  # the other writer's rename took only its own temporary
    assert store.read_json(target) == {"writer": 1}  # the last rename wins, whole
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]  # no temporary left behind


def test_many_writers_at_once_all_succeed(tmp_path):
    target = tmp_path / "shared.json"
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(20):
                store.write_json(target, {"writer": n, "i": i})
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and set(store.read_json(target)) == {"writer", "i"}
    assert not list(tmp_path.glob("*.tmp"))


def test_writes_flush_file_and_folder(tmp_path, monkeypatch):
    synced: list[bool] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store.write_text(tmp_path / "a.txt", "x")
    assert synced == [False, True]  # the file's bytes, then the folder's rename


# --- the dataset cache ---------------------------------------------------------------------------------------------


@pytest.fixture
def generic_cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNUSER_SIM_HOME", str(tmp_path / "home"))
    (tmp_path / "inter.csv").write_text("user_id,item_id,rating,ts\nu1,i1,4,1000\nu1,i2,3,1001\nu2,i2,5,1002\n")
    return DatasetConfig(name="generic", interactions=tmp_path / "inter.csv")


def cache_folder(tmp_path: Path) -> Path:
    (folder,) = (tmp_path / "home" / "datasets").glob("generic-*")
    return folder


def test_meta_json_is_written_atomically(generic_cfg, tmp_path, monkeypatch):
    first = load_dataset(generic_cfg)
    meta = cache_folder(tmp_path) / "meta.json"
    meta.unlink()
    real = Path.write_text

    def crash_midway(self, text, *args, **kwargs):  # a process killed half-way through the write
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        first.save(cache_folder(tmp_path))
    monkeypatch.undo()
    assert not meta.exists()  # never half a meta.json under the real name


@pytest.mark.parametrize("damage", ["meta.json", "interactions.parquet", "items.parquet"])
def test_damaged_cache_is_rebuilt_with_one_warning(generic_cfg, tmp_path, caplog, damage):
    first = load_dataset(generic_cfg)
    path = cache_folder(tmp_path) / damage
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])  # truncated
    with caplog.at_level(logging.WARNING, logger="alignuser_sim.data.loaders"):
        again = load_dataset(generic_cfg)
    assert again.interactions.equals(first.interactions) and again.items.equals(first.items)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "damaged dataset cache" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()
    caplog.clear()
    load_dataset(generic_cfg)  # rebuilt: read from the cache again, no warning
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_two_first_loads_at_once_both_succeed(generic_cfg):
    results: list = []
    errors: list[BaseException] = []

    def load() -> None:
        try:
            results.append(load_dataset(generic_cfg))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4
    assert all(r.interactions.equals(results[0].interactions) for r in results)


# --- eval and compare folders ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command,folder_type,lock_file", [
    ("eval", store.EvalFolder, ".eval.lock"),
    ("compare", store.CompareFolder, ".compare.lock"),
])
def test_second_eval_or_compare_on_one_folder_is_one_line(tmp_path, command, folder_type, lock_file):
    scenario = tmp_path / "s.yaml"
    scenario.write_text(f"dataset: {{name: ml-100k}}\noutput_dir: {tmp_path}\n")
    folder = tmp_path / "out"
    cli = Path(sys.executable).parent / "alignuser-sim"
    with folder_type(folder).lock():  # the first command, still working
        done = subprocess.run([str(cli), command, str(scenario), "--out", str(folder)], capture_output=True,
                              text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and f"another `alignuser-sim {command}` is working in this folder" in lines[0], lines
    assert (folder / lock_file).exists() and not folder_type(folder).exists()  # nothing else was written


# --- a truncated event part ---------------------------------------------------------------------------------------


def test_truncated_part_is_moved_aside_and_its_keys_are_free_again(tmp_path, caplog):
    schema = pa.schema([pa.field("k", pa.int64()), pa.field("v", pa.string())])
    table = store.PartTable(tmp_path, "rows", schema, ["k"])
    table.extend([{"k": 1, "v": "a"}, {"k": 2, "v": "b"}])
    table.flush()
    table.extend([{"k": 3, "v": "c"}, {"k": 4, "v": "d"}])
    table.flush()
    bad = store.part_files(tmp_path / "rows")[-1]
    bad.write_bytes(bad.read_bytes()[:40])  # a crash (or a disk) cut it short
    resumed = store.PartTable(tmp_path, "rows", schema, ["k"])
    with caplog.at_level(logging.WARNING, logger="alignuser_sim.store.files"):
        on_disk = resumed.load()
    assert on_disk["k"].to_pylist() == [1, 2]
    assert len(caplog.records) == 1 and "unreadable part" in caplog.records[0].getMessage()
    assert not bad.exists() and bad.with_name(bad.name + ".corrupt").exists()
    assert resumed.extend([{"k": 3, "v": "c"}, {"k": 1, "v": "x"}]) == [{"k": 3, "v": "c"}]  # 3 is redone


def test_resume_redoes_the_pages_of_a_truncated_part(tmp_path):
    from alignuser_sim.simulation.events import EVENTS
    from alignuser_sim.simulation.runs import plan_run, resume_plan, run_local
    from alignuser_sim.testing.fake_llm import ScriptedLLM
    from alignuser_sim.testing.fake_users import fake_user_responder

    scenario = scenario_from_dict({
        "seed": 3, "dataset": {"name": "ml-100k"}, "population": {"size": 12},
        "recommender": {"algorithm": "pop"}, "pages": {"count": 3, "items_per_page": 4},
        "output_dir": str(tmp_path),
    })
    whole = plan_run(scenario, tmp_path / "whole", n_shards=2)
    full = asyncio.run(run_local(whole, ScriptedLLM(fake_user_responder)))
    part = plan_run(scenario, tmp_path / "part", n_shards=2)
    part.run_id = whole.run_id
    asyncio.run(run_local(part, ScriptedLLM(fake_user_responder)))
    events_dir = tmp_path / "part" / "events"
    done = pq.read_table(tmp_path / "part" / "events.parquet").to_pylist()
    for p in events_dir.glob("part-*.parquet"):
        p.unlink()
    (tmp_path / "part" / "events.parquet").unlink()
    # what a killed driver left: the page-0 part whole, the page-1 part cut short
    page0 = [r for r in done if r["page"] == 0]
    pq.write_table(pa.Table.from_pylist(page0, schema=EVENTS), events_dir / "part-killed-000001.parquet")
    cut = events_dir / "part-killed-000002.parquet"
    pq.write_table(pa.Table.from_pylist([r for r in done if r["page"] == 1], schema=EVENTS), cut)
    cut.write_bytes(cut.read_bytes()[:100])
    resumed_plan = resume_plan(tmp_path / "part")
    resumed_plan.run_id = whole.run_id
    llm = ScriptedLLM(fake_user_responder)
    resumed = asyncio.run(run_local(resumed_plan, llm))
    assert len(llm.requests) == full["decisions"] - len(page0)  # the cut part's pages were decided again
    a = pq.read_table(tmp_path / "whole" / "events.parquet").drop(["wall_time", "latency_s", "shard"])
    b = pq.read_table(tmp_path / "part" / "events.parquet").drop(["wall_time", "latency_s", "shard"])
    assert a.equals(b) and resumed["decisions"] == full["decisions"]


# --- the completion cache -----------------------------------------------------------------------------------------


def test_damaged_completion_cache_page_is_a_miss_with_one_warning(tmp_path, caplog):
    from alignuser_sim.llm.cache import CacheEntry, CompletionCache

    path = tmp_path / "c.sqlite"
    cache = CompletionCache(path)
    for i in range(300):
        cache.put(f"k{i:04d}", CacheEntry("x" * 500, "stop", 1, 2, 1, "m"))
    cache.close()
    size = path.stat().st_size
    with open(path, "r+b") as fh:  # every page but the first two (header, schema) and the last
        for page in range(2, size // 4096 - 1):
            fh.seek(page * 4096)
            fh.write(b"\xff" * 4096)
    cache = CompletionCache(path)
    with caplog.at_level(logging.WARNING, logger="alignuser_sim.llm.cache"):
        got = [cache.get(f"k{i:04d}") for i in range(300)]
        stored = cache.put("new", CacheEntry("y", "stop", 1, 1, 1, "m"))
    assert got.count(None) > 0 and cache.damaged > 0 and stored.raw == "y"
    assert len(caplog.records) == 1 and "damaged completion cache" in caplog.records[0].getMessage()
    cache.close()


# --- the ML-100K wheel ---------------------------------------------------------------------------------------------


def test_ml100k_wheel_is_hash_pinned(tmp_path, monkeypatch):
    from alignuser_sim.data import ml100k

    assert len(ml100k.RECBOLE_SHA256) == 64
    wheel = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    wheel.write_bytes(b"not the wheel")
    with pytest.raises(UserError, match=r"^recbole-1.2.1-py3-none-any.whl: sha256 [0-9a-f]{64} is not the pinned"):
        ml100k.check_wheel(wheel)
    commands = []

    def fake_run(command, **kwargs):
        commands.append(command)
        folder = Path(command[command.index("-d") + 1])
        (folder / wheel.name).write_bytes(b"tampered")

        class Done:
            returncode, stdout, stderr = 0, "", ""
        return Done()

    monkeypatch.setenv("ALIGNUSER_SIM_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(ml100k.subprocess, "run", fake_run)
    with pytest.raises(UserError, match="is not the pinned"):
        ml100k.fetch(force=True)
    assert "--require-hashes" in commands[0]  # pip checks the hash too
    pins = Path(commands[0][commands[0].index("-r") + 1])
    assert not (tmp_path / "home" / "downloads" / "ml-100k" / "ml-100k.inter").exists()
    assert not pins.exists()  # the temporary folder is gone
