"""Bad input, as a careless or hostile user gives it: each case goes through the `alignuser-sim` command and
must end with exit code 2 and ONE line on stderr naming the problem, no traceback, and every file that was
there before untouched (nothing overwritten, deleted or added).

Cases are grouped: YAML that hurts (aliases, duplicate keys, deep nesting, ...), values (seeds, NaN and
infinity, recommender params), paths (scenario names, `--out`, `output_dir`), data files (`data info`) and
resume misuse (`run --resume`). A case is (command args, expected text in the line, files to lay out); the
files are written under a `work` folder, which is the current directory while the command runs.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from alignuser_sim.cli import main

GOOD = "seed: 1\ndataset:\n  name: ml-100k\n"
GENERIC = "dataset:\n  name: generic\n  interactions: inter.csv\n"
INTER = "user_id,item_id,rating,ts\nu1,i1,4,1000\nu2,i2,3,1001\n"


def _bomb(levels: int, fan: int = 9, indent: str = "    ") -> str:
    """The "billion laughs": each level a list of `fan` aliases of the level below (fan**levels values)."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * fan)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fan)}]" for i in range(1, levels)]
    return "\n".join(indent + line for line in lines) + "\n"


def _params(body: str) -> str:
    return GOOD + "recommender:\n  params:\n" + body


@dataclass
class Case:
    args: list[str]  # the command; {w} is the work folder
    expected: str  # a part of the one line
    files: dict[str, str | bytes] = field(default_factory=dict)
    prepare: Callable[[Path], None] | None = None  # more than files (folders, a run folder)


def validate(text: str | bytes, expected: str, name: str = "s.yaml") -> Case:
    return Case(["validate", name], expected, {name: text})


def data_info(expected: str, scenario: str = GENERIC, **files: str | bytes) -> Case:
    return Case(["data", "info", "s.yaml"], expected, {"s.yaml": scenario, **files})


YAML_CASES = {
    "empty-file": validate("", "s.yaml: empty file"),
    "only-comments": validate("# nothing here\n", "s.yaml: empty file"),
    "not-utf8": validate(b"name: caf\xe9\ndataset:\n  name: ml-100k\n", "s.yaml: not UTF-8 text"),
    "utf16": validate(GOOD.encode("utf-16"), "s.yaml: not UTF-8 text"),
    "top-level-list": validate("- a\n- b\n", "must be a YAML mapping of keys to values"),
    "top-level-scalar": validate("just words\n", "must be a YAML mapping of keys to values"),
    "unclosed-bracket": validate("dataset:\n  name: ml-100k\n  bad: [unclosed\n", "line 4: invalid YAML: expected"),
    "tab-indent": validate("dataset:\n\tname: ml-100k\n", "line 2: invalid YAML: found character '\\t'"),
    "two-documents": validate(GOOD + "---\n" + GOOD, "s.yaml: line 4: invalid YAML: but found another document"),
    "undefined-alias": validate(GOOD + "description: *nope\n", "invalid YAML: found undefined alias 'nope'"),
    "python-tag": validate(GOOD + "description: !!python/object/apply:os.system ['true']\n",
                           "line 4: invalid YAML: could not determine a constructor"),
    "control-character": validate(GOOD + "description: a\x07b\n", "invalid YAML"),
    "unhashable-key": validate(GOOD + "? [a, b]\n: 1\n", "invalid YAML: found unhashable key"),
    "duplicate-top-key": validate("seed: 1\ndataset:\n  name: ml-100k\nseed: 2\n",
                                  "s.yaml: line 4: duplicate key 'seed' (first at line 1)"),
    "duplicate-nested-key": validate("dataset:\n  name: ml-100k\n  name: steam\n",
                                     "s.yaml: line 3: duplicate key 'name' (first at line 2)"),
    "duplicate-key-in-params": validate(_params("    lr: 0.1\n    lr: 0.2\n"),
                                        "s.yaml: line 7: duplicate key 'lr' (first at line 6)"),
    "duplicate-key-flow": validate(GOOD + "pages: {count: 3, count: 4}\n",
                                   "s.yaml: line 4: duplicate key 'count' (first at line 4)"),
    "alias-bomb-in-params": validate(_params(_bomb(9)), "too big with its aliases expanded"),
    "alias-bomb-unknown-key": validate(GOOD + "lols:\n" + _bomb(9, indent="  "), "too big with its aliases expanded"),
    "alias-bomb-long-text": validate(
        _params("    a: &a " + "x" * 600_000 + "\n    b: [" + ", ".join(["*a"] * 20) + "]\n"),
        "too big with its aliases expanded"),
    "alias-bomb-population": validate(GOOD + "lols:\n" + _bomb(9, indent="  ") + "population:\n  users: *l8\n",
                                      "too big with its aliases expanded"),
    "recursive-alias": validate(_params("    x: &a [1, *a]\n"), "an alias refers to the value that contains it"),
    "recursive-alias-mapping": validate(_params("    x: &a {self: *a}\n"),
                                        "an alias refers to the value that contains it"),
    "deep-flow-lists": validate(_params("    x: " + "[" * 20_000 + "]" * 20_000 + "\n"),
                                "s.yaml: line 6: nested deeper than 64 levels"),
    "deep-flow-mappings": validate(_params("    x: " + "{a: " * 20_000 + "1" + "}" * 20_000 + "\n"),
                                   "nested deeper than 64 levels"),
    "deep-block-lists": validate(GOOD + "deep:\n" + "".join("  " * (i + 1) + "-\n" for i in range(3000)),
                                 "nested deeper than 64 levels"),
    "deep-through-aliases": validate(
        _params("    a: &a " + "[" * 40 + "]" * 40 + "\n    b: &b " + "[" * 40 + "*a" + "]" * 40 + "\n"),
        "aliases expand to nesting deeper than 64 levels"),
}

