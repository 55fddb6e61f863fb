"""The driver SIGKILLed mid-run, then `alignuser-sim run --resume`: no event lost or duplicated, and the
same events and statistics as an uninterrupted run (the scripted user answers like a completion cache)."""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml

from alignuser_sim.testing.fake_users import fake_user_server

pytestmark = pytest.mark.timeout(600)
COMPARED = ["agent_id", "session", "page", "items", "watched", "ratings", "feelings", "thought", "action", "failure"]


def cli(*args, **kwargs):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "-m", "alignuser_sim.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    with fake_user_server(delay_s=0.4) as server:
        scenario = {
            "seed": 4, "dataset": {"name": "ml-100k"}, "population": {"size": 40},
            "recommender": {"algorithm": "itemknn"}, "pages": {"count": 5, "items_per_page": 4},
            "llm": {"endpoints": [server.base_url], "cache": "off", "concurrency": 4},
            "output_dir": str(tmp_path),
        }
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump(scenario))

        whole = cli("run", str(path), "--out", str(tmp_path / "whole"), "--num-cpus", "2")
        out, err = whole.communicate(timeout=300)
        assert whole.returncode == 0, err[-2000:]

        killed = cli("run", str(path), "--out", str(tmp_path / "killed"), "--num-cpus", "2")
        parts = tmp_path / "killed" / "events"
        deadline = time.time() + 240
        while time.time() < deadline and len(list(parts.glob("part-*.parquet"))) < 3:
            time.sleep(0.1)
        os.kill(killed.pid, signal.SIGKILL)
        killed.communicate(timeout=60)
        logged = sum(pq.read_table(p).num_rows for p in parts.glob("part-*.parquet"))
        time.sleep(2)  # the killed driver's actors die with it (Ray's fate sharing)
        assert not (tmp_path / "killed" / "events.parquet").exists()

        resumed = cli("run", "--resume", str(tmp_path / "killed"), "--num-cpus", "2")
        out, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err[-2000:]

    a = pq.read_table(tmp_path / "whole" / "events.parquet").select(COMPARED)
    b = pq.read_table(tmp_path / "killed" / "events.parquet").select(COMPARED)
    assert 0 < logged < b.num_rows
    keys = [(r["agent_id"], r["page"]) for r in b.to_pylist()]
    assert len(keys) == len(set(keys))
    assert a.equals(b)
    sa = json.loads((tmp_path / "whole" / "stats.json").read_text())
    sb = json.loads((tmp_path / "killed" / "stats.json").read_text())
    assert sa["histograms"] == sb["histograms"]
    for key in ("decisions", "sessions_done", "watches_per_page_mean", "rating_mean", "pages_per_session_mean"):
        assert sa["summary"][key] == sb["summary"][key], key
