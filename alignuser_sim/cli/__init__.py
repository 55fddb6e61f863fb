"""The `alignuser-sim` command: the one package that wires the library, Ray placement (`actors/`) and the
terminal together. Every other package is usable without it."""

from alignuser_sim.cli.root import app, main

__all__ = ["app", "main"]
