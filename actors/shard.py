"""PersonaShard: one Ray actor hosting MANY persona agents (a shard), not one process per agent.

An async actor: its agents' LLM calls run concurrently on its event loop, bounded by the LLM client's
semaphore; `decide_stream` hands each decision back as soon as it is made (the driver's pipelining). The
actor is restartable (`max_restarts`); after a restart its constructor runs again with the same arguments
and the coordinator calls `restore` with the agents' logged events before sending pages again.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import ray

from alignuser_sim.agent.policy import PolicySetup
from alignuser_sim.config import LLMConfig
from alignuser_sim.core import Catalogue
from alignuser_sim.data.personas import Persona
from alignuser_sim.llm import LLMClient
from alignuser_sim.llm.accounting import FailureLog
from alignuser_sim.simulation.driver import PageRequest, ShardCore
from alignuser_sim.simulation.events import Event


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class PersonaShard:
    def __init__(
        self,
        shard_id: int,
        personas: list[Persona],
        items: Any,  # the plan's items table: what agents see of each item, rating stats included
        llm_config: LLMConfig,
        endpoints: list[str],
        run_id: str,
        seed: int,
        cache_path: str | None,
        run_dir: str | None,
        policy: PolicySetup,
        max_chunk: int,
    ):
        import openai  # noqa: F401 - the client imports it on its first call; pay that at start-up, not mid-run

        self.llm = LLMClient.from_config(llm_config, endpoints=endpoints, cache_path=cache_path, run_dir=run_dir,
                                         rng_seed=seed + shard_id)
        # failed calls are held here and drained by the coordinator into the head's run folder: this shard may
        # run on another node, whose disk nobody reads
        self.llm.failure_log = FailureLog(None, hold=True)
        self.core = ShardCore(shard_id, personas, Catalogue(items), self.llm, run_id, seed=seed, policy=policy,
                              max_chunk=max_chunk)

    def ping(self) -> int:
        return os.getpid()

    def where(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}

    def set_endpoints(self, urls: list[str]) -> int:
        """Balance over these LLM endpoints from now on (a vLLM replica was replaced at a new URL); the
        endpoints kept keep their connections and counters."""
        return self.llm.set_endpoints(urls)

    async def decide(self, requests: list[PageRequest]) -> list[Event]:
        return await self.core.decide(requests)

    async def decide_stream(self, requests: list[PageRequest]) -> AsyncIterator[list[Event]]:
        """Decisions as they are made (a Ray streaming generator: call with num_returns="streaming")."""
        async for chunk in self.core.decide_stream(requests):
            yield chunk

    def restore(self, events: list[Event]) -> int:
        return self.core.restore(events)

    def llm_snapshot(self) -> dict[str, Any]:
        return self.core.llm_snapshot()

    def drain_failures(self) -> tuple[list[str], int]:
        """The failed calls' JSON lines held since the last drain, and how many did not fit."""
        return self.llm.failure_log.drain()
