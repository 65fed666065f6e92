"""Annotator pages: login and logout, my account (password), projects, and the labeling page.

Store calls block, so sync routes run in FastAPI's worker threads and async routes (which must
await the form body) hand them to ``run_in_threadpool``."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.web.deps import Store, Throttle, progress_for, project_or_404
from rlhfkit.feedback.web.errors import status_for
from rlhfkit.feedback.web.markdown import render_markdown
from rlhfkit.feedback.web.models import MAX_ID, FormError, judgement_from_form
from rlhfkit.feedback.web.security import COOKIE, PageUser, check_csrf, cookie_value, throttle_key
from rlhfkit.feedback.web.templating import render

router = APIRouter()


@router.get("/", include_in_schema=False)
def index(request: Request):
    return RedirectResponse("/projects", status_code=303)


# --- session ----------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request):
    return render(request, "login.html", error=None, name="")


@router.post("/login")
async def login(request: Request, store: Store, throttle: Throttle):
    form = await request.form()
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    tkey = throttle_key(request, name)
    wait = throttle.retry_after(tkey)
    if wait:
        response = render(request, "login.html", status=429, name=name,
                          error=f"too many failed logins for this name: try again in {wait} s")
        response.headers["Retry-After"] = str(wait)
        return response
    # Bounded like the API's LoginIn: scrypt over a megabyte-long "password" is a cheap DoS.
    plausible = 0 < len(name) <= 200 and 0 < len(password) <= 1000
    me = await run_in_threadpool(store.authenticate, name, password) if plausible else None
    if me is None:
        throttle.failed(tkey)
        return render(request, "login.html", status=401, error="wrong name or password", name=name)
    throttle.succeeded(tkey)
    token = await run_in_threadpool(store.create_session, me.id)
    response = RedirectResponse("/projects", status_code=303)
    response.set_cookie(COOKIE, cookie_value(request, token), httponly=True, samesite="lax",
                        secure=request.url.scheme == "https", path="/")
    return response


@router.get("/account", response_class=HTMLResponse)
def account_page(request: Request, me: PageUser):
    return render(request, "account.html", error=None, saved=False)


@router.post("/account")
async def account_change(request: Request, me: PageUser, store: Store):
    form = await request.form()
    check_csrf(request, form)
    current, new, again = (str(form.get(k, "")) for k in ("current", "new", "again"))
    if new != again:
        return render(request, "account.html", status=400, saved=False,
                      error="new: the two new passwords differ")
    try:
        await run_in_threadpool(store.change_password, me.id, current, new,
                                keep_session=request.state.session_token)
    except RlhfkitError as e:
        return render(request, "account.html", status=400, saved=False, error=str(e))
    return render(request, "account.html", error=None, saved=True)


@router.post("/logout")
async def logout(request: Request, me: PageUser, store: Store):
    check_csrf(request, await request.form())
    await run_in_threadpool(store.end_session, request.state.session_token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# --- projects and labeling --------------------------------------------------------------------


@router.get("/projects", response_class=HTMLResponse)
def projects_page(request: Request, me: PageUser, store: Store):
    rows = [(p, progress_for(store, p.name, me)) for p in store.list_projects()]
    return render(request, "projects.html", rows=rows)


def _label_page(request: Request, store: Any, me: Any, name: str, *, status: int = 200,
                error: str | None = None, saved: str | None = None) -> HTMLResponse:
    """The next task of the queue for ``me`` (blocking: call it from a worker thread)."""
    project = project_or_404(store, name)
    task = store.next_task(name, me.id)
    return render(request, "label.html", status=status, project=project, task=task,
                  progress=progress_for(store, name, me), error=error, saved=saved,
                  guidelines=render_markdown(project.guidelines),
                  displayed_order=",".join(str(rid) for rid, _ in task.responses) if task else "")


@router.get("/projects/{name}/label", response_class=HTMLResponse)
def label_get(request: Request, name: str, me: PageUser, store: Store, saved: str | None = None):
    return _label_page(request, store, me, name,
                       saved={"1": "saved", "skip": "skipped"}.get(saved or ""))


@router.post("/projects/{name}/label")
async def label_post(request: Request, name: str, me: PageUser, store: Store):
    form = await request.form()
    check_csrf(request, form)
    await run_in_threadpool(project_or_404, store, name)
    try:
        task_id = int(str(form.get("task_id", "")))
    except ValueError:
        task_id = 0
    if not 1 <= task_id <= MAX_ID:
        raise HTTPException(400, "field 'task_id': missing or not a task id")
    if form.get("action") == "skip":
        try:
            await run_in_threadpool(store.skip, task_id, me.id)
        except (RlhfkitError, ValueError, LookupError) as e:
            return await run_in_threadpool(_label_page, request, store, me, name,
                                           status=status_for(e), error=str(e))
        return RedirectResponse(f"/projects/{quote(name, safe='')}/label?saved=skip", status_code=303)
    try:
        payload = judgement_from_form(form)
        await run_in_threadpool(lambda: store.submit(task_id, me.id, **payload, project=name, as_served=True))
    except (RlhfkitError, ValueError, LookupError) as e:
        status = 400 if isinstance(e, FormError) else status_for(e)
        return await run_in_threadpool(_label_page, request, store, me, name, status=status, error=str(e))
    return RedirectResponse(f"/projects/{quote(name, safe='')}/label?saved=1", status_code=303)
