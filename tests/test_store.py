"""alignuser_sim.store: whole-or-absent writes, keyed part tables, folder locks, claims and run folders."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignuser_sim import store


def test_writes_replace_the_file_whole(tmp_path):
    path = tmp_path / "plan.json"
    store.write_json(path, {"a": 1})
    store.write_json(path, {"a": 2, "where": tmp_path}, default=str)
    assert json.loads(path.read_text()) == {"a": 2, "where": str(tmp_path)}
    store.write_text(tmp_path / "report.md", "héllo\n")
    assert (tmp_path / "report.md").read_text(encoding="utf-8") == "héllo\n"
    store.write_parquet(pa.table({"x": [1, 2]}), tmp_path / "t.parquet")
    assert pq.read_table(tmp_path / "t.parquet")["x"].to_pylist() == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json", "report.md", "t.parquet"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    store.write_json(path, {"old": True})
    with pytest.raises(TypeError):
        store.write_json(path, {"new": object()})  # not JSON: fails before anything is renamed
    with pytest.raises(RuntimeError), store.replacing(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


SCHEMA = pa.schema([pa.field("k", pa.string(), nullable=False), pa.field("v", pa.int32(), nullable=False)])


def test_a_part_table_keeps_the_first_row_per_key_across_writers_and_restarts(tmp_path):
    one = store.PartTable(tmp_path, "rows", SCHEMA, ["k"], flush_s=3600)
    assert one.extend([{"k": "a", "v": 1}, {"k": "b", "v": 1}, {"k": "a", "v": 9}]) == [
        {"k": "a", "v": 1}, {"k": "b", "v": 1}]
    assert one.duplicates == 1 and one.read().num_rows == 0  # buffered, not written yet
    one.flush()
    two = store.PartTable(tmp_path, "rows", SCHEMA, ["k"], flush_events=1)  # a second writer: its own parts
    two.add({"k": "a", "v": 2})  # it has not loaded the keys: written, and the older row wins on reading
    assert len(store.part_files(tmp_path / "rows")) == 2
    assert two.read().to_pylist() == [{"k": "a", "v": 1}, {"k": "b", "v": 1}]
    resumed = store.PartTable(tmp_path, "rows", SCHEMA, ["k"])
    assert resumed.load().num_rows == 2 and not resumed.add({"k": "b", "v": 3}) and resumed.add({"k": "c", "v": 3})
    assert [r["k"] for r in resumed.finalize().to_pylist()] == ["a", "b", "c"]
    assert not store.part_files(tmp_path / "rows")  # merged into rows.parquet
    assert pq.read_table(tmp_path / "rows.parquet").num_rows == 3
    assert store.read_parts(tmp_path, "rows", SCHEMA, ["k"]).num_rows == 3


def test_a_folder_lock_excludes_a_second_holder_until_released(tmp_path):
    from alignuser_sim.errors import UserError

    held = store.FolderLock(tmp_path / "f", ".lock")
    second = store.FolderLock(tmp_path / "f", ".lock", wait_s=0.3, busy="busy here")
    with held, pytest.raises(UserError, match="busy here"), second:
        pass
    with store.FolderLock(tmp_path / "f", ".lock"):  # released on exit
        pass


def test_a_claimed_folder_refuses_another_setup(tmp_path):
    from alignuser_sim.errors import UserError

    path = tmp_path / "plan.json"
    assert store.claim(path, {"seed": 1}, "an evaluation") == {}
    store.write_json(path, {"fingerprint": {"seed": 1}, "users": ["u"]})
    assert store.claim(path, {"seed": 1}, "an evaluation")["users"] == ["u"]
    with pytest.raises(UserError, match=r"holds an evaluation of another setup \(differs in: seed\)"):
        store.claim(path, {"seed": 2}, "an evaluation")


def test_a_run_folder_names_its_files_and_reads_its_status(tmp_path):
    run = store.RunFolder(tmp_path / "run")
    assert run.status() == "absent" and run.meta() == {} and not run.is_complete()
    run.path.mkdir()
    run.write_meta({"run_id": "x", "shards": {"0": ["u1"], "1": ["u2"]}, "status": "running"})
    assert run.status() == "running" and run.shards() == {0: ["u1"], 1: ["u2"]}
    run.update_meta(status="complete")
    assert run.status() == "complete" and run.meta()["run_id"] == "x" and not run.is_complete()  # no events yet
    assert (run.meta_path.name, run.events.name, run.stats.name, run.scenario.name) == (
        "run.json", "events.parquet", "stats.json", "scenario.yaml")
