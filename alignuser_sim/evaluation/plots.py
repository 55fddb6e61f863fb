"""The report's PNG plots (`alignuser-sim report`), drawn from the numbers of each section.

matplotlib is imported only when plotting, with the Agg backend (no display needed). A plot over
categories (genres) shows the `TOP_CATEGORIES` most frequent and one "other" bar for the rest, so it stays
readable on any dataset (a video-games dataset's 120+ genres made a 4,000-pixel-tall plot).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignuser_sim.evaluation.discriminator import FEATURES, MODELS
from alignuser_sim.evaluation.macro import LABELS
from alignuser_sim.evaluation.ranking import OUTCOMES

TOP_CATEGORIES = 20


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_macro(macro: dict[str, Any], out: Path) -> list[Path]:
    import numpy as np

    plt = _pyplot()
    paths = []
    numeric = [n for n in ("ratings", "watches_per_page", "pages_per_session", "exit_page")
               if n in macro["distributions"]]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, name in zip(axes.flat, numeric, strict=False):
        d = macro["distributions"][name]
        x = np.arange(len(d["support"]))
        for offset, side, color in ((-0.2, "human", "#4c72b0"), (0.2, "simulated", "#dd8452")):
            counts = np.asarray(d[side], dtype=float)
            share = counts / counts.sum() if counts.sum() else counts
            ax.bar(x + offset, share, width=0.4, label=f"{side} (n={int(counts.sum())})", color=color)
        ax.set_xticks(x, [str(s) for s in d["support"]])
        kl = "n/a" if d["kl"] is None else f"{d['kl']:.3f}"
        w = "n/a" if d["wasserstein"] is None else f"{d['wasserstein']:.3f}"
        ax.set_title(f"{LABELS[name]}: KL {kl}, W1 {w}", fontsize=10)
        ax.set_ylabel("share")
        ax.legend(fontsize=8)
    fig.suptitle(f"{macro['dataset']} / {macro['recommender']}: human vs simulated")
    fig.tight_layout()
    paths.append(_save(fig, out / "macro_distributions.png"))
    d = macro["distributions"].get("genres")
    if d and d["support"]:
        labels, sides = top_categories(d["support"], {"human": d["human"], "simulated": d["simulated"]})
        fig, ax = plt.subplots(figsize=(10, max(3, 0.3 * len(labels) + 1)))
        y = np.arange(len(labels))
        for offset, side, color in ((-0.2, "human", "#4c72b0"), (0.2, "simulated", "#dd8452")):
            counts = np.asarray(sides[side], dtype=float)
            share = counts / counts.sum() if counts.sum() else counts
            ax.barh(y + offset, share, height=0.4, label=f"{side} (n={int(counts.sum())})", color=color)
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        kl = "n/a" if d["kl"] is None else f"{d['kl']:.3f}"
        shown = f" (top {len(labels) - 1} of {len(d['support'])})" if len(labels) < len(d["support"]) else ""
        ax.set_title(f"genres of watched items{shown}: KL {kl}")
        ax.set_xlabel("share")
        ax.legend()
        fig.tight_layout()
        paths.append(_save(fig, out / "macro_genres.png"))
    return paths


def top_categories(support: list[str], counts: dict[str, list[float]],
                   top: int = TOP_CATEGORIES) -> tuple[list[str], dict[str, list[float]]]:
    """The `top` categories by their mean share over the sides, in that order, then "other (N)" holding the
    counts of the N others; all of them when there are at most `top + 1` (an "other" of one is no saving)."""
    import numpy as np

    table = np.asarray([counts[side] for side in counts], dtype=float).reshape(len(counts), len(support))
    totals = table.sum(axis=1, keepdims=True)
    share = np.divide(table, totals, out=np.zeros_like(table), where=totals > 0).mean(axis=0)
    order = sorted(range(len(support)), key=lambda i: (-share[i], str(support[i])))
    if len(support) <= top + 1:
        return [str(support[i]) for i in order], {side: [table[s, i] for i in order] for s, side in enumerate(counts)}
    kept, rest = order[:top], order[top:]
    labels = [str(support[i]) for i in kept] + [f"other ({len(rest)})"]
    return labels, {side: [table[s, i] for i in kept] + [table[s, rest].sum()] for s, side in enumerate(counts)}


def plot_discriminator(result: dict[str, Any], out: Path) -> list[Path]:
    """What gives the simulation away: the logistic model's standardized coefficients (signed) and the
    booster's permutation importance, one bar per feature; the title holds both AUCs."""
    import numpy as np

    plt = _pyplot()
    names = result["features"]
    order = sorted(range(len(names)), key=lambda i: abs(result["coefficients"][names[i]]))
    labels = [FEATURES.get(names[i], names[i]) for i in order]
    fig, axes = plt.subplots(1, 2, figsize=(13, max(3.5, 0.45 * len(names) + 1.5)), sharey=True)
    y = np.arange(len(names))
    coef = [result["coefficients"][names[i]] for i in order]
    axes[0].barh(y, coef, color=["#dd8452" if c > 0 else "#4c72b0" for c in coef])
    axes[0].axvline(0, color="#333", linewidth=0.8)
    axes[0].set_yticks(y, labels, fontsize=9)
    axes[0].set_title("logistic: standardized coefficient\n(> 0: simulated sessions have more)", fontsize=10)
    axes[1].barh(y, [result["importance"][names[i]] for i in order], color="#55a868")
    axes[1].axvline(0, color="#333", linewidth=0.8)
    axes[1].set_title("boosting: permutation importance\n(held-out AUC lost when shuffled)", fontsize=10)
    aucs = ", ".join(f"{MODELS[m]} {_estimate(e)}" for m, e in result["auc"].items())
    fig.suptitle(f"simulated vs human sessions, ROC AUC (0.5 = indistinguishable): {aucs}", fontsize=10)
    fig.tight_layout()
    return [_save(fig, out / "discriminator.png")]


