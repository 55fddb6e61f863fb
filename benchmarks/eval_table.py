"""BENCHMARKS.md's tables from an eval folder's `eval.json`: every policy (LLM and reference) at every ratio
with accuracy and F1, the rating errors, and the paired deltas with their intervals.

    python benchmarks/eval_table.py runs/ml-1m-eval/eval [--policies prompt-only,alignuser+]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def interval(m: dict) -> str:
    return f"{m['value']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}]"


def signed(m: dict) -> str:
    return f"{m['value']:+.3f} [{m['lo']:+.3f}, {m['hi']:+.3f}]"


def tables(data: dict, policies: list[str] | None = None) -> str:
    keep = (lambda p: True) if not policies else (lambda p: p in policies or p in data["references"])
    rows: dict[str, dict[int, dict]] = {}
    for m in data["micro"]:
        if keep(m["policy"]):
            rows.setdefault(m["policy"], {})[m["ratio"]] = m
    ratios = sorted({r for r in (m["ratio"] for m in data["micro"])})
    out = [f"{data['users']} users of {data['dataset']}; 95% bootstrap intervals over users "
           f"({data['bootstrap']} draws).", ""]
    out.append("| policy | kind | " + " | ".join(f"1:{r} accuracy | 1:{r} F1" for r in ratios) + " |")
    out.append("|---|---|" + "---:|---:|" * len(ratios))
    for policy, by_ratio in rows.items():
        kind = next(iter(by_ratio.values()))["kind"]
        cells = []
        for r in ratios:
            m = by_ratio.get(r)
            cells += [interval(m["accuracy"]), f"{m['f1']['value']:.3f}"] if m else ["", ""]
        out.append(f"| {policy} | {kind} | " + " | ".join(cells) + " |")
    if data["ratings"]:  # none on a dataset without ratings (Steam)
        out += ["", "| ratings | kind | items | RMSE | MAE | KL (rating distribution) |",
                "|---|---|---:|---:|---:|---:|"]
    for r in data["ratings"]:
        if keep(r["policy"]):
            out.append(f"| {r['policy']} | {r['kind']} | {r['rated']} | {interval(r['rmse'])} | "
                       f"{interval(r['mae'])} | {r['kl']:.3f} |")
    out += ["", "| paired difference | ratio | accuracy | F1 |", "|---|---:|---:|---:|"]
    for d in data["deltas"]:
        if keep(d["policy"]):
            out.append(f"| {d['policy']} - {d['baseline']} ({d['against']}) | 1:{d['ratio']} | "
                       f"{signed(d['accuracy'])} | {signed(d['f1'])} |")
    if data.get("rating_deltas"):
        out += ["", "| paired difference (ratings) | RMSE | MAE |", "|---|---:|---:|"]
    for d in data.get("rating_deltas", []):
        if keep(d["policy"]):
            out.append(f"| {d['policy']} - {d['baseline']} ({d['against']}) | {signed(d['rmse'])} | "
                       f"{signed(d['mae'])} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--policies", default="", help="comma-separated LLM policies to show (default: all)")
    args = parser.parse_args()
    data = json.loads((args.folder / "eval.json").read_text())
    print(tables(data, [p for p in args.policies.split(",") if p] or None))


if __name__ == "__main__":
    main()
