"""Paired differences between two policies evaluated in two eval folders of the same setup.

An eval folder refuses a policy whose learning changed (so an old prompt-only and a new adapter can end up in
two folders); their users and pages are still the same when the scenario's seed, users and eval settings are.
This script checks exactly that (every (user, ratio, page) shows the same items in both folders) and then
computes the paired deltas as `eval` does (`evaluation/summary.py`), user by user, with bootstrap intervals.

    python benchmarks/paired_across.py FOLDER_A POLICY_A FOLDER_B POLICY_B [--draws 1000] [--learned LEARNING_DIR]

`--learned LEARNING_DIR` keeps the users who have lessons there (or, with `--not-learned`, those who have none):
a policy's lessons exist only for the users `learn` ran on, and the deltas of the two groups read differently.
"""

from __future__ import annotations

import argparse
import sys

import pyarrow.parquet as pq

from alignuser_sim.evaluation.summary import _delta_row, _rating_delta_row


def rows(folder: str, name: str, policy: str) -> list[dict]:
    return [r for r in pq.read_table(f"{folder}/{name}.parquet").to_pylist() if r["policy"] == policy]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder_a")
    ap.add_argument("policy_a")
    ap.add_argument("folder_b")
    ap.add_argument("policy_b")
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--learned", help="only the users with lessons in this learning folder")
    ap.add_argument("--not-learned", action="store_true", help="with --learned: only the users without lessons")
    args = ap.parse_args()
    keep = learned_filter(args.learned, args.not_learned)
    a = [r for r in rows(args.folder_a, "decisions", args.policy_a) if keep(r["user_id"])]
    b = [r for r in rows(args.folder_b, "decisions", args.policy_b) if keep(r["user_id"])]
    pages_a = {(r["user_id"], r["ratio"], r["page"]): r["items"] for r in a}
    pages_b = {(r["user_id"], r["ratio"], r["page"]): r["items"] for r in b}
    common = set(pages_a) & set(pages_b)
    if not common or any(pages_a[k] != pages_b[k] for k in common):
        print("the two folders did not show the same pages: not a paired comparison", file=sys.stderr)
        return 2
    label_a, label_b = f"{args.policy_a} (A)", f"{args.policy_b} (B)"
    decisions = [{**r, "policy": label_a} for r in a] + [{**r, "policy": label_b} for r in b]
    print(f"{len(common)} pages in common; {args.policy_b} (B) - {args.policy_a} (A), paired by user")
    print("| ratio | users | accuracy | F1 |\n|---:|---:|---:|---:|")
    for ratio in sorted({k[1] for k in common}):
        d = _delta_row(label_a, label_b, ratio, decisions, args.draws, args.seed)
        print(f"| 1:{ratio} | {d['users']} | {fmt(d['accuracy'])} | {fmt(d['f1'])} |")
    ra = [r for r in rows(args.folder_a, "ratings", args.policy_a) if keep(r["user_id"])]
    rb = [r for r in rows(args.folder_b, "ratings", args.policy_b) if keep(r["user_id"])]
    if ra and rb:
        ratings = [{**r, "policy": label_a} for r in ra] + [{**r, "policy": label_b} for r in rb]
        d = _rating_delta_row(label_a, label_b, ratings, args.draws, args.seed)
        print(f"\n| ratings | users | RMSE | MAE |\n|---|---:|---:|---:|\n| B - A | {d['users']} | {fmt(d['rmse'])} | "
              f"{fmt(d['mae'])} |")
    return 0


def learned_filter(folder: str | None, invert: bool):
    if folder is None:
        return lambda user: True
    users = set(pq.read_table(f"{folder}/lessons.parquet", columns=["user_id"]).column("user_id").to_pylist())
    return (lambda user: user not in users) if invert else (lambda user: user in users)


def fmt(e: dict) -> str:
    if e.get("value") is None:
        return "n/a"
    return f"{e['value']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}]"


if __name__ == "__main__":
    sys.exit(main())
