"""alignuser_sim.store: a write is whole or absent; a failed one leaves the old file and no temporary."""

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
