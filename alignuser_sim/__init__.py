"""alignuser-sim: human-aligned synthetic users (AlignUSER) for evaluating recommender systems."""

__version__ = "0.1.0"
