"""The reference policies alone (no LLM, no server) on a scenario's eval users and pages, in a FRESH folder.

For a reference added after an eval folder was written (least-popular), when that folder's LLM policies can
no longer be re-planned there (their learning folder changed since): the pages depend only on the scenario's
seed, users and `eval`/`pages` settings, so benchmarks/paired_across.py pairs this folder's rows with the old
folder's, and checks that every page holds the same items.

    python benchmarks/references_only.py SCENARIO OUT_DIR [--ratios 1,3,9]
    python benchmarks/eval_table.py OUT_DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alignuser_sim.config import load_scenario
from alignuser_sim.evaluation.micro import open_stores, plan_eval
from alignuser_sim.evaluation.references import write_references
from alignuser_sim.evaluation.summary import summarize, write_summary


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario")
    ap.add_argument("out")
    ap.add_argument("--ratios", default=None, help="comma-separated (default: the scenario's eval.ratios)")
    args = ap.parse_args()
    folder = Path(args.out)
    if folder.exists() and any(folder.iterdir()):
        print(f"{folder}: not empty; give a fresh folder", file=sys.stderr)
        return 2
    scenario = load_scenario(args.scenario)
    if args.ratios:
        scenario.eval.ratios = [int(r) for r in args.ratios.split(",")]
    plan = plan_eval(scenario, folder, ["prompt-only"], True)  # the policy is only planned: no call is made
    stores = open_stores(folder, scenario.eval.flush_s)
    written = write_references(plan, stores)
    for table in stores:
        table.finalize()
    write_summary(folder, summarize(folder))
    print(f"{written} reference decisions and ratings in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
