"""Recommenders: fit time, batched serving speed and offline Recall/NDCG, per algorithm and dataset.

Serving: each algorithm is fitted on ALL of the dataset's interactions (as in a simulation), then every
user is served `--rounds` pages of k=4 in batches of `--batch` users (`pages()`), each page followed by
feedback (the first item watched, the page shown). We report the best of `--repeat` fits, pages/s and
feedback calls/s, and the pickled size of the fitted model and of the per-user state it accumulated.
Offline: Recall@20 / NDCG@20 on the held-out split (`alignuser_sim.evaluation.offline`).

    .venv/bin/python benchmarks/bench_recommenders.py ml-100k ml-1m-agent4rec

Writes benchmarks/results/recommenders.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ALGORITHMS = ["random", "pop", "itemknn", "mf", "lightgcn"]


def serve(rec, users: list[str], rounds: int, batch: int) -> tuple[float, float]:
    """(pages/s, feedback/s) over `rounds` pages for every user, served in batches."""
    page_s = feedback_s = 0.0
    for _ in range(rounds):
        for start in range(0, len(users), batch):
            chunk = users[start : start + batch]
            t0 = time.perf_counter()
            pages = rec.pages(chunk, 4)
            page_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            for user, page in pages.items():
                rec.feedback(user, {page[0]: None} if page else {}, page)
            feedback_s += time.perf_counter() - t0
    n = rounds * len(users)
    return n / page_s, n / feedback_s


def measure(name: str, algorithms: list[str], rounds: int, batch: int, repeat: int) -> list[dict]:
    from alignuser_sim.config import RecommenderConfig, scenario_from_dict
    from alignuser_sim.data import load_dataset
    from alignuser_sim.evaluation.offline import evaluate_offline, split_dataset
    from alignuser_sim.recommenders import make_recommender

    ds = load_dataset(scenario_from_dict({"dataset": {"name": name}}).dataset)
    users = sorted(set(ds.interactions["user_id"].to_pylist()))
    split = split_dataset(ds)
    rows = []
    for algorithm in algorithms:
        fits = []
        for _ in range(repeat):
            rec = make_recommender(RecommenderConfig(algorithm=algorithm), seed=0)
            t0 = time.perf_counter()
            rec.fit(ds.interactions, ds.items)
            fits.append(time.perf_counter() - t0)
        model_bytes = len(pickle.dumps(rec))
        pages_per_s, feedback_per_s = serve(rec, users, rounds, batch)
        state_bytes = len(pickle.dumps(rec.state_dict()))
        (offline,) = evaluate_offline(ds, [algorithm], k_values=(20,), seed=0, split=split)
        rows.append({
            "dataset": name,
            "algorithm": algorithm,
            "users": len(users),
            "items": ds.items.num_rows,
            "interactions": ds.interactions.num_rows,
            "fit_best_s": round(min(fits), 3),
            "pages_per_s": round(pages_per_s),
            "feedback_per_s": round(feedback_per_s),
            "model_mb": round(model_bytes / 2**20, 2),
            "state_bytes_per_user": round(state_bytes / len(users)),
            "recall@20": round(offline["recall@20"], 4),
            "ndcg@20": round(offline["ndcg@20"], 4),
            "offline_users": offline["users"],
            "offline_fit_s": round(offline["fit_s"], 3),
            "split": split.kind,
        })
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--rounds", type=int, default=5, help="pages per user")
    parser.add_argument("--batch", type=int, default=256, help="users per pages() call")
    parser.add_argument("--repeat", type=int, default=2, help="fits per algorithm (best reported)")
    parser.add_argument("--note", default="", help="a line about the conditions, written under the machine")
    args = parser.parse_args()
    rows = []
    for name in args.datasets:
        rows += measure(name, args.algorithms.split(","), args.rounds, args.batch, args.repeat)

    cpu = platform.processor() or platform.machine()
    try:
        models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")]
        cpu = models[0] if models else cpu
    except OSError:
        pass
    machine = f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"
    command = "python benchmarks/bench_recommenders.py " + " ".join(
        f'"{a}"' if " " in a else a for a in sys.argv[1:]
    )
    note = f"\n\n{args.note}" if args.note else ""
    lines = [
        "| dataset | recommender | fit s (best) | pages/s (k=4, batch " + str(args.batch) + ") | feedback/s "
        "| model MB | state B/user | Recall@20 | NDCG@20 |",
        "|" + "---|" * 9,
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['algorithm']} | {r['fit_best_s']} | {r['pages_per_s']:,} | "
            f"{r['feedback_per_s']:,} | {r['model_mb']} | {r['state_bytes_per_user']:,} | "
            f"{r['recall@20']:.4f} | {r['ndcg@20']:.4f} |"
        )
    table = "\n".join(lines)
    splits = sorted({f"- {r['dataset']}: {r['split']}, {r['offline_users']:,} users evaluated" for r in rows})
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "recommenders.json").write_text(
        json.dumps({"machine": machine, "command": command, "note": args.note, "rows": rows}, indent=1)
    )
    (RESULTS / "recommenders.md").write_text(
        f"command: `{command}`\n\nmachine: {machine}{note}\n\n{table}\n\noffline splits:\n" + "\n".join(splits) + "\n"
    )


if __name__ == "__main__":
    main()
