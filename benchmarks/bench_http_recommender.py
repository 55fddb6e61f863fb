"""Pages/s through the HTTP recommender protocol vs the in-process recommender, on the same ranking.

The example service (examples/http_service.py: most popular unseen items, as the built-in `pop`) runs as a
local process; `HTTPRecommender` reaches it as a simulation does. Both sides serve every user of the dataset
`--rounds` page rounds of k=4, in batches of `--batch` users (what the driver's batching gives the actor),
each round's pages followed by one feedback batch (the first item watched, the page shown). Timed: pages and
feedback together, i.e. the recommender's share of a page loop. The ratio is in-process / HTTP (how many
times faster the in-process recommender is), and the HTTP side's latency percentiles.

    .venv/bin/python benchmarks/bench_http_recommender.py [--dataset ml-100k] [--rounds 3] [--batch 256]

Writes benchmarks/results/http-recommender.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"


def loop(rec, users: list[str], rounds: int, batch: int) -> float:
    """Pages per second over `rounds` page rounds of every user, feedback included."""
    t0 = time.perf_counter()
    for _ in range(rounds):
        for start in range(0, len(users), batch):
            pages = rec.pages(users[start : start + batch], 4)
            rec.feedback_batch([(u, {p[0]: 4.0} if p else {}, p) for u, p in pages.items()])
    return rounds * len(users) / (time.perf_counter() - t0)


def start_service() -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "examples/http_service.py", "--port", str(port)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            httpx.get(f"{url}/health", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the example service did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()

    from alignuser_sim.config import DatasetConfig, RecommenderConfig
    from alignuser_sim.data import load_dataset
    from alignuser_sim.recommenders import make_recommender

    ds = load_dataset(DatasetConfig(name=args.dataset))
    users = sorted(set(ds.interactions["user_id"].to_pylist()))
    local = make_recommender(RecommenderConfig(algorithm="pop")).fit(ds.interactions, ds.items)
    local_rate = loop(local, users, args.rounds, args.batch)
    proc, url = start_service()
    try:
        cfg = RecommenderConfig(algorithm="http", url=url, batch_size=args.batch)
        remote = make_recommender(cfg, run_id="bench").fit(ds.interactions, ds.items)
        remote.latencies.clear()  # the /fit upload is not serving
        http_rate = loop(remote, users, args.rounds, args.batch)
        stats = remote.stats()
    finally:
        proc.kill()
        proc.wait(10)
    result = {
        "dataset": args.dataset, "users": len(users), "rounds": args.rounds, "batch": args.batch, "k": 4,
        "in_process_pages_per_s": round(local_rate, 1), "http_pages_per_s": round(http_rate, 1),
        "ratio_in_process_over_http": round(local_rate / http_rate, 2),
        "http_requests": stats["requests"], "http_latency_p50_s": stats["latency_p50_s"],
        "http_latency_p95_s": stats["latency_p95_s"], "reply_problems": sum(
            stats[k] for k in ("unknown_ids", "duplicate_ids", "seen_ids", "pages_failed")),
        "machine": f"{platform.machine()}, {platform.python_version()}",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "http-recommender.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# HTTP recommender protocol vs in-process (pop ranking, example service)", "",
             "| key | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in result.items())]
    (RESULTS / "http-recommender.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(result, indent=2))
    print(f"pages/s: in-process {local_rate:,.0f}, HTTP {http_rate:,.0f}: ratio {local_rate / http_rate:.2f}")


if __name__ == "__main__":
    main()