VALUE_CASES = {
    "seed-negative": validate("seed: -1\ndataset:\n  name: ml-100k\n", "s.yaml: seed: must be >= 0"),
    "seed-huge": validate("seed: 1099511627776\ndataset:\n  name: ml-100k\n", "s.yaml: seed: must be <="),
    "seed-float": validate("seed: 1.5\ndataset:\n  name: ml-100k\n", "s.yaml: seed: must be an integer"),
    "population-seed-negative": validate(GOOD + "population:\n  seed: -3\n", "population.seed: must be >= 0"),
    "judge-seed-negative": validate(GOOD + "judge:\n  seed: -2\n", "judge.seed: must be >= 0"),
    "temperature-nan": validate(GOOD + "llm:\n  sampling:\n    temperature: .nan\n",
                                "s.yaml: llm.sampling.temperature: must be a finite number"),
    "temperature-inf": validate(GOOD + "llm:\n  sampling:\n    temperature: .inf\n",
                                "llm.sampling.temperature: must be a finite number"),
    "temperature-too-high": validate(GOOD + "llm:\n  sampling:\n    temperature: 3\n",
                                     "llm.sampling.temperature: must be <= 2"),
    "llm-timeout-inf": validate(GOOD + "llm:\n  timeout_s: .inf\n", "llm.timeout_s: must be a finite number"),
    "llm-timeout-huge": validate(GOOD + "llm:\n  timeout_s: 1e12\n", "llm.timeout_s: must be <= 86400"),
    "recommender-timeout-nan": validate(GOOD + "recommender:\n  timeout_s: .nan\n",
                                        "recommender.timeout_s: must be a finite number"),
    "session-gap-inf": validate(GOOD + "pages:\n  session_gap_hours: .inf\n",
                                "pages.session_gap_hours: must be a finite number"),
    "learning-rate-nan": validate(GOOD + "train:\n  learning_rate: .NaN\n",
                                  "train.learning_rate: must be a finite number"),
    "batch-window-minus-inf": validate(GOOD + "run:\n  batch_window_s: -.inf\n",
                                       "run.batch_window_s: must be a finite number"),
    "params-nan": validate(_params("    lr: {a: [1, .nan]}\n"),
                           "s.yaml: recommender.params.lr.a.1: must be a finite number"),
    "params-date": validate(_params("    since: 2020-01-01\n"), "recommender.params.since: a date is not allowed"),
    "params-binary": validate(_params("    blob: !!binary aGVsbG8=\n"),
                              "recommender.params.blob: a bytes is not allowed"),
    "params-int-key": validate(_params("    1: one\n"), "s.yaml: recommender.params.1: must be a string"),
    "params-too-many": validate(_params("    ids: [" + ", ".join(["1"] * 20_000) + "]\n"),
                                "recommender.params: more than 10,000 values"),
    "params-too-deep": validate(_params("    x: " + "[" * 20 + "]" * 20 + "\n"),
                                "nested deeper than 16 levels"),
    "params-not-mapping": validate(GOOD + "recommender:\n  params: [1, 2]\n", "recommender.params: must be a mapping"),
    "size-zero": validate(GOOD + "population:\n  size: 0\n", "population.size: must be > 0"),
    "unknown-key": validate(GOOD + "populaton:\n  size: 3\n", "populaton: unknown key"),
    "endpoint-not-url": validate(GOOD + "llm:\n  endpoints: [localhost:8000]\n",
                                 "llm.endpoints: 'localhost:8000' is not an http(s) URL"),
    "cache-mode": validate(GOOD + "llm:\n  cache: maybe\n", "llm.cache: must be one of off, read_write or replay"),
}


