"""Admin pages for people (role admin, 403 otherwise): one annotator's record across projects, and
what an admin does to accounts and project membership.

    GET  /admin/annotators/{id}                       drill-down: status, per-project record, actions
    POST /admin/annotators/{id}/active                deactivate (active=0) or reactivate (active=1)
    POST /admin/annotators/{id}/password              reset: a generated password, shown once, that
                                                      must be replaced at the next login
    POST /admin/annotators/{id}/sessions/end          log them out everywhere (sessions, API tokens)
    POST /admin/projects/{name}/access                members_only=1 restricts the project, 0 opens it
    POST /admin/projects/{name}/members               add annotator_id as a member
    POST /admin/projects/{name}/members/{id}/remove   take them off

Every action is a CSRF-checked form post answered with a redirect (or, for a password reset, the
page that shows the new password once), so a reload never repeats it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback import quality
from rlhfkit.feedback.web.deps import Store, project_or_404
from rlhfkit.feedback.web.errors import store_error
from rlhfkit.feedback.web.models import MAX_ID, TaskId
from rlhfkit.feedback.web.security import PageAdmin, check_csrf
from rlhfkit.feedback.web.templating import render

router = APIRouter()


def _annotator_or_404(store: Any, annotator_id: int) -> Any:
    try:
        return store.get_annotator_by_id(annotator_id)
    except (RlhfkitError, ValueError, LookupError) as e:
        raise HTTPException(404, str(e)) from None


def _annotator_page(request: Request, store: Any, annotator_id: int, *, password: str | None = None,
                    flash: str | None = None) -> HTMLResponse:
    """The drill-down of one annotator (blocking: call it from a worker thread)."""
    who = _annotator_or_404(store, annotator_id)
    projects = []
    for p in store.list_projects():
        js = store.judgements(p.name)
        if any(j["annotator_id"] == who.id for j in js) or who in store.members(p.name):
            projects.append((p, quality.annotator_record(js, who.id), store.may_label(p.name, who.id)))
    return render(request, "admin_annotator.html", who=who, projects=projects, password=password, flash=flash,
                  sessions=store.session_count(who.id))


@router.get("/admin/annotators/{annotator_id}", response_class=HTMLResponse)
def annotator_page(request: Request, annotator_id: TaskId, me: PageAdmin, store: Store,
                   done: str | None = None):
    flash = {"deactivated": "Deactivated: their sessions ended and their reserved tasks were freed.",
             "reactivated": "Reactivated: they can log in again.",
             "sessions": "Logged out everywhere."}.get(done or "")
    return _annotator_page(request, store, annotator_id, flash=flash)


def _back(annotator_id: int, done: str) -> RedirectResponse:
    return RedirectResponse(f"/admin/annotators/{annotator_id}?done={done}", status_code=303)


@router.post("/admin/annotators/{annotator_id}/active")
async def set_active(request: Request, annotator_id: TaskId, me: PageAdmin, store: Store):
    form = await request.form()
    check_csrf(request, form)
    value = str(form.get("active", ""))
    if value not in ("0", "1"):
        raise HTTPException(400, "field 'active': must be 0 (deactivate) or 1 (reactivate)")
    await run_in_threadpool(_annotator_or_404, store, annotator_id)
    if value == "0" and annotator_id == me.id:
        raise HTTPException(400, "field 'active': you cannot deactivate your own account")
    await run_in_threadpool(store.set_active, annotator_id, value == "1")
    return _back(annotator_id, "reactivated" if value == "1" else "deactivated")


@router.post("/admin/annotators/{annotator_id}/password", response_class=HTMLResponse)
async def reset_password(request: Request, annotator_id: TaskId, me: PageAdmin, store: Store):
    check_csrf(request, await request.form())
    await run_in_threadpool(_annotator_or_404, store, annotator_id)
    password = await run_in_threadpool(store.reset_password, annotator_id)
    # Shown on this response only (never in a URL or a later page); stored hashed.
    return await run_in_threadpool(lambda: _annotator_page(request, store, annotator_id, password=password))


@router.post("/admin/annotators/{annotator_id}/sessions/end")
async def end_sessions(request: Request, annotator_id: TaskId, me: PageAdmin, store: Store):
    check_csrf(request, await request.form())
    await run_in_threadpool(_annotator_or_404, store, annotator_id)
    await run_in_threadpool(store.end_all_sessions, annotator_id)
    return _back(annotator_id, "sessions")


# --- membership -------------------------------------------------------------------------------


def _to_project(name: str) -> RedirectResponse:
    return RedirectResponse(f"/admin/projects/{quote(name, safe='')}#access", status_code=303)


@router.post("/admin/projects/{name}/access")
async def set_access(request: Request, name: str, me: PageAdmin, store: Store):
    form = await request.form()
    check_csrf(request, form)
    await run_in_threadpool(project_or_404, store, name)
    value = str(form.get("members_only", ""))
    if value not in ("0", "1"):
        raise HTTPException(400, "field 'members_only': must be 0 (open to all) or 1 (members only)")
    await run_in_threadpool(store.set_members_only, name, value == "1")
    return _to_project(name)


def _form_id(form: Any, field: str) -> int:
    try:
        value = int(str(form.get(field, "")))
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_ID:
        raise HTTPException(400, f"field '{field}': missing or not an id")
    return value


@router.post("/admin/projects/{name}/members")
async def add_member(request: Request, name: str, me: PageAdmin, store: Store):
    form = await request.form()
    check_csrf(request, form)
    await run_in_threadpool(project_or_404, store, name)
    try:
        await run_in_threadpool(store.add_member, name, _form_id(form, "annotator_id"))
    except (RlhfkitError, ValueError, LookupError) as e:
        raise store_error(e) from None
    return _to_project(name)


@router.post("/admin/projects/{name}/members/{annotator_id}/remove")
async def remove_member(request: Request, name: str, annotator_id: TaskId, me: PageAdmin, store: Store):
    check_csrf(request, await request.form())
    await run_in_threadpool(project_or_404, store, name)
    await run_in_threadpool(store.remove_member, name, annotator_id)
    return _to_project(name)
