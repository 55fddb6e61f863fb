"""A scenario's LLM endpoints, reachable, as one client: what every command that calls a model opens first.

The endpoints are the scenario's `llm.endpoints`, or else the embedded vLLM server started for the block
(`launcher.embedded_endpoints`). A named endpoint that does not answer at all fails here, in one line,
before minutes of data preparation or a run's planning; a server that answers but is busy or erroring is
the client's retries' business.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from alignuser_sim.errors import UserError
from alignuser_sim.store import VLLM_LOG

if TYPE_CHECKING:
    from alignuser_sim.config import LLMConfig
    from alignuser_sim.llm.client import LLMClient


def check_endpoints(endpoints: list[str], timeout_s: float = 10.0, *, api_key_env: str | None = None) -> None:
    """Fail in one line naming the endpoint when it does not answer (a typo, a server not started) or refuses
    the API key (`llm.api_key_env`: none sent, or the wrong one): every call would fail the same way."""
    import httpx

    from alignuser_sim.llm.transport import AUTH_STATUS, api_key_from_env, auth_hint

    key = api_key_from_env(api_key_env)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    for url in endpoints:
        try:
            status = httpx.get(url.rstrip("/") + "/models", headers=headers, timeout=timeout_s).status_code
        except httpx.HTTPError as exc:
            raise UserError(f"llm.endpoints: {url}: not reachable ({type(exc).__name__})") from None
        if status in AUTH_STATUS:
            raise UserError(f"llm.endpoints: {url}: {auth_hint(status, api_key_env)}")


def embedded_note(log_path: Path) -> str:
    """The line a user sees while the embedded server starts (it takes a while on a CPU)."""
    return f"starting the embedded vLLM server (about 40 s on 2 CPU cores); log {log_path}"


@contextlib.contextmanager
def open_client(config: LLMConfig, folder: Path, note: Callable[[str], None] | None = None) -> Iterator[LLMClient]:
    """The client of `config` for the block, its cache and accounting in `folder`; the embedded server (its
    log `folder/vllm.log`) runs for the block when the scenario names no endpoint, announced through `note`."""
    from alignuser_sim.llm.client import LLMClient
    from alignuser_sim.llm.launcher import embedded_endpoints

    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / VLLM_LOG
    if not config.endpoints and note is not None:
        note(embedded_note(log_path))
    with embedded_endpoints(config, log_path=log_path) as endpoints:
        check_endpoints(endpoints, api_key_env=config.api_key_env)
        client = LLMClient.from_config(config, endpoints=endpoints, run_dir=folder)
        try:
            yield client
        finally:
            client.close()