def _folder_with(*names: str) -> Callable[[Path], None]:
    def make(work: Path) -> None:
        for name in names:
            (work / name).mkdir(parents=True, exist_ok=True)
    return make


def _existing_run(work: Path) -> None:
    run = work / "old-run"
    run.mkdir()
    (run / "run.json").write_text('{"run_id": "r1", "shards": {"0": ["1"]}, "status": "running"}')
    (run / "scenario.yaml").write_text(GOOD)


PATH_CASES = {
    "name-climbs-out": validate("name: ../../x\n" + GOOD, "s.yaml: name: '../../x' must be one folder name"),
    "name-absolute": validate("name: /tmp/x\n" + GOOD, "name: '/tmp/x' must be one folder name"),
    "name-with-slash": validate("name: a/b\n" + GOOD, "name: 'a/b' must be one folder name"),
    "name-dot-dot": validate("name: '..'\n" + GOOD, "name: '..' must be one folder name"),
    "name-nul": validate('name: "a\\0b"\n' + GOOD, "must be one folder name"),
    "name-backslash": validate("name: 'a\\b'\n" + GOOD, "must be one folder name"),
    "name-too-long": validate("name: " + "n" * 300 + "\n" + GOOD, "name: string should have at most 200 characters"),
    "file-named-dot-dot": validate(GOOD, "...yaml: name: '..' must be one folder name", name="...yaml"),
    "output-dir-is-a-file": Case(["validate", "s.yaml"], "s.yaml: output_dir: taken exists and is not a folder",
                                 {"s.yaml": "output_dir: taken\n" + GOOD, "taken": "a file\n"}),
    "run-output-dir-is-a-file": Case(["run", "s.yaml"], "output_dir: taken exists and is not a folder",
                                     {"s.yaml": "output_dir: taken\n" + GOOD, "taken": "a file\n"}),
    "run-name-climbs-out": Case(["run", "s.yaml"], "name: '../x' must be one folder name",
                                {"s.yaml": "name: ../x\n" + GOOD}),
    "out-at-scenario-folder": Case(["run", "exp/scenario.yaml", "--out", "exp"],
                                   "exp: a folder that is not a run (it holds 2 entries, e.g. 'notes.txt')",
                                   {"exp/scenario.yaml": GOOD, "exp/notes.txt": "mine\n"}),
    "out-at-folder-of-results": Case(["run", "s.yaml", "--out", "results"],
                                     "results: a folder that is not a run (it holds 1 entries, e.g. 'stats.json')",
                                     {"s.yaml": GOOD, "results/stats.json": "{}"}),
    "out-at-folder-with-subfolder": Case(["run", "s.yaml", "--out", "results"],
                                         "results: a folder that is not a run", {"s.yaml": GOOD},
                                         _folder_with("results/events")),
    "out-at-a-file": Case(["run", "s.yaml", "--out", "s.yaml"], "s.yaml: exists and is not a folder",
                          {"s.yaml": GOOD}),
    "out-at-existing-run": Case(["run", "s.yaml", "--out", "old-run"], "old-run: already holds a run; use --resume",
                                {"s.yaml": GOOD}, _existing_run),
    "quickstart-out-at-scenario-folder": Case(["quickstart", "exp/scenario.yaml", "--out", "exp"],
                                              "exp: a folder that is not a run", {"exp/scenario.yaml": GOOD}),
    "scenario-missing": Case(["validate", "nope.yaml"], "nope.yaml: file not found"),
    "scenario-is-a-folder": Case(["validate", "adir"], "adir: file not found", {}, _folder_with("adir")),
    "run-scenario-missing": Case(["run", "nope.yaml"], "nope.yaml: file not found"),
}

