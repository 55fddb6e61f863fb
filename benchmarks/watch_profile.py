"""What a policy's page decisions follow: the page's popularity, the page's order, or the user's taste.

Accuracy alone does not say why a policy sits at chance. This reads an eval folder's decisions and, per
policy and ratio, gives the items watched per page, precision (against the page's base rate), and two
within-page AUCs over every (watched, not watched) pair of items on the same page:

- `AUC popularity`: how often the watched item has more training-split interactions than the unwatched one
  (ties count half). 0.5: the policy ignores the stats the page shows; the popularity reference is 1.0.
- `AUC position`: how often the watched item comes earlier on the page. 0.5: no order preference.

The `positives` row gives the same AUCs for the human's own choices (the held-out positives against the
page's negatives): how much popularity separates them on this dataset, i.e. what following it can earn.

    python benchmarks/watch_profile.py runs/ml-1m-eval/eval [--ratio 1]
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from alignuser_sim.config.loading import load_scenario
from alignuser_sim.data.holdout import split_dataset
from alignuser_sim.data.loaders import load_dataset


def pair_auc(flags: list[bool], score: list[float]) -> tuple[float, int]:
    """Sum of wins (ties half) of flagged over unflagged items by `score`, and the number of pairs."""
    wins, pairs = 0.0, 0
    for i, a in enumerate(flags):
        if not a:
            continue
        for j, b in enumerate(flags):
            if b:
                continue
            pairs += 1
            wins += 1.0 if score[i] > score[j] else 0.5 if score[i] == score[j] else 0.0
    return wins, pairs


def profile(rows: list[dict], popularity: dict[str, int]) -> dict[tuple[str, int], dict[str, float]]:
    acc: dict[tuple[str, int], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for r in rows:
        items, pos, watched = r["items"], r["positive"], r["watched"]
        pop = [float(popularity.get(i, 0)) for i in items]
        early = [-float(k) for k in range(len(items))]
        for label, flags in ((r["policy"], watched), ("positives", pos)):
            if label == "positives" and r["policy"] != "always-watch":
                continue  # the human's row once per page (every policy sees the same pages)
            a = acc[(label, r["ratio"])]
            a["pages"] += 1
            a["watched"] += sum(flags)
            a["hits"] += sum(1 for w, p in zip(flags, pos, strict=True) if w and p)
            a["positives"] += sum(pos)
            a["items"] += len(items)
            for key, score in (("pop", pop), ("pos", early)):
                w, n = pair_auc(flags, score)
                a[key + "_wins"] += w
                a[key + "_pairs"] += n
    return acc


def table(acc: dict[tuple[str, int], dict[str, float]], ratio: int | None) -> str:
    out = ["| policy | ratio | watched / page | precision | base rate | AUC popularity | AUC position |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for (policy, r), a in sorted(acc.items(), key=lambda kv: (kv[0][1], kv[0][0] != "positives", kv[0][0])):
        if ratio is not None and r != ratio:
            continue
        precision = a["hits"] / a["watched"] if a["watched"] else float("nan")

        def auc(key: str, a: dict[str, float] = a) -> str:
            return f"{a[key + '_wins'] / a[key + '_pairs']:.3f}" if a[key + "_pairs"] else "-"

        out.append(f"| {policy} | 1:{r} | {a['watched'] / a['pages']:.2f} | {precision:.3f} | "
                   f"{a['positives'] / a['items']:.3f} | {auc('pop')} | {auc('pos')} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="an eval folder (holds decisions.parquet and scenario.yaml)")
    parser.add_argument("--ratio", type=int, default=None, help="only this ratio (1 for 1:1)")
    args = parser.parse_args()
    scenario = load_scenario(args.folder / "scenario.yaml")
    train, _ = split_dataset(load_dataset(scenario.dataset))
    counts = train.interactions.group_by("item_id").aggregate([("item_id", "count")])
    popularity = dict(zip(counts["item_id"].to_pylist(), counts["item_id_count"].to_pylist(), strict=True))
    rows = pq.read_table(args.folder / "decisions.parquet").to_pylist()
    print(table(profile(rows, popularity), args.ratio))


if __name__ == "__main__":
    main()
