"""A scripted OpenAI-compatible HTTP server on a real local socket, for the client's fault tests.

    with ScriptedServer([status(500), status(429, retry_after=0.2), Reply(json_text)]) as srv:
        client = LLMClient([srv.base_url], ...)

Each POST to /v1/chat/completions takes the next step of the script (the last step repeats when the
script runs out), or asks `responder(request_json, n)` when a function is given. Steps:
- `Reply(content, finish_reason="stop", prompt_tokens=.., completion_tokens=.., delay_s=0)`: a
  chat completion (after `delay_s`: longer than the client's timeout makes a timeout);
- `status(code, message=..., retry_after=None)`: an error status with an OpenAI-style error body;
- `drop()`: close the connection without answering (a connection error);
- `hold(event, then)`: wait until a `threading.Event` is set, then answer the `Reply` `then`.
Every request is recorded (`requests`: the JSON bodies, `times`), and `max_in_flight` is the largest
number of requests handled at once. GET /health answers 200.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    content: str | None
    finish_reason: str = "stop"
    prompt_tokens: int = 10
    completion_tokens: int = 5
    delay_s: float = 0.0


@dataclass
class Fault:
    kind: str  # status | drop | hold
    status: int = 500
    message: str = "scripted failure"
    retry_after: float | str | None = None
    event: threading.Event | None = None
    then: Reply | None = None
    headers: dict[str, str] = field(default_factory=dict)



def drop() -> Fault:
    """Close the connection without answering (the client sees a connection error)."""
    return Fault("drop")


def hold(event: threading.Event, then: Reply) -> Fault:
    """Keep the request open until `event` is set, then answer `then`."""
    return Fault("hold", event=event, then=then)


def status(code: int, message: str = "scripted failure", retry_after: float | str | None = None) -> Fault:
    """An HTTP error reply (module-level helper: `status(500)`, `status(429, retry_after=0.2)`)."""
    return Fault("status", status=code, message=message, retry_after=retry_after)


Step = Reply | Fault
Responder = Callable[[dict[str, Any], int], Step]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the default stderr log
        pass

    def _send_json(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/") in ("/health", "/v1/health"):
            self._send_json(200, {})
        elif self.path.rstrip("/") == "/v1/models":
            self._send_json(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})
        else:
            self._send_json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        owner = self.server.owner
        n, step = owner._next(body)
        owner._enter()
        try:
            self._serve_step(step, body, n)
        finally:
            owner._leave()

    def _serve_step(self, step: Step, body: dict[str, Any], n: int) -> None:
        if isinstance(step, Fault):
            if step.kind == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if step.kind == "hold":
                assert step.event is not None and step.then is not None
                step.event.wait(30)
                step = step.then
            else:
                headers = dict(step.headers)
                if step.retry_after is not None:
                    headers["Retry-After"] = str(step.retry_after)
                error = {"error": {"message": step.message, "type": "scripted", "code": step.status}}
                self._send_json(step.status, error, headers)
                return
        assert isinstance(step, Reply)
        if step.delay_s:
            time.sleep(step.delay_s)
        self._send_json(
            200,
            {
                "id": f"chatcmpl-{n}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "scripted"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": step.content},
                        "finish_reason": step.finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": step.prompt_tokens,
                    "completion_tokens": step.completion_tokens,
                    "total_tokens": step.prompt_tokens + step.completion_tokens,
                },
            },
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: ScriptedServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that gave up (timeout test) leaves a broken pipe behind: expected, not worth a traceback
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class ScriptedServer:
    """See the module docstring. A context manager; `base_url` is the OpenAI base URL."""

    def __init__(self, script: Sequence[Step] | Responder, host: str = "127.0.0.1"):
        self._script = list(script) if not callable(script) else []
        self._responder = script if callable(script) else None
        self._lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._httpd = _Server((host, 0), _Handler)
        self._httpd.owner = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def count(self) -> int:
        return len(self.requests)

    def _next(self, body: dict[str, Any]) -> tuple[int, Step]:
        with self._lock:
            n = len(self.requests)
            self.requests.append(body)
            self.times.append(time.monotonic())
            if self._responder is not None:
                return n, self._responder(body, n)
            if not self._script:
                return n, status(500, "empty script")
            return n, self._script[min(n, len(self._script) - 1)]

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def start(self) -> ScriptedServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
