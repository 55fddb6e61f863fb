"""Shared fixtures. Fixture modules are split by concern so parallel work does not collide."""

import os
import tempfile

# every test run gets its own cache root unless the caller pinned one (CI keeps downloads across tests)
os.environ.setdefault("ALIGNUSER_SIM_HOME", os.path.join(tempfile.gettempdir(), "alignuser-sim-test-home"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from .fixtures_data import *  # noqa: E402,F403
from .fixtures_llm import *  # noqa: E402,F403
from .fixtures_ray import *  # noqa: E402,F403
