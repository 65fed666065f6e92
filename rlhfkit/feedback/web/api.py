"""The JSON API: ``Authorization: Bearer <token>`` from ``POST /api/login``, never the cookie,
so it cannot be driven cross-site. Bodies are pydantic models (a malformed one is a 422)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException

from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.web.deps import Store, Throttle, progress_for, project_or_404
from rlhfkit.feedback.web.errors import store_error
from rlhfkit.feedback.web.models import JudgementIn, LoginIn, PasswordIn, TaskId
from rlhfkit.feedback.web.security import ApiUser, throttle_key

router = APIRouter()


def _task_json(t: Any) -> dict:
    return {"id": t.id, "project": t.project, "prompt": t.prompt, "kind": t.kind,
            "responses": [{"id": rid, "text": text} for rid, text in t.responses],
            "calibration": t.calibration, "guideline_version": t.guideline_version}


@router.post("/api/login")
def api_login(body: LoginIn, request: Request, store: Store, throttle: Throttle):
    tkey = throttle_key(request, body.name)
    wait = throttle.retry_after(tkey)
    if wait:
        raise HTTPException(429, f"too many failed logins for this name: try again in {wait} s",
                            headers={"Retry-After": str(wait)})
    me = store.authenticate(body.name, body.password)
    if me is None:
        throttle.failed(tkey)
        raise HTTPException(401, "wrong name or password")
    throttle.succeeded(tkey)
    return {"token": store.create_session(me.id),
            "annotator": {"id": me.id, "name": me.name, "role": me.role}}


@router.post("/api/password")
def api_password(body: PasswordIn, request: Request, me: ApiUser, store: Store):
    # Keep the token this request came with: only the caller's other sessions end.
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    try:
        store.change_password(me.id, body.current, body.new, keep_session=token)
    except RlhfkitError as e:
        raise HTTPException(400, str(e)) from None
    return {"changed": True}


@router.get("/api/projects")
def api_projects(me: ApiUser, store: Store):
    return {"projects": [{"name": p.name, "guidelines": p.guidelines,
                          "guideline_version": p.guideline_version,
                          "annotators_per_task": p.annotators_per_task} for p in store.list_projects()]}


@router.get("/api/projects/{name}/next")
def api_next(name: str, me: ApiUser, store: Store):
    project_or_404(store, name)
    task = store.next_task(name, me.id)
    return {"task": _task_json(task) if task else None}


@router.post("/api/tasks/{task_id}/judgement")
def api_submit(task_id: TaskId, body: JudgementIn, me: ApiUser, store: Store):
    try:
        jid = store.submit(task_id, me.id, **body.model_dump(), as_served=True)
    except (RlhfkitError, ValueError, LookupError) as e:
        raise store_error(e) from None
    return {"judgement_id": jid}


@router.post("/api/tasks/{task_id}/skip")
def api_skip(task_id: TaskId, me: ApiUser, store: Store):
    try:
        store.skip(task_id, me.id)
    except (RlhfkitError, ValueError, LookupError) as e:
        raise store_error(e) from None
    return {"skipped": task_id}


@router.get("/api/projects/{name}/progress")
def api_progress(name: str, me: ApiUser, store: Store):
    project_or_404(store, name)
    return progress_for(store, name, me)