def _estimate(d: dict[str, Any]) -> str:
    if d.get("value") is None:
        return "n/a"
    interval = f" [{d['lo']:.2f}, {d['hi']:.2f}]" if d.get("lo") is not None and d.get("hi") is not None else ""
    return f"{d['value']:.2f}{interval}"


def plot_micro(micro: dict[str, Any], out: Path) -> list[Path]:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6), sharey=True)
    for ax, metric in zip(axes, ("accuracy", "precision", "recall", "f1"), strict=True):
        for policy in micro["policies"]:
            rows = [r for r in micro["micro"] if r["policy"] == policy and r[metric]["value"] is not None]
            if not rows:
                continue
            errors = [_errors(r[metric]) for r in rows]
            ax.errorbar([r["ratio"] for r in rows], [r[metric]["value"] for r in rows],
                        yerr=[[e[0] for e in errors], [e[1] for e in errors]], marker="o", capsize=3, label=policy)
        ratios = sorted({r["ratio"] for r in micro["micro"]})
        ax.set_xticks(ratios, [f"1:{r}" for r in ratios])
        ax.set_title(metric)
        ax.set_ylim(0, 1)
        ax.set_xlabel("positives : negatives")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{micro['dataset']}: micro metrics, {micro['users']} users, 95% bootstrap intervals")
    fig.tight_layout()
    return [_save(fig, out / "micro_metrics.png")]


def plot_ranking(ranking: dict[str, Any], out: Path) -> list[Path]:
    plt = _pyplot()
    offline = f"ndcg@{ranking['k']}"
    fig, axes = plt.subplots(1, len(OUTCOMES), figsize=(15, 3.8))
    for ax, outcome in zip(axes, OUTCOMES, strict=True):
        for row in ranking["rows"]:
            x, y = row[offline]["value"], row[outcome]["value"]
            if x is None or y is None:
                continue
            low, high = _errors(row[outcome])
            ax.errorbar([x], [y], yerr=[[low], [high]], marker="o", capsize=3)
            ax.annotate(row["recommender"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        tau = next(t for t in ranking["tau"] if t["offline"] == offline and t["outcome"] == outcome)
        value = "n/a" if tau["value"] is None else f"{tau['value']:.2f}"
        ax.set_title(f"{outcome} (tau {value})", fontsize=10)
        ax.set_xlabel(f"offline {offline}")
    fig.suptitle(f"{ranking['dataset']}: simulated outcome vs offline metric per recommender")
    fig.tight_layout()
    return [_save(fig, out / "ranking.png")]


def _errors(d: dict[str, Any]) -> tuple[float, float]:
    """Error-bar lengths below and above the value (0 without an interval)."""
    value = d["value"]
    low = value - d["lo"] if d.get("lo") is not None else 0.0
    high = d["hi"] - value if d.get("hi") is not None else 0.0
    return max(0.0, low), max(0.0, high)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
