"""The Jinja2 environment (one per app, on ``app.state.templates``) and page rendering."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from rlhfkit.feedback.web.security import csrf_token

FEEDBACK_DIR = Path(__file__).resolve().parent.parent  # templates/ and static/ sit beside web/
TEMPLATES_DIR = FEEDBACK_DIR / "templates"
STATIC_DIR = FEEDBACK_DIR / "static"
STRENGTHS = {1: "slightly better", 2: "better", 3: "clearly better", 4: "much better"}


def fmt(x: Any, digits: int = 3) -> str:
    """Numbers for the admin tables: '–' for missing / NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def make_env() -> Environment:
    # Autoescaping is on for everything: prompts and responses are untrusted text.
    env = Environment(loader=FileSystemLoader(str(TEMPLATES_DIR)),
                      autoescape=select_autoescape(["html"], default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.globals["strengths"] = STRENGTHS
    return env


def render(request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    """``template`` with ``ctx``, plus the signed-in annotator and the CSRF token of their session."""
    me = getattr(request.state, "annotator", None)
    token = getattr(request.state, "session_token", None)
    env: Environment = request.app.state.templates
    body = env.get_template(template).render(me=me, csrf=csrf_token(request, token) if token else "", **ctx)
    return HTMLResponse(body, status_code=status)