DATA_CASES = {
    "interactions-missing": data_info("inter.csv: file not found"),
    "interactions-empty": data_info("inter.csv: empty file", **{"inter.csv": ""}),
    "header-only": data_info("inter.csv: no data rows (only a header)", **{"inter.csv": "user_id,item_id\n"}),
    "column-missing": data_info("inter.csv: missing column 'item_id' (found: user_id, rating)",
                                **{"inter.csv": "user_id,rating\nu1,4\n"}),
    "mapped-column-missing": data_info(
        "inter.csv: missing column 'user_id' (mapped from 'uid'; found: user, item_id)",
        GENERIC + "  columns:\n    user_id: uid\n", **{"inter.csv": "user,item_id\nu1,i1\n"}),
    "mapping-names-absent-column": data_info(
        "inter.csv: dataset.columns.rating names column 'stars', not in inter.csv (found: user_id, item_id, "
        "rating, ts)", GENERIC + "  columns:\n    rating: stars\n", **{"inter.csv": INTER}),
    "mapping-names-absent-item-column": data_info(
        "items.csv: dataset.columns.title names column 'name', not in items.csv (found: item_id, title)",
        GENERIC + "  items: items.csv\n  columns:\n    title: name\n",
        **{"inter.csv": INTER, "items.csv": "item_id,title\ni1,A\ni2,B\n"}),
    "mapping-names-absent-id-column": data_info(
        "inter.csv: dataset.columns.item_id names column 'movie', not in inter.csv or items.csv",
        GENERIC + "  items: items.csv\n  columns:\n    item_id: movie\n",
        **{"inter.csv": INTER, "items.csv": "item_id,title\ni1,A\ni2,B\n"}),
    "title-mapped-without-items": data_info(
        "s.yaml: dataset.columns.title: maps a column of dataset.items, which is not given",
        GENERIC + "  columns:\n    title: name\n", **{"inter.csv": INTER}),
    "unknown-column-key": data_info("dataset.columns.rate: unknown key", GENERIC + "  columns:\n    rate: x\n",
                                    **{"inter.csv": INTER}),
    "bad-rating": data_info("inter.csv: row 2: column 'rating': cannot parse 'abc' as a number",
                            **{"inter.csv": "user_id,item_id,rating\nu1,i1,4\nu2,i2,abc\n"}),
    "rating-out-of-range": data_info("inter.csv: row 1: column 'rating': rating 7.0 outside 1..5",
                                     **{"inter.csv": "user_id,item_id,rating\nu1,i1,7\n"}),
    "bad-timestamp": data_info("inter.csv: row 1: column 'ts': cannot parse 'yesterday' as a timestamp",
                               **{"inter.csv": "user_id,item_id,ts\nu1,i1,yesterday\n"}),
    "milliseconds": data_info("if the file holds milliseconds set dataset.timestamp_unit: ms",
                              **{"inter.csv": "user_id,item_id,ts\nu1,i1,1602813575301\n"}),
    "wrong-field-count": data_info("inter.csv: line 3: expected 2 fields, found 3",
                                   **{"inter.csv": "user_id,item_id\nu1,i1\nu2,i2,extra\n"}),
    "csv-not-utf8": data_info("inter.csv: line 3: not UTF-8 text",
                              **{"inter.csv": b"user_id,item_id\nu1,i1\nu\xe9,i2\n"}),
    "damaged-parquet": data_info("inter.parquet: not a Parquet file, or a damaged one",
                                 GENERIC.replace("inter.csv", "inter.parquet"),
                                 **{"inter.parquet": b"PAR1 not really"}),
    "unknown-file-type": data_info("inter.xlsx: unknown file type '.xlsx'", GENERIC.replace("inter.csv", "inter.xlsx"),
                                   **{"inter.xlsx": "x"}),
    "duplicate-header": data_info("inter.csv: column 'rating' appears twice in the header",
                                  **{"inter.csv": "user_id,item_id,rating,rating\nu1,i1,4,5\n"}),
    "unknown-item": data_info("inter.csv: row 2: unknown item 'i2' (not in items.csv)",
                              GENERIC + "  items: items.csv\n",
                              **{"inter.csv": INTER, "items.csv": "item_id,title\ni1,A\n"}),
    "duplicate-item": data_info("items.csv: row 2: duplicate item 'i1' (first at row 1)",
                                GENERIC + "  items: items.csv\n",
                                **{"inter.csv": INTER, "items.csv": "item_id,title\ni1,A\ni1,B\n"}),
    "generic-without-interactions": data_info("dataset.interactions: required when name is 'generic'",
                                              "dataset:\n  name: generic\n"),
    "files-for-a-named-dataset": data_info("s.yaml: dataset.interactions: only for name 'generic'",
                                           "dataset:\n  name: ml-100k\n  interactions: inter.csv\n",
                                           **{"inter.csv": INTER}),
}


