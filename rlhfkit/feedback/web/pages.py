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
from rlhfkit.feedback.web.labelview import task_context
from rlhfkit.feedback.web.models import MAX_ID, FormError, judgement_from_form, prefill_from_form
from rlhfkit.feedback.web.security import (
    COOKIE,
    PageUser,
    check_csrf,
    cookie_value,
    login_failed,
    login_refusal,
    login_succeeded,
)
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
    refused = login_refusal(throttle, request, name)
    if refused:
        wait, why = refused
        response = render(request, "login.html", status=429, name=name, error=why)
        response.headers["Retry-After"] = str(wait)
        return response
    # Bounded like the API's LoginIn: scrypt over a megabyte-long "password" is a cheap DoS.
    plausible = 0 < len(name) <= 200 and 0 < len(password) <= 1000
    me = (await run_in_threadpool(lambda: store.authenticate(name, password, include_inactive=True))
          if plausible else None)
    if me is None:
        login_failed(throttle, request, name)
        return render(request, "login.html", status=401, error="wrong name or password", name=name)
    login_succeeded(throttle, request, name)
    if not me.active:  # the right password: saying why is no help to a guesser
        return render(request, "login.html", status=403, name=name,
                      error="this account is deactivated; ask an admin to reactivate it")
    token = await run_in_threadpool(store.create_session, me.id)
    # An invited or reset account chooses its own password before anything else.
    response = RedirectResponse("/account" if me.must_change_password else "/projects", status_code=303)
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
    # Only the projects this annotator may label: members-only ones they are not in stay hidden.
    rows = [(p, progress_for(store, p.name, me)) for p in store.projects_for(me.id)]
    return render(request, "projects.html", rows=rows)


def _label_page(request: Request, store: Any, me: Any, name: str, *, status: int = 200,
                error: str | None = None, saved: str | None = None, revise: bool = False,
                prefill: dict | None = None, task_id: int | None = None) -> HTMLResponse:
    """The next task of the queue for ``me``, or with ``revise`` their last judgement reopened
    (blocking: call it from a worker thread). ``prefill``: what they had entered for ``task_id``
    when the server refused it, put back instead of an empty form."""
    project = project_or_404(store, name)
    task = store.last_judgement(name, me.id) if revise else None
    if revise and task is None:
        error = error or "Nothing to revise: you have no judgement here recent enough to revise."
    task = task or store.next_task(name, me.id)
    answer = task.answer if task is not None else None
    if prefill is not None and task is not None and task.id == task_id:
        answer = prefill
    return render(request, "label.html", status=status, project=project, task=task,
                  progress=progress_for(store, name, me), error=error, saved=saved,
                  guidelines=render_markdown(project.guidelines), answer=answer or {},
                  **(task_context(task) if task else {}))


SAVED = {"1": "saved", "skip": "skipped", "revised": "revised"}


@router.get("/projects/{name}/label", response_class=HTMLResponse)
def label_get(request: Request, name: str, me: PageUser, store: Store, saved: str | None = None,
              revise: str | None = None):
    return _label_page(request, store, me, name, saved=SAVED.get(saved or ""), revise=revise == "1")


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
    here = f"/projects/{quote(name, safe='')}/label"
    if form.get("action") == "skip":
        try:
            await run_in_threadpool(store.skip, task_id, me.id)
        except (RlhfkitError, ValueError, LookupError) as e:
            return await run_in_threadpool(_label_page, request, store, me, name,
                                           status=status_for(e), error=str(e))
        return RedirectResponse(f"{here}?saved=skip", status_code=303)
    revising = form.get("revise") == "1"
    try:
        payload = judgement_from_form(form)
        if revising:
            await run_in_threadpool(lambda: store.revise(task_id, me.id, **payload, project=name,
                                                         opaque=True))
        else:
            await run_in_threadpool(lambda: store.submit(task_id, me.id, **payload, project=name,
                                                         as_served=True, opaque=True))
    except (RlhfkitError, ValueError, LookupError) as e:
        status = 400 if isinstance(e, FormError) else status_for(e)
        return await run_in_threadpool(_label_page, request, store, me, name, status=status, error=str(e),
                                       revise=revising, prefill=prefill_from_form(form), task_id=task_id)
    return RedirectResponse(f"{here}?saved={'revised' if revising else '1'}", status_code=303)
