"""Time and peak memory to build every user's human rollouts for a dataset.

Each dataset runs in a fresh subprocess so its peak RSS is its own. The dataset is loaded once first
(Parquet cache warm), then the rollouts of ALL users are built `--repeat` times; we report the
cache load time, the best and median build time, and the process's peak RSS.

    .venv/bin/python benchmarks/bench_rollouts.py ml-100k ml-1m-agent4rec --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def measure(name: str, repeat: int, ratio: int) -> dict:
    from alignuser_sim.config import scenario_from_dict
    from alignuser_sim.data import load_dataset
    from alignuser_sim.data.population import users_with_interactions
    from alignuser_sim.data.rollouts import build_rollouts, summarize

    scenario = scenario_from_dict({"dataset": {"name": name}, "pages": {"distractor_ratio": ratio}})
    load_dataset(scenario.dataset)  # warm the Parquet cache
    t0 = time.perf_counter()
    ds = load_dataset(scenario.dataset)
    load_s = time.perf_counter() - t0
    users = users_with_interactions(ds.interactions)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        rollouts = build_rollouts(ds, users, scenario.pages, seed=0)
        times.append(time.perf_counter() - t0)
    summary = summarize(rollouts).as_dict()
    return {
        "dataset": name,
        "ratio": f"1:{ratio}",
        "users": len(users),
        "interactions": ds.interactions.num_rows,
        "pages": summary["pages"],
        "load_cached_s": round(load_s, 3),
        "build_best_s": round(min(times), 3),
        "build_median_s": round(statistics.median(times), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ratio", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.datasets[0], args.repeat, args.ratio)))
        return
    rows = []
    for name in args.datasets:
        proc = subprocess.run(
            [sys.executable, __file__, name, "--repeat", str(args.repeat), "--ratio", str(args.ratio), "--child"],
            capture_output=True, text=True, check=True,
        )
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    cpu = platform.processor() or platform.machine()
    machine = f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"
    header = (
        "| dataset | ratio | users | interactions | pages | load (cached) s | build best s | build median s "
        "| peak RSS MB |"
    )
    lines = [header, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['ratio']} | {r['users']:,} | {r['interactions']:,} | {r['pages']:,} | "
            f"{r['load_cached_s']} | {r['build_best_s']} | {r['build_median_s']} | {r['peak_rss_mb']} |"
        )
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rollouts.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    (RESULTS / "rollouts.md").write_text(f"machine: {machine}\n\n{table}\n")


if __name__ == "__main__":
    main()