def _run_folder(meta: str | None = '{"run_id": "r1", "shards": {"0": ["1"]}, "status": "running"}',
                scenario: str | None = GOOD, events: bool = False) -> Callable[[Path], None]:
    def make(work: Path) -> None:
        run = work / "run"
        run.mkdir()
        if meta is not None:
            (run / "run.json").write_text(meta)
        if scenario is not None:
            (run / "scenario.yaml").write_text(scenario)
        if events:
            (run / "events.parquet").write_bytes(b"PAR1")
    return make


RESUME_CASES = {
    "resume-missing-folder": Case(["run", "--resume", "nope"], "nope: not a run folder (no run.json)"),
    "resume-not-a-run": Case(["run", "--resume", "run"], "run: not a run folder (no run.json)", {},
                             _run_folder(meta=None)),
    "resume-a-file": Case(["run", "--resume", "s.yaml"], "s.yaml: not a run folder (no run.json)", {"s.yaml": GOOD}),
    "resume-truncated-run-json": Case(["run", "--resume", "run"], "run.json: damaged run.json", {},
                                      _run_folder(meta='{"run_id": "r1", "sha')),
    "resume-run-json-a-list": Case(["run", "--resume", "run"], "run.json: damaged run.json (not an object", {},
                                   _run_folder(meta="[1, 2]")),
    "resume-run-json-binary": Case(["run", "--resume", "run"], "run.json: damaged run.json",
                                   {"run/run.json": b"\xff\xfe{", "run/scenario.yaml": GOOD}),
    "resume-run-json-no-run-id": Case(["run", "--resume", "run"], "damaged run.json (not an object with a run_id)", {},
                                      _run_folder(meta='{"shards": {}}')),
    "resume-scenario-missing": Case(["run", "--resume", "run"], "scenario.yaml: file not found", {},
                                    _run_folder(scenario=None)),
    "resume-scenario-edited-badly": Case(["run", "--resume", "run"], "scenario.yaml: seed: must be >= 0", {},
                                         _run_folder(scenario="seed: -1\ndataset:\n  name: ml-100k\n")),
    "resume-scenario-duplicate-key": Case(["run", "--resume", "run"], "scenario.yaml: line 2: duplicate key 'seed'",
                                          {}, _run_folder(scenario="seed: 1\nseed: 2\ndataset:\n  name: ml-100k\n")),
    "resume-completed-run": Case(["run", "--resume", "run"], "run: the run already ended (complete)", {},
                                 _run_folder(meta='{"run_id": "r1", "shards": {"0": ["1"]}, "status": "complete"}',
                                             events=True)),
    "resume-and-scenario": Case(["run", "s.yaml", "--resume", "run"], "give a scenario file or --resume RUN_DIR",
                                {"s.yaml": GOOD}, _run_folder()),
    "run-without-anything": Case(["run"], "give a scenario file or --resume RUN_DIR"),
    "resume-with-out": Case(["run", "--resume", "run", "--out", "elsewhere"],
                            "--out is for a new run; --resume continues the run in its own folder", {}, _run_folder()),
    "resume-with-endpoint": Case(["run", "--resume", "run", "--endpoint", "http://127.0.0.1:8731/v1"],
                                 "--endpoint is for a new run", {}, _run_folder()),
    "compare-endpoint-not-a-url": Case(["compare", "s.yaml", "--endpoint", "127.0.0.1:8731"],
                                       "--endpoint: '127.0.0.1:8731' is not an http(s) URL", {"s.yaml": GOOD}),
    "policy-suffix-unknown": Case(["compare", "s.yaml", "--policy", "prompt-only/rank"],
                                  "--policy: 'prompt-only/rank': after '/' comes list or score", {"s.yaml": GOOD}),
}

