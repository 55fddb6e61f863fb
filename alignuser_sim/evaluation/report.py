"""`alignuser-sim report`: one readable document (report.md + report.html + PNG plots) from result folders.

Sections, each present when its files are:
- macro: a simulation run folder (events.parquet, scenario.yaml): `evaluation/macro.macro_summary`;
- discriminator: the same run folder, `evaluation/discriminator.discriminate` (one line instead when the run
  is too small for it);
- judge: the same run folder once `alignuser-sim judge` has written judge.json there,
  `evaluation/judge.judge_summary` over the stored judgements;
- micro: an eval folder (plan.json + decisions): `evaluation/summary.summarize`;
- ranking: a compare folder (compare_plan.json + runs): `evaluation/ranking.summarize_compare`.

Every number is computed from those files by the same functions the commands use, never copied from a
summary someone could have edited; this module only renders them. The JSON the numbers came from is written
beside the report (`report.json`). report.md links the PNGs (plots/, `evaluation/plots.py`); report.html
embeds them (base64), so it can be mailed alone.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignuser_sim import store
from alignuser_sim.errors import UserError
from alignuser_sim.evaluation.discriminator import MODELS, discriminate, top_features
from alignuser_sim.evaluation.judge import JUDGE_FILE, judge_summary
from alignuser_sim.evaluation.macro import LABELS, macro_summary
from alignuser_sim.evaluation.plots import plot_discriminator, plot_macro, plot_micro, plot_ranking
from alignuser_sim.evaluation.ranking import OUTCOMES, summarize_compare
from alignuser_sim.evaluation.summary import summarize
from alignuser_sim.store import CompareFolder, EvalFolder, RunFolder


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    path: str  # relative to the report folder
    alt: str


@dataclass
class Section:
    title: str
    blocks: list[str | Table | Image] = field(default_factory=list)


# --- finding the inputs -------------------------------------------------------------------------------------


@dataclass
class Inputs:
    run: Path | None = None
    eval: Path | None = None
    compare: Path | None = None


def _first(candidates: list[Path], is_one: Callable[[Path], Any]) -> Path | None:
    return next((c for c in candidates if is_one(c).exists()), None)


def find_inputs(path: Path, eval_dir: Path | None = None, compare_dir: Path | None = None) -> Inputs:
    """What to report on: the folder itself (a run, an eval or a compare folder) and, unless given, the
    eval and compare folders found beside or under it (OUTPUT_DIR/NAME/eval and .../compare)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such folder")
    for given, option in ((eval_dir, "--eval"), (compare_dir, "--compare")):
        if given is not None and not Path(given).is_dir():
            raise UserError(f"{option}: {given}: no such folder")
    inputs = Inputs()
    if RunFolder(path).exists() or RunFolder(path).events.exists():
        inputs.run = path
    inputs.eval = Path(eval_dir) if eval_dir else _first([path, path / "eval", path.parent / "eval"], EvalFolder)
    inputs.compare = Path(compare_dir) if compare_dir else _first(
        [path, path / "compare", path.parent / "compare"], CompareFolder)
    if inputs.eval and not EvalFolder(inputs.eval).exists():
        raise UserError(f"--eval: {inputs.eval}: not an eval folder (no plan.json)")
    if inputs.compare and not CompareFolder(inputs.compare).exists():
        raise UserError(f"--compare: {inputs.compare}: not a compare folder (no compare_plan.json)")
    if not (inputs.run or inputs.eval or inputs.compare):
        raise UserError(f"{path}: nothing to report: not a run folder (run.json), an eval folder (plan.json) "
                        f"or a compare folder (compare_plan.json)")
    return inputs


# --- sections --------------------------------------------------------------------------------------------------


def ci(d: dict[str, Any] | None, digits: int = 3) -> str:
    if not d or d.get("value") is None:
        return "n/a"
    if d.get("lo") is None or d.get("hi") is None:
        return f"{d['value']:.{digits}f}"
    return f"{d['value']:.{digits}f} [{d['lo']:.{digits}f}, {d['hi']:.{digits}f}]"


