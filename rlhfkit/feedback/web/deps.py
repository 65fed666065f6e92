"""What routes share: the app's store and login throttle (on ``app.state``, put there by
``create_app``, so routers hold no closures), and the store look-ups every router makes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.exceptions import HTTPException

from rlhfkit.errors import RlhfkitError


async def get_store(request: Request) -> Any:
    """The app's FeedbackStore (async: reading an attribute needs no worker thread)."""
    return request.app.state.store


async def get_throttle(request: Request) -> Any:
    """The app's LoginThrottle, shared by the login form and ``POST /api/login``."""
    return request.app.state.throttle


# Route parameters ``store: Store`` / ``throttle: Throttle``: Annotated keeps Depends() out of defaults.
Store = Annotated[Any, Depends(get_store)]
Throttle = Annotated[Any, Depends(get_throttle)]


def project_or_404(store: Any, name: str) -> Any:
    try:
        return store.get_project(name)
    except (RlhfkitError, ValueError, LookupError) as e:
        raise HTTPException(404, str(e)) from None


def progress_for(store: Any, project: str, me: Any) -> dict:
    """The store's progress; annotators see the project totals and their own count only."""
    p = dict(store.progress(project))
    per = p.get("per_annotator", {}) or {}
    p["mine"] = int(per.get(me.name, 0))
    if me.role != "admin":
        p.pop("per_annotator", None)
    return p