CASES = {**{f"yaml/{k}": v for k, v in YAML_CASES.items()}, **{f"value/{k}": v for k, v in VALUE_CASES.items()},
         **{f"path/{k}": v for k, v in PATH_CASES.items()}, **{f"data/{k}": v for k, v in DATA_CASES.items()},
         **{f"resume/{k}": v for k, v in RESUME_CASES.items()}}


def snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every file and folder under `root`: kind, mtime and content digest."""
    seen = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        seen[str(path.relative_to(root))] = ("dir" if path.is_dir() else "file", stat.st_mtime_ns, digest)
    return seen


def lay_out(case: Case, work: Path) -> None:
    for name, content in case.files.items():
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    if case.prepare:
        case.prepare(work)


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.setenv("ALIGNUSER_SIM_HOME", str(tmp_path / "home"))  # a dataset cache outside `work`
    monkeypatch.chdir(folder)
    monkeypatch.setattr("actors.launch.init_ray", _no_ray)  # a case that got through would start a real run
    return folder


def _no_ray(*args: object, **kwargs: object) -> None:
    raise AssertionError("bad input got as far as starting Ray")


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, args: list[str]) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["alignuser-sim", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def test_the_suite_is_big_enough() -> None:
    assert len(CASES) >= 60
    assert {k.split("/")[0] for k in CASES} == {"yaml", "value", "path", "data", "resume"}


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_bad_input_one_line_exit_2_nothing_touched(case_id: str, work: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    case = CASES[case_id]
    lay_out(case, work)
    before = snapshot(work)
    code, out, err = run_cli(monkeypatch, capsys, case.args)
    lines = err.strip().splitlines()
    assert code == 2, (code, err[-3000:])
    assert "Traceback" not in err and "Traceback" not in out
    assert len(lines) == 1, err[-3000:]
    assert case.expected in lines[0], lines[0]
    assert snapshot(work) == before  # nothing written, overwritten or removed


REAL_PROCESS = ["yaml/deep-flow-lists", "yaml/alias-bomb-in-params", "yaml/duplicate-top-key", "value/seed-negative",
                "path/name-climbs-out", "resume/resume-truncated-run-json", "data/mapping-names-absent-column"]


@pytest.mark.parametrize("case_id", REAL_PROCESS)
def test_bad_input_in_a_real_process(case_id: str, work: Path) -> None:
    """The installed entry point, at Python's own recursion limit: one line, exit 2, no traceback."""
    case = CASES[case_id]
    lay_out(case, work)
    before = snapshot(work)
    proc = subprocess.run([sys.executable, "-m", "alignuser_sim.cli", *case.args], capture_output=True, text=True,
                          timeout=120, cwd=work)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]
    assert case.expected in proc.stderr
    assert snapshot(work) == before


# --- the fixes, below the CLI ------------------------------------------------------------------------------


