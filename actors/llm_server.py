"""vLLM replicas as Ray actors on the cluster's GPU nodes, with a supervisor that replaces dead ones.

    with ReplicaPool(scenario.serve, served_model_name=scenario.llm.model) as pool:
        endpoints = pool.endpoints()            # one OpenAI base URL per replica
        pool.on_change = lambda urls: ...        # called from the monitor thread when a replica was replaced

- `VLLMReplica` (one actor per replica, `num_gpus = serve.tensor_parallel`: one GPU each, or a tensor
  parallel group of GPUs on one node) runs `python -m vllm.entrypoints.openai.api_server` as a child process
  group through `alignuser_sim.llm.launcher.VLLMServer`, bound to its node's IP at a free port, so shards
  on other nodes reach it. On a GPU node it adds `--tensor-parallel-size` and `--gpu-memory-utilization`;
  `serve.max_model_len`, `serve.model` (None: the embedded model, prepared on the node) and
  `serve.extra_args` pass through. Ray sets CUDA_VISIBLE_DEVICES for the actor and the server inherits it.
  The server dies with its actor (the launcher's PR_SET_PDEATHSIG), whatever kills the actor.
  With the scenario's `llm.api_key_env`, `env` carries `VLLM_API_KEY` (launch.py puts it there): the server
  then requires that key on /v1 (vLLM's `--api-key`, kept out of the process list); /health stays open for
  the monitor.
- `ReplicaPool` starts the replicas (in parallel), waits for each /health, then a monitor thread checks
  every replica each `check_every_s`: the actor must answer and its server must answer /health. A replica
  whose actor died (its node was lost) or whose server failed `unhealthy_after` checks in a row is killed
  and started again as a new actor (Ray places it on any node with a free GPU); its URL usually changes
  (another node, another port), so the pool calls `on_change(urls)` and the run's coordinator passes the
  new list to every shard's LLM client. In between, the clients' retries send the dead replica's calls
  to the other replicas (a transport error makes a call avoid that endpoint).

Tests and CPU machines: `argv` replaces the server's command line (e.g. the fake OpenAI server of
`alignuser_sim.bench.fake_server`, with `{host}`/`{port}` templates) and `num_gpus=0` lets replicas run without a GPU.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from alignuser_sim.config import ServeConfig
from alignuser_sim.errors import UserError
from alignuser_sim.llm.launcher import VLLMServer, detect_device

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_restarts=0)
class VLLMReplica:
    """One vLLM server on this actor's node (see the module docstring)."""

    def __init__(self, index: int, serve: ServeConfig, served_model_name: str, argv: Sequence[str] | None = None,
                 env: dict[str, str] | None = None):
        import ray as _ray

        self.index = index
        self.node_id = _ray.get_runtime_context().get_node_id()
        host = _ray.util.get_node_ip_address()
        extra = list(serve.extra_args)
        if argv is None and detect_device() == "gpu":
            if "--tensor-parallel-size" not in extra:
                extra += ["--tensor-parallel-size", str(serve.tensor_parallel)]
            if "--gpu-memory-utilization" not in extra:
                extra += ["--gpu-memory-utilization", str(serve.gpu_memory_utilization)]
        self.server = VLLMServer(
            serve.model, host=host, served_model_name=served_model_name, max_model_len=serve.max_model_len,
            extra_args=extra, argv=argv, env=env,
        )

    def start(self, timeout_s: float) -> str:
        """Launch the server and wait for its /health; returns its OpenAI base URL."""
        self.server.start()
        try:
            self.server.wait_healthy(timeout_s)
        except BaseException:
            self.server.stop()
            raise
        return self.server.base_url

    def health(self) -> bool:
        import httpx

        if self.server.poll() is not None:
            return False
        try:
            return httpx.get(f"{self.server.url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def info(self) -> dict[str, Any]:
        return {"index": self.index, "url": self.server.base_url, "pid": self.server.pid, "node_id": self.node_id}

    def stop(self) -> None:
        self.server.stop()


class ReplicaPool:
    """Starts, health-checks and replaces `serve.replicas` vLLM replicas (see the module docstring)."""

    def __init__(
        self,
        serve: ServeConfig,
        served_model_name: str,
        *,
        argv: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
        num_gpus: float | None = None,
        startup_timeout_s: float = 1800.0,
        check_every_s: float = 5.0,
        unhealthy_after: int = 3,
        on_change: Callable[[list[str]], None] | None = None,
    ):
        if serve.replicas < 1:
            raise UserError("serve.replicas: must be > 0 to start replicas")
        self.serve, self.served_model_name = serve, served_model_name
        self.argv, self.env = (list(argv) if argv is not None else None), env
        self.num_gpus = float(serve.tensor_parallel) if num_gpus is None else num_gpus
        self.startup_timeout_s = startup_timeout_s
        self.check_every_s, self.unhealthy_after = check_every_s, unhealthy_after
        self.on_change = on_change
        self.replicas: list[Any] = [None] * serve.replicas
        self.urls: list[str | None] = [None] * serve.replicas
        self.strikes = [0] * serve.replicas
        self.replaced = 0
        self._replacing: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    # --- the pool's life ----------------------------------------------------------------------------------
    def _new_actor(self, index: int) -> Any:
        return VLLMReplica.options(num_gpus=self.num_gpus).remote(
            index, self.serve, self.served_model_name, self.argv, self.env)

    def start(self) -> ReplicaPool:
        self._check_gpus()
        actors = [self._new_actor(i) for i in range(self.serve.replicas)]
        refs = [a.start.remote(self.startup_timeout_s) for a in actors]
        try:
            urls = ray.get(refs, timeout=self.startup_timeout_s + 60)
        except BaseException:
            for actor in actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
            raise
        self.replicas, self.urls = actors, list(urls)
        log.info("%d vLLM replicas up: %s", len(urls), ", ".join(urls))
        self._monitor = threading.Thread(target=self._watch, name="vllm-replica-monitor", daemon=True)
        self._monitor.start()
        return self

    def _check_gpus(self) -> None:
        if self.num_gpus <= 0:
            return
        total = ray.cluster_resources().get("GPU", 0)
        need = self.num_gpus * self.serve.replicas
        if total < need:
            raise UserError(
                f"serve.replicas: {self.serve.replicas} replicas x {self.num_gpus:g} GPUs need {need:g} GPUs; the Ray "
                f"cluster has {total:g} (add GPU workers, see cluster.yaml, or use llm.endpoints)")

    def endpoints(self) -> list[str]:
        with self._lock:
            return [u for u in self.urls if u]

    def stop(self) -> None:
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=self.check_every_s + 10)
        with self._lock:
            replicas = [r for r in self.replicas if r is not None]
        with contextlib.suppress(Exception):
            ray.get([r.stop.remote() for r in replicas], timeout=60)
        for replica in replicas:
            with contextlib.suppress(Exception):
                ray.kill(replica)

    def __enter__(self) -> ReplicaPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- health -----------------------------------------------------------------------------------------------
    def check(self) -> list[int]:
        """One round of health checks; returns the indexes of the replicas being replaced from now on (each
        in its own thread: a vLLM start takes minutes and the others keep being checked)."""
        with self._lock:
            refs = {i: actor.health.remote() for i, actor in enumerate(self.replicas) if i not in self._replacing}
        replaced = []
        for i, ref in refs.items():
            try:
                healthy, dead = ray.get(ref, timeout=30), False
            except (RayActorError, GetTimeoutError):
                healthy, dead = False, True
            self.strikes[i] = 0 if healthy else self.strikes[i] + 1
            if dead or self.strikes[i] >= self.unhealthy_after:
                log.warning("vLLM replica %d (%s) %s: replacing it", i, self.urls[i],
                            "lost its actor" if dead else f"failed {self.strikes[i]} health checks")
                with self._lock:
                    self._replacing.add(i)
                threading.Thread(target=self._replace, args=(i,), name=f"vllm-replica-{i}", daemon=True).start()
                replaced.append(i)
        return replaced

    def _replace(self, index: int) -> None:
        with contextlib.suppress(Exception):
            ray.kill(self.replicas[index])
        with self._lock:
            self.urls[index] = None
        self._notify()
        try:
            while not self._stop.is_set():
                actor = self._new_actor(index)
                try:
                    url = ray.get(actor.start.remote(self.startup_timeout_s), timeout=self.startup_timeout_s + 60)
                except Exception as exc:  # a start that failed: try again (another node may take it)
                    log.warning("vLLM replica %d did not start again (%s); retrying", index, exc)
                    with contextlib.suppress(Exception):
                        ray.kill(actor)
                    self._stop.wait(self.check_every_s)
                    continue
                with self._lock:
                    self.replicas[index], self.urls[index] = actor, url
                    self.strikes[index] = 0
                    self.replaced += 1
                log.info("vLLM replica %d is back at %s", index, url)
                self._notify()
                return
        finally:
            with self._lock:
                self._replacing.discard(index)

    def _notify(self) -> None:
        urls = self.endpoints()
        if self.on_change is not None and urls:
            try:
                self.on_change(urls)
            except Exception:  # the run goes on with the clients' retries
                log.exception("updating the endpoints failed")

    def _watch(self) -> None:
        while not self._stop.wait(self.check_every_s):
            try:
                self.check()
            except Exception:
                log.exception("vLLM replica health check failed")

    def status(self) -> list[dict[str, Any]]:
        return [{"index": i, "url": self.urls[i], "strikes": self.strikes[i]} for i in range(len(self.replicas))]


def wait_for(predicate: Callable[[], bool], timeout_s: float, every_s: float = 0.2) -> bool:
    """Poll until `predicate()` or the time runs out (tests and the CLI use it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return predicate()
