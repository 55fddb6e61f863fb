"""The scripted user of `alignuser_sim.bench.fake_users.fake_decision`, for simulation tests.

Use it in-process (`ScriptedLLM(fake_user_responder)`) or behind a real socket (`fake_user_server()`),
which is how Ray shards in tests reach it.
"""

from __future__ import annotations

import json
from typing import Any

from alignuser_sim.bench.fake_users import fake_decision
from alignuser_sim.testing.http_server import Reply, ScriptedServer


def fake_user_responder(request: Any) -> dict[str, Any]:
    """For `alignuser_sim.testing.fake_llm.ScriptedLLM`."""
    return fake_decision(request.messages, request.schema)


def fake_user_server(delay_s: float = 0.0) -> ScriptedServer:
    """An OpenAI-compatible HTTP server answering page decisions (start it with `with`)."""

    def respond(body: dict[str, Any], n: int) -> Reply:
        schema = body["response_format"]["json_schema"]["schema"]
        text = json.dumps(fake_decision(body["messages"], schema))
        prompt = sum(len(str(m.get("content", ""))) for m in body["messages"]) // 4
        return Reply(text, prompt_tokens=prompt, completion_tokens=len(text) // 4, delay_s=delay_s)

    return ScriptedServer(respond)
