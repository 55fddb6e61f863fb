"""A fast fake OpenAI-compatible server: a stand-in for a GPU vLLM server, so that the simulation's own cost
shows at scales this CPU's real model (~0.4 calls/s) cannot reach.

`FakeServer` runs `serve_fake` in its own process (its own interpreter and GIL, like a real server):
asyncio, thousands of open requests on one thread, each answered like the scripted user of
`fake_users.fake_decision` after a latency drawn from a log-normal (median `latency_s`, spread `jitter`).
GET /stats tells how many requests came and how many were open at once. Like vLLM, it requires the key in
the environment variable VLLM_API_KEY when that is set (a Bearer token on /v1, else 401). Also runnable alone
(Ray's vLLM replicas start it this way in tests, through `fake_server_argv`):

    python -m alignuser_sim.bench.fake_server --port 8000 --latency 1.0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import resource
import secrets
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from alignuser_sim.bench.fake_users import fake_reply, fake_text

API_KEY_VAR = "VLLM_API_KEY"  # the variable vLLM reads its required key from


@dataclass
class FakeServerState:
    latency_s: float
    jitter: float
    rng: random.Random
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    api_key: str | None = None
    unauthorized: int = 0

    def authorized(self, path: str, headers: dict[str, str]) -> bool:
        """vLLM's rule: with a key, every /v1 route needs `Authorization: Bearer <key>`; /health does not."""
        if not self.api_key or not path.startswith("/v1"):
            return True
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(token.encode(), self.api_key.encode())

    def delay(self) -> float:
        if self.latency_s <= 0:
            return 0.0
        return self.latency_s * math.exp(self.jitter * self.rng.gauss(0.0, 1.0)) if self.jitter else self.latency_s


def fake_completion(body: dict[str, Any], n: int) -> dict[str, Any]:
    """A chat completion: a page decision (a scripted user), the smallest instance of another schema, or free
    text (`fake_text`: the Agent4Rec-style loop's lines) without a schema."""
    messages = body.get("messages") or []
    fmt = body.get("response_format") or {}
    schema = (fmt.get("json_schema") or {}).get("schema")
    if schema:
        text = json.dumps(fake_reply(messages, schema))
    else:
        text = fake_text(messages, int(body.get("max_tokens") or 16))
    prompt = sum(len(str(m.get("content", ""))) for m in messages) // 4
    return {
        "id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": len(text) // 4,
                  "total_tokens": prompt + len(text) // 4},
    }


async def _route(state: FakeServerState, method: str, path: str, body: bytes,
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    path = path.split("?", 1)[0].rstrip("/")
    if not state.authorized(path, headers or {}):
        state.unauthorized += 1
        return 401, {"error": "Unauthorized"}
    if method == "GET" and path in ("/health", "/v1/health"):
        return 200, {}
    if method == "GET" and path == "/v1/models":
        return 200, {"object": "list", "data": [{"id": "fake", "object": "model"}]}
    if method == "GET" and path == "/stats":
        return 200, {"requests": state.requests, "max_in_flight": state.max_in_flight, "in_flight": state.in_flight,
                     "unauthorized": state.unauthorized}
    if method == "POST" and path == "/v1/chat/completions":
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            return 400, {"error": {"message": "invalid JSON body"}}
        n = state.requests
        state.requests += 1
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            await asyncio.sleep(state.delay())
            return 200, fake_completion(request, n)
        finally:
            state.in_flight -= 1
    return 404, {"error": {"message": f"no route {method} {path}"}}


async def _handle(state: FakeServerState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """HTTP/1.1 with keep-alive, Content-Length bodies only (what the OpenAI and httpx clients send)."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
            body = await reader.readexactly(int(headers.get("content-length") or 0))
            code, payload = await _route(state, method, path, body, headers)
            data = json.dumps(payload).encode()
            writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (code, b"OK" if code == 200 else b"ERROR", len(data), data))
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def serve_fake(host: str, port: int, latency_s: float, jitter: float, seed: int = 0,
                     api_key: str | None = None) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # thousands of open requests
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    state = FakeServerState(latency_s, jitter, random.Random(seed), api_key=api_key or None)
    server = await asyncio.start_server(lambda r, w: _handle(state, r, w), host, port, backlog=4096)
    async with server:
        await server.serve_forever()


class FakeServer:
    """`serve_fake` in a child process (its own interpreter and GIL, like a real server). Context manager."""

    def __init__(self, latency_s: float = 1.0, jitter: float = 0.5, host: str = "127.0.0.1", port: int | None = None,
                 seed: int = 0, api_key: str | None = None):
        from alignuser_sim.llm.launcher import free_port

        self.latency_s, self.jitter, self.host, self.seed = latency_s, jitter, host, seed
        self.api_key = api_key
        self.port = port or free_port(host)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def argv(self) -> list[str]:
        return fake_server_argv(self.host, str(self.port), self.latency_s, self.jitter, self.seed)

    def start(self, timeout_s: float = 30.0) -> FakeServer:
        env = {k: v for k, v in os.environ.items() if k != API_KEY_VAR}  # a key only when asked for
        if self.api_key:
            env[API_KEY_VAR] = self.api_key
        self.process = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fake server exited with code {self.process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{self.host}:{self.port}/health", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"fake server not answering on port {self.port} after {timeout_s:g}s")

    def stats(self) -> dict[str, int]:
        return httpx.get(f"http://{self.host}:{self.port}/stats", timeout=5).json()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def fake_server_argv(host: str, port: str, latency_s: float = 0.0, jitter: float = 0.0, seed: int = 0) -> list[str]:
    """The command line of a fake server (host and port may be the launcher's `{host}`/`{port}` templates)."""
    return [sys.executable, "-m", "alignuser_sim.bench.fake_server", "--host", host, "--port", port,
            "--latency", str(latency_s), "--jitter", str(jitter), "--seed", str(seed)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m alignuser_sim.bench.fake_server",
                                     description="Serve fake page decisions (OpenAI-compatible) until killed.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=1.0, help="Median seconds per completion.")
    parser.add_argument("--jitter", type=float, default=0.5, help="Log-normal sigma of the latency (0: fixed).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_fake(args.host, args.port, args.latency, args.jitter, args.seed,
                               api_key=os.environ.get(API_KEY_VAR)))


if __name__ == "__main__":
    main()
