"""What the labelling page shows of one task, prepared for the template: the conversation and the
responses as sanitized markdown, each response under its letter and opaque handle, and for a pair
a side-by-side diff (see :mod:`.diff`)."""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from rlhfkit.feedback.web.diff import side_by_side
from rlhfkit.feedback.web.markdown import render_markdown

ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


@dataclass(frozen=True)
class Shown:
    """One response as the annotator sees it."""

    letter: str
    handle: str
    html: Markup
    preview: str  # the first words, for the ranking list


def _preview(text: str, limit: int = 90) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


def task_context(task: Any) -> dict:
    """Template variables for ``task`` (a store ``TaskView``)."""
    letters = string.ascii_uppercase
    shown = [Shown(letters[k], handle, render_markdown(text, breaks=True), _preview(text))
             for k, ((_, text), handle) in enumerate(zip(task.responses, task.handles))]
    chat = None
    if task.messages is not None:
        chat = [{"role": m["role"], "name": ROLE_NAMES.get(m["role"], m["role"]),
                 "html": render_markdown(m["content"], breaks=True)} for m in task.messages]
    diff = side_by_side(task.responses[0][1], task.responses[1][1]) if task.kind == "pair" else None
    return {"shown": shown, "chat": chat, "prompt_html": render_markdown(task.prompt, breaks=True),
            "diff": diff, "displayed_order": ",".join(task.handles)}
