"""The prompt convention: static first, dynamic last.

vLLM's prefix cache reuses the KV cache of the longest prompt prefix it has already seen, token by
token. A prompt therefore costs least when the parts shared by many calls come first and the part that
changes on every call comes last. Order every prompt from the most shared to the least shared:

1. `system`: instructions and output format, the same for every agent of a run;
2. `persona`: the agent's profile, the same for all calls of one agent;
3. `context`: slowly changing material (retrieved lessons, memory of past pages), in a stable order;
4. `dynamic`: what changes on every call (the page shown now, the question).

Never put per-call values (timestamps, page numbers, random ids) into the system text or the persona:
one changed token early in the prompt invalidates the cache for everything after it.
"""

from __future__ import annotations

from collections.abc import Sequence


def build_messages(
    system: str,
    dynamic: str,
    *,
    persona: str | None = None,
    context: Sequence[str] = (),
) -> list[dict[str, str]]:
    """Chat messages in the static-first order: [system (+ persona)], [context..., dynamic].

    The system message holds the instructions and the persona (both static for an agent); the user
    message holds the context blocks, then the dynamic part last.
    """
    system_text = system.strip()
    if persona:
        system_text = f"{system_text}\n\n{persona.strip()}"
    user_parts = [part.strip() for part in context if part and part.strip()]
    user_parts.append(dynamic.strip())
    return [
        {"role": "system", "content": system_text},
        {"role": "user", "content": "\n\n".join(user_parts)},
    ]
