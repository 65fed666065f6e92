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
from rlhfkit.feedback.web.security import ApiUser, login_failed, login_refusal, login_succeeded

router = APIRouter()


def _task_json(t: Any) -> dict:
    # Responses are named by their opaque per-task handles: response ids would leak model identity.
    return {"id": t.id, "project": t.project, "prompt": t.prompt, "kind": t.kind,
            "messages": list(t.messages) if t.messages is not None else None,
            "responses": [{"id": h, "text": text} for (_, text), h in zip(t.responses, t.handles)],
            "calibration": t.calibration, "guideline_version": t.guideline_version}


@router.post("/api/login")
def api_login(body: LoginIn, request: Request, store: Store, throttle: Throttle):
    refused = login_refusal(throttle, request, body.name)
    if refused:
        raise HTTPException(429, refused[1], headers={"Retry-After": str(refused[0])})
    me = store.authenticate(body.name, body.password, include_inactive=True)
    if me is None:
        login_failed(throttle, request, body.name)
        raise HTTPException(401, "wrong name or password")
    login_succeeded(throttle, request, body.name)
    if not me.active:
        raise HTTPException(403, "this account is deactivated; ask an admin to reactivate it")
    # must_change_password: the token works for POST /api/password only until the password is changed.
    return {"token": store.create_session(me.id),
            "annotator": {"id": me.id, "name": me.name, "role": me.role,
                          "must_change_password": me.must_change_password}}


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
                          "annotators_per_task": p.annotators_per_task} for p in store.projects_for(me.id)]}


@router.get("/api/projects/{name}/next")
def api_next(name: str, me: ApiUser, store: Store):
    project_or_404(store, name)
    task = store.next_task(name, me.id)
    return {"task": _task_json(task) if task else None}


@router.post("/api/tasks/{task_id}/judgement")
def api_submit(task_id: TaskId, body: JudgementIn, me: ApiUser, store: Store):
    try:
        jid = store.submit(task_id, me.id, **body.model_dump(), as_served=True, opaque=True)
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


@router.get("/api/projects/{name}/last")
def api_last(name: str, me: ApiUser, store: Store):
    """The caller's last judgement in the project with their answer, while it may still be revised."""
    project_or_404(store, name)
    task = store.last_judgement(name, me.id)
    if task is None:
        return {"task": None}
    return {"task": {**_task_json(task), "judgement_id": task.revision_of, "answer": task.answer}}


@router.post("/api/tasks/{task_id}/revision")
def api_revise(task_id: TaskId, body: JudgementIn, me: ApiUser, store: Store):
    """Replace the caller's judgement of the task (the earlier answer is kept in its history)."""
    try:
        jid = store.revise(task_id, me.id, **body.model_dump(), opaque=True)
    except (RlhfkitError, ValueError, LookupError) as e:
        raise store_error(e) from None
    return {"judgement_id": jid}


@router.get("/api/projects/{name}/progress")
def api_progress(name: str, me: ApiUser, store: Store):
    project_or_404(store, name)
    return progress_for(store, name, me)
