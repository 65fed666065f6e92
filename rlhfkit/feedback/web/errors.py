"""Errors -> responses: store errors to HTTP statuses, and the app's exception handlers
(JSON under /api/, an HTML page elsewhere, a redirect to /login without a session)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException

from rlhfkit.feedback.store.errors import StoreError
from rlhfkit.feedback.web.security import LoginRequired, PasswordChangeRequired
from rlhfkit.feedback.web.templating import render


def status_for(err: Exception) -> int:
    """HTTP status of a store error: the store's classes say it (NotFoundError 404, ForbiddenError
    403, ConflictError 409, any other validation error 400); their messages name the field."""
    from rlhfkit.feedback.store import ConflictError, ForbiddenError, NotFoundError
    if isinstance(err, ForbiddenError):
        return 403
    if isinstance(err, NotFoundError):
        return 404
    if isinstance(err, ConflictError):
        return 409
    return 400


def store_error(err: Exception) -> HTTPException:
    return HTTPException(status_for(err), str(err))


async def _login_redirect(request: Request, exc: LoginRequired):
    return RedirectResponse("/login", status_code=303)


async def _password_redirect(request: Request, exc: PasswordChangeRequired):
    return RedirectResponse("/account", status_code=303)


async def _store_error(request: Request, exc: StoreError):
    # A store error no route caught (e.g. ForbiddenError from next_task for a non-member): the same
    # status and message as the routes that do catch them.
    return await _http_error(request, store_error(exc))


async def _http_error(request: Request, exc: HTTPException):
    if request.url.path.startswith("/api/"):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))
    return render(request, "error.html", status=exc.status_code, status_code=exc.status_code,
                  detail=exc.detail)


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


def add_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(LoginRequired, _login_redirect)
    app.add_exception_handler(PasswordChangeRequired, _password_redirect)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
