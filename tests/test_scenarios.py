"""Scenario files: the shipped ones validate; malformed ones get ONE exact line and exit code 2."""

import subprocess
import sys
from pathlib import Path

import pytest

from alignuser_sim.cli import main
from alignuser_sim.config import dump_scenario, load_scenario, scenario_from_dict

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "scenarios").glob("*.yaml"))

GOOD = """\
seed: 1
dataset:
  name: ml-100k
"""


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["alignuser-sim", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def test_shipped_scenarios_are_the_named_ones():
    assert {p.stem for p in SHIPPED} == {"quickstart", "ml-100k", "ml-1m-agent4rec", "ml-1m-eval", "amazon-books",
                                         "steam", "ml-1m-believability", "ml-100k-believability", "ml-100k-eval",
                                         "amazon-books-eval", "steam-eval", "ml-1m-compare", "ml-100k-score",
                                         "ml-1m-score", "steam-score", "amazon-books-score", "ml-1m-compare-score"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_scenarios_validate(path):
    scenario = load_scenario(path)
    assert scenario.name == path.stem
    # the resolved scenario round-trips through YAML unchanged
    import yaml

    again = scenario_from_dict(yaml.safe_load(dump_scenario(scenario)))
    assert again == scenario


def test_validate_command_accepts_all_shipped(monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "validate", *map(str, SHIPPED))
    assert code == 0, err
    assert out.count(": ok") == len(SHIPPED)


def test_defaults_and_ratio_forms():
    s = scenario_from_dict({"dataset": {"name": "ml-100k"}, "pages": {"distractor_ratio": "1:3"}})
    assert s.pages.distractor_ratio == 3
    assert s.pages.positives_per_page == 1  # 4 items at 1:3
    s = scenario_from_dict({"dataset": {"name": "ml-100k"}, "pages": {"distractor_ratio": 1, "items_per_page": 10}})
    assert s.pages.positives_per_page == 5
    s = scenario_from_dict({"dataset": {"name": "ml-100k"}, "llm": {"endpoints": "http://127.0.0.1:8000/v1"}})
    assert s.llm.endpoints == ["http://127.0.0.1:8000/v1"]


BAD = {
    "size-zero": (GOOD + "population:\n  size: 0\n", "population.size: must be > 0"),
    "size-negative": (GOOD + "population:\n  size: -5\n", "population.size: must be > 0"),
    "unknown-top-key": (GOOD + "populaton:\n  size: 3\n", "populaton: unknown key"),
    "unknown-nested-key": (GOOD + "pages:\n  itemz_per_page: 4\n", "pages.itemz_per_page: unknown key"),
    "bad-dataset-name": (
        "dataset:\n  name: movielens\n",
        "dataset.name: must be one of ml-100k, ml-1m-agent4rec, amazon-books, steam or generic",
    ),
    "missing-dataset": ("seed: 3\n", "dataset: required key is missing"),
    "count-not-int": (GOOD + "pages:\n  count: three\n", "pages.count: must be an integer"),
    "ratio-bad-string": (
        GOOD + "pages:\n  distractor_ratio: '2:3'\n",
        "pages.distractor_ratio: must be an integer or a ratio like '1:3'",
    ),
    "ratio-too-high": (GOOD + "pages:\n  distractor_ratio: 12\n", "pages.distractor_ratio: must be <= 9"),
    "items-per-page-one": (GOOD + "pages:\n  items_per_page: 1\n", "pages.items_per_page: must be >= 2"),
    "endpoint-not-url": (
        GOOD + "llm:\n  endpoints: [localhost:8000]\n",
        "llm.endpoints: 'localhost:8000' is not an http(s) URL",
    ),
    "temperature-too-high": (
        GOOD + "llm:\n  sampling:\n    temperature: 3\n",
        "llm.sampling.temperature: must be <= 2",
    ),
    "cache-mode": (GOOD + "llm:\n  cache: maybe\n", "llm.cache: must be one of off, read_write or replay"),
    "seed-float": ("seed: 1.5\ndataset:\n  name: ml-100k\n", "seed: must be an integer"),
    "generic-without-file": ("dataset:\n  name: generic\n", "dataset.interactions: required when name is 'generic'"),
    "users-not-list": (GOOD + "population:\n  users: abc\n", "population.users: must be a list"),
    "params-not-mapping": (GOOD + "recommender:\n  params: [1, 2]\n", "recommender.params: must be a mapping"),
    "concurrency-zero": (GOOD + "llm:\n  concurrency: 0\n", "llm.concurrency: must be > 0"),
    "yaml-syntax": (
        "dataset:\n  name: ml-100k\n  bad: [unclosed\n",
        "line 4: invalid YAML: expected ',' or ']', but got '<stream end>'",
    ),
    "yaml-tab-indent": (
        "dataset:\n\tname: ml-100k\n",
        "line 2: invalid YAML: found character '\\t' that cannot start any token",
    ),
    "empty-file": ("", "empty file"),
    "top-level-list": ("- a\n- b\n", "must be a YAML mapping of keys to values"),
    "two-problems": (
        GOOD + "population:\n  size: 0\npages:\n  count: 0\n",
        "population.size: must be > 0 (and 1 more)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_scenario_one_line_exit_2(case, tmp_path, monkeypatch, capsys):
    text, expected = BAD[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    code, out, err = run_cli(monkeypatch, capsys, "validate", str(path))
    assert code == 2
    assert err == f"{path}: {expected}\n"
    assert "Traceback" not in err


def test_missing_file(tmp_path, monkeypatch, capsys):
    path = tmp_path / "nope.yaml"
    code, _, err = run_cli(monkeypatch, capsys, "validate", str(path))
    assert (code, err) == (2, f"{path}: file not found\n")


def test_not_utf8(tmp_path, monkeypatch, capsys):
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    code, _, err = run_cli(monkeypatch, capsys, "validate", str(path))
    assert (code, err) == (2, f"{path}: not UTF-8 text\n")


def test_every_bad_command_gets_exit_2_without_traceback_in_a_real_process(tmp_path):
    """The installed entry point, not just main(): a user sees one line and exit code 2."""
    path = tmp_path / "bad.yaml"
    path.write_text(BAD["size-zero"][0])
    for args in (["validate", str(path)], ["data", "rollouts", str(path)], ["data", "fetch", "netflix"]):
        proc = subprocess.run(
            [sys.executable, "-m", "alignuser_sim.cli", *args], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr


def test_relative_dataset_paths_resolve_against_the_scenario_file(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "s.yaml"
    path.write_text("dataset:\n  name: generic\n  interactions: ../data/inter.csv\n")
    scenario = load_scenario(path)
    assert scenario.dataset.interactions == (tmp_path / "data" / "inter.csv").resolve()