def test_alias_bomb_passed_as_a_dict_is_refused_too() -> None:
    """Through the Python API no YAML loader runs: params' own bound stops shared references from expanding."""
    from alignuser_sim.config import scenario_from_dict
    from alignuser_sim.errors import ScenarioError

    level: list = ["lol"] * 9
    for _ in range(8):
        level = [level] * 9
    with pytest.raises(ScenarioError, match="recommender.params: more than 10,000 values"):
        scenario_from_dict({"dataset": {"name": "ml-100k"}, "recommender": {"params": {"x": level}}})


def test_merge_keys_may_override_and_anchors_still_work(work: Path) -> None:
    from alignuser_sim.config import load_scenario

    (work / "s.yaml").write_text("dataset:\n  name: ml-100k\npages:\n  <<: {count: 3, items_per_page: 6}\n"
                                 "  count: 7\nrecommender:\n  params:\n    a: &a [1, 2]\n    b: *a\n")
    scenario = load_scenario(work / "s.yaml")
    assert (scenario.pages.count, scenario.pages.items_per_page) == (7, 6)
    assert scenario.recommender.params == {"a": [1, 2], "b": [1, 2]}


def test_a_run_folder_records_absolute_paths_so_resume_works_from_anywhere(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative output_dir means the current directory's for a new run (as before); the run folder's
    scenario.yaml records it absolute, so the learning folder under it is found by a resume from elsewhere."""
    from alignuser_sim.config import load_scenario, scenario_from_dict
    from alignuser_sim.simulation.runs import new_run_dir
    from alignuser_sim.store import RunFolder

    first, other = tmp_path / "first", tmp_path / "other"
    first.mkdir()
    other.mkdir()
    monkeypatch.chdir(first)
    scenario = scenario_from_dict({"name": "exp", "dataset": {"name": "generic", "interactions": "data/inter.csv"},
                                   "output_dir": "out"})
    run_dir, _ = new_run_dir(scenario, None)
    assert run_dir.parent == Path("out/exp")  # the current directory's, as before
    from alignuser_sim import store
    from alignuser_sim.config import absolute_paths, dump_scenario

    store.write_text(RunFolder(run_dir).scenario, dump_scenario(absolute_paths(scenario)))
    monkeypatch.chdir(other)
    again = load_scenario(first / run_dir / "scenario.yaml")
    assert again.output_dir == first / "out"
    assert again.learning_dir() == first / "out" / "exp" / "learning"
    assert again.dataset.interactions == first / "data" / "inter.csv"


def test_plan_run_writes_the_absolute_scenario(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from alignuser_sim.config import scenario_from_dict
    from alignuser_sim.simulation.runs import plan_run

    monkeypatch.setenv("ALIGNUSER_SIM_HOME", str(tmp_path / "home"))
    (tmp_path / "inter.csv").write_text(INTER)
    monkeypatch.chdir(tmp_path)
    scenario = scenario_from_dict({"name": "exp", "dataset": {"name": "generic", "interactions": "inter.csv"},
                                   "population": {"size": 2}, "output_dir": "out"})
    plan = plan_run(scenario, None, n_shards=1)
    written = yaml.safe_load((plan.run_dir / "scenario.yaml").read_text())
    assert written["output_dir"] == str(tmp_path / "out")
    assert written["dataset"]["interactions"] == str(tmp_path / "inter.csv")
    assert scenario.output_dir == Path("out")  # the scenario itself is left as given


def test_an_empty_existing_out_folder_is_fine(work: Path) -> None:
    """Nothing in it to overwrite: a folder made ahead (mktemp -d) may hold the run."""
    from alignuser_sim.store import RunFolder

    (work / "empty").mkdir()
    RunFolder(work / "empty").check_new()
    RunFolder(work / "new" / "deeper").check_new()


@pytest.mark.parametrize(("args", "expected"), [
    (["nosuchcommand"], "No such command 'nosuchcommand'"),
    (["eval"], "Missing argument"),
    (["run", "--nope"], "No such option: --nope"),
])
def test_usage_errors_in_a_real_process(args: list[str], expected: str, tmp_path: Path) -> None:
    """Click's usage errors (typer >= 0.29 raises its own copy of click's classes): exit 2, the usage and one
    error line, never a traceback."""
    proc = subprocess.run([sys.executable, "-m", "alignuser_sim.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and expected in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 4, proc.stderr[-3000:]
