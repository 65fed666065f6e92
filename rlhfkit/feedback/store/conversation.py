"""Conversational prompts: a chat history whose next assistant turn the responses are.

The data layer's conversational format (TRL's: ``[{"role": ..., "content": ...}, ...]``, roles of
:data:`rlhfkit.data.rows.ROLES`). A prompt conversation must not end with the assistant: the
responses being compared *are* the assistant's next turn. Pure functions, no database.
"""

from __future__ import annotations

import json
from typing import Any

from rlhfkit.data.rows import ROLES

from .canonical import _short
from .errors import StoreError

MAX_MESSAGES = 200


def check_messages(messages: Any, field: str = "prompt") -> list[dict]:
    """``messages`` as a list of plain ``{"role", "content"}`` dicts, or a StoreError naming the
    message. Other keys (names, tool calls) are dropped: the labelling page shows role and text."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise StoreError(f"a conversation must be a non-empty list of messages, got {_short(messages)}",
                         field=field)
    if len(messages) > MAX_MESSAGES:
        raise StoreError(f"has {len(messages)} messages; at most {MAX_MESSAGES}", field=field)
    out = []
    for i, m in enumerate(messages, start=1):
        if not isinstance(m, dict):
            raise StoreError(f"message {i} must be an object with 'role' and 'content', got {_short(m)}",
                             field=field)
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise StoreError(f"message {i} has role {_short(role)}; expected one of {', '.join(ROLES)}",
                             field=field)
        if not isinstance(content, str):
            raise StoreError(f"message {i} ({role}) needs text content, got {_short(content)}", field=field)
        out.append({"role": role, "content": content})
    if out[-1]["role"] == "assistant":
        raise StoreError("the last message is the assistant's; the responses to compare are the assistant's "
                         "next turn, so the conversation must end with the user (or a tool)", field=field)
    if not any(m["content"].strip() for m in out):
        raise StoreError("every message of the conversation is blank", field=field)
    return out


def canonical_json(messages: list[dict]) -> str:
    """One spelling per conversation: the key a conversation is de-duplicated on."""
    return json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def transcript(messages: list[dict]) -> str:
    """A plain-text rendering for places that show a prompt as one string (admin tables, logs)."""
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)