def _num(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def macro_section(macro: dict[str, Any], images: list[Image]) -> Section:
    s = Section("Macro: simulated population vs humans")
    s.blocks.append(
        f"Run `{macro['run_id']}` ({macro['run_dir']}): {macro['users']} users of {macro['dataset']}, recommender "
        f"{macro['recommender']}, policy {macro['policy']}, at most {macro['page_cap']} pages of "
        f"{macro['items_per_page']} items. Simulated: {macro['simulated']['sessions']} sessions, "
        f"{macro['simulated']['pages']} decided pages, {macro['simulated']['failed_pages']} failed pages and "
        f"{macro['simulated'].get('failed_sessions', 0)} sessions they ended (left out). "
        f"Human: the rollouts of the same users ({macro['human_source']}), sessions cut at the page cap: "
        f"{macro['human']['sessions']} sessions, {macro['human']['pages']} pages.")
    s.blocks.append("KL(human || simulated) in nats with both histograms smoothed by eps = 1e-3; total variation "
                    "in [0, 1]; W1 = Wasserstein-1 distance in the distribution's unit (numeric ones only).")
    rows = []
    for name, d in macro["distributions"].items():
        rows.append([LABELS[name], str(d["n_human"]), str(d["n_simulated"]), _num(d["mean_human"], 2),
                     _num(d["mean_simulated"], 2), _num(d["kl"]), _num(d["total_variation"]), _num(d["wasserstein"])])
    s.blocks.append(Table(["distribution", "n human", "n simulated", "mean human", "mean simulated", "KL", "TV",
                           "W1"], rows))
    s.blocks.extend(images)
    return s


DISCRIMINATOR_TITLE = "Discriminator: can a classifier tell simulated sessions from human ones?"


def discriminator_section(result: dict[str, Any], images: list[Image]) -> Section:
    s = Section(DISCRIMINATOR_TITLE)
    if result.get("skipped"):
        s.blocks.append(f"Not computed: {result['skipped']}")
        return s
    n = result["sessions"]
    s.blocks.append(
        f"One row of features per session: simulated (the run's events, sessions with a failed page left out) "
        f"and human (the rollouts of the same {result['users']} users on the training split, cut at "
        f"{result['page_cap']} pages). {n['simulated']} simulated and {n['human']} human sessions, {n['per_side']} "
        f"of each used (the larger side subsampled, seed {result['seed']}). ROC AUC of the out-of-fold "
        f"predictions ({result['folds']}-fold stratified cross-validation), 95% bootstrap interval over sessions "
        f"({result['draws']} draws): 0.5 = indistinguishable, 1 = every session gives itself away.")
    s.blocks.append(Table(["model", "ROC AUC"], [[MODELS[m], ci(e)] for m, e in result["auc"].items()]))
    s.blocks.append("What gives the simulation away (standardized logistic coefficient: > 0 = simulated sessions "
                    "have more of it; permutation importance: held-out AUC the booster loses when the feature is "
                    "shuffled):")
    rows = [[r["label"], _num(r["simulated"], 2), _num(r["human"], 2), f"{r['coefficient']:+.2f}",
             f"{r['importance']:.3f}"] for r in top_features(result)]
    s.blocks.append(Table(["feature", "mean simulated", "mean human", "coefficient", "importance"], rows))
    s.blocks.extend(images)
    return s


JUDGE_TITLE = "Judge: human-likeness and thought-action consistency"


def judge_section(result: dict[str, Any]) -> Section:
    s = Section(JUDGE_TITLE)
    if result.get("skipped"):
        s.blocks.append(f"Not computed: {result['skipped']}")
        return s
    like = result["likeness"]
    s.blocks.append(
        f"A judge model ({result['model']}) scores sessions from 1 (clearly not a real user) to 5 (indistinguishable "
        f"from one), one call per session, not told whether a session is simulated or human: one simulated and one "
        f"human session (the rollouts on the training split, cut at {result['page_cap']} pages) of each of "
        f"{result['judged_users']} users (of {result['eligible_users']} with both). The score depends on the judge "
        f"model: read the simulated score beside the humans', not alone. Thoughts "
        f"{'shown' if result.get('thoughts') else 'not shown'} to the judge. 95% bootstrap intervals over users "
        f"({result['draws']} draws); the difference is paired on the users judged on both sides.")
    s.blocks.append(Table(["sessions", "judged", "mean score", *(f"score {k}" for k in range(1, 6))], [
        [side, str(like["sessions"][side]), ci(like[side], 2), *(str(like["histogram"][side][str(k)])
                                                                   for k in range(1, 6))]
        for side in ("simulated", "human")] + [
        ["simulated - human (paired)", str(like["paired_users"]), ci(like["difference"], 2), *([""] * 5)]]))
    if like.get("lowest"):
        s.blocks.append("The judge's reasons for the lowest-scored simulated sessions: " + "; ".join(
            f"user {r['user_id']} ({r['score']}): {r['reason']}" for r in like["lowest"]))
    c = result["consistency"]
    if c.get("skipped"):
        s.blocks.append(f"Thought-action consistency: {c['skipped']}.")
    else:
        s.blocks.append(f"Thought-action consistency: the judge says the thought supports the action taken in "
                        f"{ci(c['share'])} of {c['decisions']} simulated decisions with a thought (share, 95% "
                        f"bootstrap interval over users).")
    if result.get("failed"):
        s.blocks.append("Judge replies that did not validate (left out): " + ", ".join(
            f"{k}: {v}" for k, v in sorted(result["failed"].items())))
    return s


def _difference(d: dict[str, Any]) -> str:
    return f"{d['policy']} - {d['baseline']}" + (" (best reference)" if d.get("against") == "best reference" else "")


def micro_section(micro: dict[str, Any], images: list[Image]) -> Section:
    s = Section("Micro: preference alignment and ratings")
    s.blocks.append(
        f"Eval folder {micro['folder']}: {micro['users']} held-out users of {micro['dataset']}. Each user's "
        f"held-out items (positives) mixed with items they never interacted with (negatives) at 1:r; the agent "
        f"decides page by page and a watched item is a predicted positive. Metrics pooled over items; "
        f"intervals: 95% percentile bootstrap over users, {micro['bootstrap']} draws (seed {micro['seed']}).")
    if micro.get("references"):
        s.blocks.append(
            "Kind `reference`: policies without any LLM on the very same pages (evaluation/references.py), "
            "knowing only the training split: always-watch; random at the user's training watch rate; popularity "
            "(the page's most watched items in training, as many as that rate implies); popularity-oracle (the "
            "same, told how many positives the page holds: no real policy knows that); least-popular (the page's "
            "least watched items at the user's rate: strong where the held-out items are the niche ones); for "
            "ratings the global, item and user mean. A fidelity number counts only above them.")
    rows = [[r["policy"], r.get("kind", "llm"), f"1:{r['ratio']}", str(r["users"]), str(r["items"]), ci(r["accuracy"]),
             ci(r["precision"]), ci(r["recall"]), ci(r["f1"]), f"{r['failed_pages']} ({r['failed_items']} items)"]
            for r in micro["micro"]]
    s.blocks.append(Table(["policy", "kind", "ratio", "users", "items", "accuracy", "precision", "recall", "F1",
                           "failed pages"], rows))
    if micro.get("deltas"):
        s.blocks.append("Each LLM policy minus the first and minus the best reference (the reference with the "
                        "highest accuracy at that ratio), paired on the same users (the interval resamples users "
                        "once for both policies):")
        rows = [[_difference(d), f"1:{d['ratio']}", str(d["users"]),
                 *(ci(d[m]) for m in ("accuracy", "precision", "recall", "f1"))] for d in micro["deltas"]]
        s.blocks.append(Table(["difference", "ratio", "users", "accuracy", "precision", "recall", "F1"], rows))
    if micro["ratings"]:
        s.blocks.append("Rating prediction: the agent rates held-out items that carry a human rating (one call per "
                        "user); coverage = items it rated / items asked. KL = KL(human || predicted) in nats between "
                        "the rating histograms (rounded to 1..5, +0.5 per bin) of the items both rated.")
        rows = [[r["policy"], r.get("kind", "llm"), str(r["users"]), str(r["asked"]), _num(r["coverage"], 2),
                 ci(r["rmse"]), ci(r["mae"]), _num(r.get("kl")), str(r["failed_calls"])] for r in micro["ratings"]]
        s.blocks.append(Table(["policy", "kind", "users", "items asked", "coverage", "RMSE", "MAE", "KL",
                               "failed calls"], rows))
    if micro.get("rating_deltas"):
        s.blocks.append("Rating error of each LLM policy minus the first and minus the best rating reference (lowest "
                        "RMSE), paired on the same users (negative: the policy errs less):")
        rows = [[_difference(d), str(d["users"]), ci(d["rmse"]), ci(d["mae"])] for d in micro["rating_deltas"]]
        s.blocks.append(Table(["difference", "users", "RMSE", "MAE"], rows))
    s.blocks.extend(images)
    return s


def ranking_section(ranking: dict[str, Any], images: list[Image]) -> Section:
    s = Section("Recommender ranking: simulated users vs offline metrics")
    k = ranking["k"]
    s.blocks.append(
        f"Compare folder {ranking['folder']}: the same {ranking['simulated_users']} simulated users "
        f"(policy {ranking.get('policy') or 'n/a'}) against each "
        f"recommender; offline Recall@{k} / NDCG@{k} over {ranking['offline_users']} test users. watch_rate = "
        f"watched / shown; mean_rating of watched items; session_length = pages seen; satisfaction = share of "
        f"pages with a watched item rated 4 or 5. Means over users with 95% bootstrap intervals.")
    header = ["recommender", *OUTCOMES, f"recall@{k}", f"ndcg@{k}", "failed pages"]
    rows = [[r["recommender"], *(ci(r[o]) for o in OUTCOMES), ci(r[f"recall@{k}"], 4), ci(r[f"ndcg@{k}"], 4),
             str(r["failed_pages"])] for r in ranking["rows"]]
    s.blocks.append(Table(header, rows))
    s.blocks.append("Ranks (1 = best; ties share the average rank):")
    names = ranking["recommenders"]
    s.blocks.append(Table(["by", *names], [[key, *(f"{v:g}" for v in values)]
                                          for key, values in ranking["ranks"].items()]))
    s.blocks.append("Kendall tau-b between each offline ranking and each simulated ranking (95% bootstrap interval, "
                    "simulated and offline users resampled independently):")
    reference = ranking.get("reference")
    if reference is None:
        s.blocks.append(Table(["offline", "outcome", "tau"], [[t["offline"], t["outcome"], ci(t, 2)]
                                                               for t in ranking["tau"]]))
    else:
        ref_tau = {(t["offline"], t["outcome"]): t for t in reference["tau"]}
        s.blocks.append(Table(
            ["offline", "outcome", f"tau, {ranking.get('policy') or 'simulated'}", "tau, popularity reference"],
            [[t["offline"], t["outcome"], ci(t, 2), ci(ref_tau[(t["offline"], t["outcome"])], 2)]
             for t in ranking["tau"]]))
        s.blocks.append(
            f"The popularity reference is a simulated user with no LLM ({reference['folder']}): the page's most "
            "popular items at its human's training watch rate, rated at their training mean. An LLM policy's "
            "agreement counts only beyond what this user already gives. Its outcomes:")
        s.blocks.append(Table(["recommender", *OUTCOMES], [[r["recommender"], *(ci(r[o]) for o in OUTCOMES)]
                                                         for r in reference["rows"]]))
    s.blocks.extend(images)
    return s


# --- rendering ------------------------------------------------------------------------------------------------


def render_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                lines.append("| " + " | ".join(block.header) + " |")
                lines.append("| " + " | ".join("---" for _ in block.header) + " |")
                lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in block.rows]
            elif isinstance(block, Image):
                lines.append(f"![{block.alt}]({block.path})")
            else:
                lines.append(block)
            lines.append("")
    return "\n".join(lines)


CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;"
       "text-align:right}th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}"
       "img{max-width:100%;border:1px solid #eee;margin:0.5em 0}")


def render_html(title: str, sections: list[Section], folder: Path) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
                body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                               for row in block.rows)
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif isinstance(block, Image):
                data = base64.b64encode((folder / block.path).read_bytes()).decode()
                parts.append(f"<figure><img alt='{html.escape(block.alt)}' src='data:image/png;base64,{data}'>"
                             f"</figure>")
            else:
                parts.append(f"<p>{html.escape(block)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(inputs: Inputs, out: Path) -> dict[str, Any]:
    """Compute each section's numbers from its files, plot, and write report.md, report.html, report.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = out / "plots"
    data: dict[str, Any] = {}
    sections = []

    def images(paths: list[Path]) -> list[Image]:
        return [Image(str(p.relative_to(out)), p.stem.replace("_", " ")) for p in paths]

    if inputs.run:
        data["macro"] = macro_summary(inputs.run)
        sections.append(macro_section(data["macro"], images(plot_macro(data["macro"], plots))))
        if RunFolder(inputs.run).events.exists():
            try:
                data["discriminator"] = discriminate(inputs.run)
            except UserError as exc:  # too few sessions, no scikit-learn: the section says so, the rest stands
                data["discriminator"] = {"skipped": str(exc)}
            result = data["discriminator"]
            shown = [] if result.get("skipped") else images(plot_discriminator(result, plots))
            sections.append(discriminator_section(result, shown))
        if (Path(inputs.run) / JUDGE_FILE).exists():
            try:
                data["judge"] = judge_summary(inputs.run)
            except UserError as exc:
                data["judge"] = {"skipped": str(exc)}
            sections.append(judge_section(data["judge"]))
    if inputs.eval:
        data["micro"] = summarize(inputs.eval)
        if data["micro"]["micro"]:
            sections.append(micro_section(data["micro"], images(plot_micro(data["micro"], plots))))
    if inputs.compare:
        data["ranking"] = summarize_compare(inputs.compare)
        sections.append(ranking_section(data["ranking"], images(plot_ranking(data["ranking"], plots))))
    if not sections:
        raise UserError(f"{out}: nothing to report (the eval folder holds no decisions yet)")
    name = next((d.get("scenario") for d in data.values() if d.get("scenario")), "") or out.name
    title = f"alignuser-sim report: {name}"
    store.write_text(out / "report.md", render_markdown(title, sections))
    store.write_text(out / "report.html", render_html(title, sections, out))
    store.write_json(out / "report.json", data, default=str)
    return data
