"""Evaluation metrics as pure functions over numpy arrays (no files, no LLM): micro (classification and
rating error), macro (distribution distances), ranking agreement (Kendall tau), and the user bootstrap that
puts a 95% interval on each. The runners that produce their inputs live in `evaluation/`: `micro.py`
and `summary.py` (micro), `ranking.py` (ranking), `macro.py` (macro from a run folder)."""

from alignuser_sim.metrics.bootstrap import Estimate, bootstrap
from alignuser_sim.metrics.macro import kl_divergence, total_variation, wasserstein
from alignuser_sim.metrics.micro import confusion, rating_sums
from alignuser_sim.metrics.ranking import kendall_tau, tau_estimate

__all__ = ["Estimate", "bootstrap", "confusion", "kendall_tau", "kl_divergence", "rating_sums", "tau_estimate",
           "total_variation", "wasserstein"]
