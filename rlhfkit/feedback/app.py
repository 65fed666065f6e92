"""The annotator web UI, its JSON API and the admin analytics pages (`rlhf label serve`).

Pages (server-rendered Jinja2, one small plain-JS file for the keyboard and the timer):

    GET  /login, POST /login, POST /logout       session cookie (signed token, HttpOnly, SameSite=Lax)
    GET  /account, POST /account                 change my password (other sessions end)
    GET  /projects                               projects with progress
    GET  /projects/{name}/label                  the next task of the queue for me
    POST /projects/{name}/label                  submit or skip it (form post, CSRF token)
    GET  /admin                                  projects and progress, invite annotator form
    POST /admin/annotators                       create an annotator; the password is shown once
    GET  /admin/projects/{name}                  progress, agreement, annotators, position bias, leaderboard
    POST /admin/projects/{name}/guidelines       new guideline version
    GET  /admin/projects/{name}/export           JSONL in TRL columns (rlhfkit.feedback.export)

JSON API (``Authorization: Bearer <token>`` from ``POST /api/login``):

    POST /api/login                {"name", "password"} -> {"token", "annotator"}
    POST /api/password             {"current", "new"}: change my password (other tokens end)
    GET  /api/projects
    GET  /api/projects/{name}/next -> {"task": {...} | null}
    POST /api/tasks/{id}/judgement {"choice" | "ranking", "strength", "rationale", "displayed_order",
                                    "seconds"}
    POST /api/tasks/{id}/skip
    GET  /api/projects/{name}/progress

Security. Every page and endpoint but the login needs a session; admin pages need role admin
(403 otherwise). The cookie holds the store's session token plus an HMAC of it under the app
secret, so a forged or altered cookie is rejected before the database is asked. Form posts carry
a CSRF token (HMAC of the session token) and a cross-site ``Origin`` is refused; the API takes
bearer tokens only, never the cookie, so it cannot be driven cross-site. Prompts and responses are
untrusted: Jinja2 autoescaping renders them as text, guidelines markdown is escaped before its
small markup subset is applied, and a Content-Security-Policy without inline scripts backs both
up. Store errors become 400 / 404 / 409 with the store's message (which names the field); request
bodies are pydantic models, so a malformed payload is a 422 naming the field, never a 500.
Logins are throttled: after ``login_max_failures`` wrong passwords for one name from one address
within ``login_window_s`` seconds, further attempts get 429 with Retry-After until the window has
passed (a password cannot be guessed at scrypt speed); a success clears the count. Invited
annotators replace the password the admin saw on /account, which ends their other sessions.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import math
import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit

from fastapi import Depends, FastAPI, Path as PathParam, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback import analytics

HERE = Path(__file__).resolve().parent
COOKIE = "rlhf_session"
CHOICES = ("A", "B", "tie_good", "tie_bad")
STRENGTHS = {1: "slightly better", 2: "better", 3: "clearly better", 4: "much better"}
MAX_ID = 2 ** 63 - 1  # database integer keys are 64-bit: a larger id is a 422, not a driver overflow
TaskId = Annotated[int, PathParam(ge=1, le=MAX_ID)]


# ---------------------------------------------------------------------------------------------
# markdown: a small, safe subset for guidelines


def _inline(text: str) -> str:
    """Inline markup on already-escaped text: `code`, **bold**, *italic*, [text](http(s)://url)."""
    parts = re.split(r"(`[^`]+`)", text)
    out = []
    for part in parts:
        if len(part) > 1 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{part[1:-1]}</code>")
            continue
        part = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", part)
        part = re.sub(r"(?<![*\w])\*(?!\s)(.+?)(?<!\s)\*(?![*\w])", r"<em>\1</em>", part)
        # Only http(s) targets: a javascript: URL would run on click. The text was escaped, so the
        # URL cannot contain a quote that closes the attribute.
        part = re.sub(r"\[([^\]]+)\]\((https?://[^\s)]+)\)",
                      r'<a href="\2" rel="noopener noreferrer nofollow" target="_blank">\1</a>', part)
        out.append(part)
    return "".join(out)


def render_markdown(source: str) -> Markup:
    """Guidelines markdown -> HTML. Everything is escaped first, so raw HTML in the source shows as
    text; then headings (#), bullet (-, *) and numbered lists, paragraphs and inline markup."""
    blocks: list[str] = []
    para: list[str] = []
    items: list[str] = []
    list_tag = ""

    def flush() -> None:
        nonlocal list_tag
        if para:
            blocks.append("<p>" + _inline(" ".join(para)) + "</p>")
            para.clear()
        if items:
            lis = "".join(f"<li>{_inline(i)}</li>" for i in items)
            blocks.append(f"<{list_tag}>{lis}</{list_tag}>")
            items.clear()
            list_tag = ""

    for raw in (source or "").splitlines():
        line = html.escape(raw.rstrip(), quote=True)
        stripped = line.strip()
        heading = re.match(r"^(#{1,4})\s+(.*)$", stripped)
        bullet = re.match(r"^[-*]\s+(.*)$", stripped)
        numbered = re.match(r"^\d+[.)]\s+(.*)$", stripped)
        if not stripped:
            flush()
        elif heading:
            flush()
            level = len(heading.group(1)) + 2  # the page already has h1/h2
            blocks.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif bullet or numbered:
            tag = "ul" if bullet else "ol"
            if para or (items and list_tag != tag):
                flush()
            list_tag = tag
            items.append((bullet or numbered).group(1))
        elif items and raw.startswith((" ", "\t")):
            items[-1] += " " + stripped  # continuation of a list item
        else:
            if items:
                flush()
            para.append(stripped)
    flush()
    return Markup("\n".join(blocks))


# ---------------------------------------------------------------------------------------------
# request bodies of the JSON API


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=1000)


class PasswordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    current: str = Field(min_length=1, max_length=1000)
    new: str = Field(min_length=1, max_length=1000)


class LoginThrottle:
    """Failed logins per (client address, name) in a sliding window, in this process's memory
    (one `rlhf label serve` process; behind several workers each counts its own)."""

    def __init__(self, max_failures: int, window_s: float, clock=time.monotonic):
        self.max_failures, self.window_s, self.clock = max_failures, window_s, clock
        self._failures: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> list[float]:
        times = [t for t in self._failures.get(key, []) if now - t < self.window_s]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def retry_after(self, key: tuple[str, str]) -> int:
        """Seconds until another attempt is allowed; 0 when it is allowed now."""
        with self._lock:
            now = self.clock()
            times = self._recent(key, now)
            if len(times) < self.max_failures:
                return 0
            return max(1, math.ceil(times[-self.max_failures] + self.window_s - now))

    def failed(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._failures.setdefault(key, []).append(self.clock())

    def succeeded(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._failures.pop(key, None)


class JudgementIn(BaseModel):
    """One judgement as the annotator made it; ``choice`` is relative to the order shown."""

    model_config = ConfigDict(extra="forbid")
    choice: Literal["A", "B", "tie_good", "tie_bad"] | None = None
    """Pairs: "A" = first shown (left), "B" = second (right), "tie_good", "tie_bad"."""
    strength: int | None = Field(None, ge=1, le=4)
    ranking: list[list[Annotated[int, Field(ge=1, le=MAX_ID)]]] | None = None
    """K-way tasks: groups of response ids, best first; ids in one group are tied."""
    rationale: str | None = Field(None, max_length=20_000, pattern=r"^[^\x00]*$")
    displayed_order: list[Annotated[int, Field(ge=1, le=MAX_ID)]] = Field(min_length=2)
    """The response ids in the order they were shown."""
    seconds: float | None = Field(None, ge=0, le=7 * 24 * 3600, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_of(self) -> "JudgementIn":
        if (self.choice is None) == (self.ranking is None):
            raise ValueError("give exactly one of 'choice' (pair tasks) or 'ranking' (K-way tasks)")
        return self


# ---------------------------------------------------------------------------------------------
# helpers


class _LoginRequired(Exception):
    """Raised by page dependencies; turned into a redirect to /login."""


def _status_for(err: Exception) -> int:
    """HTTP status of a store error: the store's classes say it (NotFoundError 404,
    ConflictError 409, any other validation error 400); their messages name the field."""
    from rlhfkit.feedback.store import ConflictError, NotFoundError
    if isinstance(err, NotFoundError):
        return 404
    if isinstance(err, ConflictError):
        return 409
    return 400


def _store_error(err: Exception) -> HTTPException:
    return HTTPException(_status_for(err), str(err))


def _task_json(t: Any) -> dict:
    return {"id": t.id, "project": t.project, "prompt": t.prompt, "kind": t.kind,
            "responses": [{"id": rid, "text": text} for rid, text in t.responses],
            "calibration": t.calibration, "guideline_version": t.guideline_version}


def _fmt(x: Any, digits: int = 3) -> str:
    """Numbers for the admin tables: '–' for missing / NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _progress_for(store: Any, project: str, me: Any) -> dict:
    """The store's progress; annotators see the project totals and their own count only."""
    p = dict(store.progress(project))
    per = p.get("per_annotator", {}) or {}
    p["mine"] = int(per.get(me.name, 0))
    if me.role != "admin":
        p.pop("per_annotator", None)
    return p


# ---------------------------------------------------------------------------------------------
# the app


def create_app(store_url: str, *, secret: str | None = None, store: Any = None,
               login_max_failures: int = 5, login_window_s: float = 300.0) -> FastAPI:
    """The FastAPI app over the feedback store at ``store_url``.

    ``secret`` signs session cookies and CSRF tokens; without one a random secret is made, so
    browser sessions end when the process does (API tokens live in the store and survive).
    ``store`` lets a caller pass an already open store (tests, `rlhf label serve`)."""
    if store is None:
        from rlhfkit.feedback.store import FeedbackStore
        store = FeedbackStore(store_url)
    key = (secret or secrets.token_hex(32)).encode()
    throttle = LoginThrottle(login_max_failures, login_window_s)

    def throttle_key(request: Request, name: str) -> tuple[str, str]:
        return (request.client.host if request.client else "?", name.strip().lower())

    def sign(value: str) -> str:
        return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()

    def csrf_token(session_token: str) -> str:
        return sign("csrf:" + session_token)

    env = Environment(loader=FileSystemLoader(str(HERE / "templates")),
                      autoescape=select_autoescape(["html"], default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    env.globals["strengths"] = STRENGTHS

    app = FastAPI(title="rlhfkit feedback", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def render(request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        me = getattr(request.state, "annotator", None)
        token = getattr(request.state, "session_token", None)
        body = env.get_template(template).render(me=me, csrf=csrf_token(token) if token else "", **ctx)
        return HTMLResponse(body, status_code=status)

    # --- cross-cutting: headers, errors -------------------------------------------------------

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        if request.method not in ("GET", "HEAD", "OPTIONS") and not request.url.path.startswith("/api/"):
            # Browsers send Origin on every cross-site POST; SameSite=Lax already withholds the
            # cookie there, this refuses the request outright (login form included).
            # Host only, not the scheme: behind a TLS proxy the app sees http while the browser
            # says https. "null" (sandboxed frames, file: pages) is never one of our own pages.
            origin = request.headers.get("origin")
            if origin is not None and urlsplit(origin).netloc != request.headers.get("host", ""):
                return HTMLResponse("cross-site form post refused", status_code=403)
        response = await call_next(request)
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @app.exception_handler(_LoginRequired)
    async def _login_redirect(request: Request, exc: _LoginRequired):
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code,
                                headers=getattr(exc, "headers", None))
        return render(request, "error.html", status=exc.status_code, status_code=exc.status_code,
                      detail=exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        # One readable line per problem, each naming the field ("body.strength: ..."), plus the
        # structured list for programs.
        errors = exc.errors()
        reasons = []
        for e in errors:
            loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
            reasons.append(f"{loc}: {e.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(reasons),
                             "errors": [{"loc": list(e.get("loc", ())), "msg": e.get("msg"),
                                         "type": e.get("type")} for e in errors]},
                            status_code=422)

    # --- authentication -----------------------------------------------------------------------

    def page_user(request: Request):
        raw = request.cookies.get(COOKIE, "")
        token, _, sig = raw.rpartition(".")
        if not token or not hmac.compare_digest(sig, sign(token)):
            raise _LoginRequired()
        me = store.annotator_for_session(token)
        if me is None:
            raise _LoginRequired()
        request.state.annotator = me
        request.state.session_token = token
        return me

    def page_admin(me=Depends(page_user)):
        if me.role != "admin":
            raise HTTPException(403, "admin pages need an admin account")
        return me

    def api_user(request: Request):
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "missing 'Authorization: Bearer <token>' (POST /api/login)",
                                headers={"WWW-Authenticate": "Bearer"})
        me = store.annotator_for_session(token.strip())
        if me is None:
            raise HTTPException(401, "invalid or expired token", headers={"WWW-Authenticate": "Bearer"})
        return me

    def check_csrf(request: Request, form: Any) -> None:
        token = getattr(request.state, "session_token", "")
        sent = str(form.get("csrf", ""))
        if not token or not hmac.compare_digest(sent, csrf_token(token)):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")

    def project_or_404(name: str):
        try:
            return store.get_project(name)
        except (RlhfkitError, ValueError, LookupError) as e:
            raise HTTPException(404, str(e)) from None

    # --- annotator pages ----------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def index(request: Request):
        return RedirectResponse("/projects", status_code=303)

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request):
        return render(request, "login.html", error=None, name="")

    @app.post("/login")
    async def login(request: Request):
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
        response.set_cookie(COOKIE, f"{token}.{sign(token)}", httponly=True, samesite="lax",
                            secure=request.url.scheme == "https", path="/")
        return response

    @app.get("/account", response_class=HTMLResponse)
    def account_page(request: Request, me=Depends(page_user)):
        return render(request, "account.html", error=None, saved=False)

    @app.post("/account")
    async def account_change(request: Request, me=Depends(page_user)):
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

    @app.post("/logout")
    async def logout(request: Request, me=Depends(page_user)):
        check_csrf(request, await request.form())
        await run_in_threadpool(store.end_session, request.state.session_token)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/projects", response_class=HTMLResponse)
    def projects_page(request: Request, me=Depends(page_user)):
        rows = [(p, _progress_for(store, p.name, me)) for p in store.list_projects()]
        return render(request, "projects.html", rows=rows)

    def label_page(request: Request, me: Any, name: str, *, status: int = 200,
                   error: str | None = None, saved: str | None = None) -> HTMLResponse:
        project = project_or_404(name)
        task = store.next_task(name, me.id)
        return render(request, "label.html", status=status, project=project, task=task,
                      progress=_progress_for(store, name, me), error=error, saved=saved,
                      guidelines=render_markdown(project.guidelines),
                      displayed_order=",".join(str(rid) for rid, _ in task.responses) if task else "")

    @app.get("/projects/{name}/label", response_class=HTMLResponse)
    def label_get(request: Request, name: str, saved: str | None = None, me=Depends(page_user)):
        return label_page(request, me, name, saved={"1": "saved", "skip": "skipped"}.get(saved or ""))

    @app.post("/projects/{name}/label")
    async def label_post(request: Request, name: str, me=Depends(page_user)):
        form = await request.form()
        check_csrf(request, form)
        await run_in_threadpool(project_or_404, name)
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
                return await run_in_threadpool(lambda: label_page(request, me, name,
                                                                  status=_status_for(e), error=str(e)))
            return RedirectResponse(f"/projects/{quote(name, safe='')}/label?saved=skip", status_code=303)
        try:
            payload = _judgement_from_form(form)
            await run_in_threadpool(lambda: store.submit(task_id, me.id, **payload))
        except (RlhfkitError, ValueError, LookupError) as e:
            status = 400 if isinstance(e, _FormError) else _status_for(e)
            return await run_in_threadpool(lambda: label_page(request, me, name, status=status, error=str(e)))
        return RedirectResponse(f"/projects/{quote(name, safe='')}/label?saved=1", status_code=303)

    # --- admin pages --------------------------------------------------------------------------

    @app.get("/admin", response_class=HTMLResponse)
    def admin_page(request: Request, me=Depends(page_admin)):
        rows = [(p, _progress_for(store, p.name, me)) for p in store.list_projects()]
        return render(request, "admin.html", rows=rows, people=store.list_annotators(), invited=None,
                      error=None)

    @app.post("/admin/annotators")
    async def invite(request: Request, me=Depends(page_admin)):
        form = await request.form()
        check_csrf(request, form)
        name = str(form.get("name", "")).strip()
        role = str(form.get("role", "annotator"))
        rows = await run_in_threadpool(lambda: [(p, _progress_for(store, p.name, me))
                                                for p in store.list_projects()])
        if not name or role not in ("annotator", "admin"):
            return render(request, "admin.html", status=400, rows=rows, invited=None,
                          people=await run_in_threadpool(store.list_annotators),
                          error="field 'name' is required and 'role' must be annotator or admin")
        password = secrets.token_urlsafe(12)  # shown once on this page, stored only hashed
        try:
            who = await run_in_threadpool(store.add_annotator, name, password, role)
        except (RlhfkitError, ValueError) as e:  # e.g. the name is taken (ConflictError -> 409)
            return render(request, "admin.html", status=_status_for(e), rows=rows,
                          people=await run_in_threadpool(store.list_annotators), invited=None, error=str(e))
        return render(request, "admin.html", rows=rows, people=await run_in_threadpool(store.list_annotators),
                      invited={"name": who.name, "role": who.role, "password": password}, error=None)

    @app.get("/admin/projects/{name}", response_class=HTMLResponse)
    def admin_project(request: Request, name: str, me=Depends(page_admin)):
        project = project_or_404(name)
        js = store.judgements(name)
        return render(request, "admin_project.html", project=project, progress=_progress_for(store, name, me),
                      n_judgements=len(js), agreement=analytics.agreement_summary(js),
                      annotators=analytics.annotator_stats(js), bias=analytics.position_bias(js),
                      board=analytics.leaderboard(js, n_boot=200, seed=0),
                      guidelines=render_markdown(project.guidelines), export_ok=_export_fn() is not None)

    @app.post("/admin/projects/{name}/guidelines")
    async def update_guidelines(request: Request, name: str, me=Depends(page_admin)):
        form = await request.form()
        check_csrf(request, form)
        await run_in_threadpool(project_or_404, name)
        await run_in_threadpool(store.update_guidelines, name, str(form.get("guidelines", "")))
        return RedirectResponse(f"/admin/projects/{quote(name, safe='')}", status_code=303)

    @app.get("/admin/projects/{name}/export")
    def export(request: Request, name: str, aggregate: Literal["judgement", "majority"] = "judgement",
               ties: Literal["drop", "keep"] = "drop", me=Depends(page_admin)):
        project_or_404(name)
        fn = _export_fn()
        if fn is None:
            raise HTTPException(501, "export is not available: rlhfkit.feedback.export is missing")
        try:
            rows = fn(store, name, aggregate, ties)
        except (RlhfkitError, ValueError) as e:
            raise HTTPException(400, str(e)) from None
        body = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        return Response(body, media_type="application/x-ndjson",
                        headers={"Content-Disposition": f'attachment; filename="{safe}-{aggregate}.jsonl"'})

    # --- JSON API -----------------------------------------------------------------------------

    @app.post("/api/login")
    def api_login(body: LoginIn, request: Request):
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

    @app.post("/api/password")
    def api_password(body: PasswordIn, request: Request, me=Depends(api_user)):
        token = request.headers.get("authorization", "").partition(" ")[2].strip()
        try:
            store.change_password(me.id, body.current, body.new, keep_session=token)
        except RlhfkitError as e:
            raise HTTPException(400, str(e)) from None
        return {"changed": True}

    @app.get("/api/projects")
    def api_projects(me=Depends(api_user)):
        return {"projects": [{"name": p.name, "guidelines": p.guidelines,
                              "guideline_version": p.guideline_version,
                              "annotators_per_task": p.annotators_per_task} for p in store.list_projects()]}

    @app.get("/api/projects/{name}/next")
    def api_next(name: str, me=Depends(api_user)):
        project_or_404(name)
        task = store.next_task(name, me.id)
        return {"task": _task_json(task) if task else None}

    @app.post("/api/tasks/{task_id}/judgement")
    def api_submit(task_id: TaskId, body: JudgementIn, me=Depends(api_user)):
        try:
            jid = store.submit(task_id, me.id, **body.model_dump())
        except (RlhfkitError, ValueError, LookupError) as e:
            raise _store_error(e) from None
        return {"judgement_id": jid}

    @app.post("/api/tasks/{task_id}/skip")
    def api_skip(task_id: TaskId, me=Depends(api_user)):
        try:
            store.skip(task_id, me.id)
        except (RlhfkitError, ValueError, LookupError) as e:
            raise _store_error(e) from None
        return {"skipped": task_id}

    @app.get("/api/projects/{name}/progress")
    def api_progress(name: str, me=Depends(api_user)):
        project_or_404(name)
        return _progress_for(store, name, me)

    return app


class _FormError(ValueError):
    """A labeling form field is missing or malformed (the message names it)."""


def _judgement_from_form(form: Any) -> dict:
    """The labeling form's fields -> keyword arguments of ``store.submit``."""
    try:
        order = [int(x) for x in str(form.get("displayed_order", "")).split(",") if x.strip()]
    except ValueError:
        raise _FormError("field 'displayed_order': not a comma-separated list of ids") from None
    seconds = None
    if str(form.get("seconds", "")).strip():
        try:
            seconds = float(str(form.get("seconds")))
        except ValueError:
            raise _FormError("field 'seconds': not a number") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise _FormError("field 'seconds': must be a finite number >= 0")
    strength = None
    if str(form.get("strength", "")).strip():
        try:
            strength = int(str(form.get("strength")))
        except ValueError:
            raise _FormError("field 'strength': not an integer 1-4") from None
    rationale = str(form.get("rationale", "")).replace("\x00", "").strip() or None  # NUL: PostgreSQL refuses it
    out: dict[str, Any] = {"strength": strength, "rationale": rationale, "displayed_order": order,
                           "seconds": seconds}
    rank_fields = {k: v for k, v in form.items() if k.startswith("rank_")}
    if rank_fields:
        # K-way: rank numbers per response, equal numbers = tied; groups best (lowest) first
        groups: dict[int, list[int]] = {}
        for k, v in rank_fields.items():
            try:
                groups.setdefault(int(str(v)), []).append(int(k[len("rank_"):]))
            except ValueError:
                raise _FormError(f"field '{k}': rank must be an integer") from None
        out["ranking"] = [sorted(groups[r]) for r in sorted(groups)]
        return out
    choice = str(form.get("choice", ""))
    if choice not in CHOICES:
        raise _FormError("field 'choice': pick A, B, tie (both good) or both bad")
    out["choice"] = choice
    return out


def _export_fn():
    """``rows(store, project, aggregate, ties)`` from :mod:`rlhfkit.feedback.export` (the same rows
    `rlhf label export` writes), or None if that module is not there."""
    try:
        from rlhfkit.feedback.export import export_rows
    except ImportError:
        return None
    return lambda store, project, aggregate, ties: export_rows(store, project, aggregate=aggregate,
                                                               ties=ties)[0]


# ---------------------------------------------------------------------------------------------
# `rlhf label serve`


def serve(cfg) -> None:
    """Open (create or upgrade) the store, optionally create an admin, and serve on cfg.host:cfg.port.

    Browser sessions are signed with ``$RLHFKIT_LABEL_SECRET`` if set (so they survive a restart),
    else with a random secret of this process."""
    import uvicorn

    from rlhfkit.feedback.store import FeedbackStore

    store = FeedbackStore(cfg.store)
    if cfg.create_admin:
        password = cfg.create_admin_password or secrets.token_urlsafe(12)
        try:
            store.add_annotator(cfg.create_admin, password, role="admin")
        except RlhfkitError as e:  # e.g. the name is taken: say so and keep serving
            print(f"could not create admin {cfg.create_admin!r}: {e}", flush=True)
        else:
            shown = "(as given)" if cfg.create_admin_password else password
            print(f"created admin {cfg.create_admin!r} with password: {shown}", flush=True)
    url = f"http://{cfg.host}:{cfg.port}/"
    print(f"rlhf label serve: store {cfg.store}\n  open {url}  (admin pages: {url}admin)", flush=True)
    if not any(a.role == "admin" for a in store.list_annotators()):
        print(f"  no admin yet; create one with: rlhf label serve store={cfg.store} create_admin=NAME "
              "(a password is generated and printed once; or set create_admin_password=...)", flush=True)
    # A fixed secret keeps browser sessions valid across restarts; without one they end with the process.
    app = create_app(cfg.store, secret=os.environ.get("RLHFKIT_LABEL_SECRET") or None, store=store)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")
