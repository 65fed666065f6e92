"""``create_app``: the FastAPI app over a feedback store, and ``serve`` (`rlhf label serve`).

The app only holds state (``app.state``: store, secret_key, throttle, templates) and wires the
routers of :mod:`.pages`, :mod:`.admin` and :mod:`.api` to it; routes reach that state through the
dependencies of :mod:`.deps`, so any number of apps can live in one process (tests)."""

from __future__ import annotations

import os
import secrets
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.web import admin, api, calibration, pages, people, review
from rlhfkit.feedback.web.errors import add_exception_handlers
from rlhfkit.feedback.web.security import MAX_BODY_BYTES, LoginThrottle, security_headers
from rlhfkit.feedback.web.templating import STATIC_DIR, make_env


def create_app(store_url: str, *, secret: str | None = None, store: Any = None,
               login_max_failures: int = 5, login_window_s: float = 300.0,
               login_max_failures_per_address: int | None = None,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI app over the feedback store at ``store_url``.

    ``secret`` signs session cookies and CSRF tokens; without one a random secret is made, so
    browser sessions end when the process does (API tokens live in the store and survive).
    ``store`` lets a caller pass an already open store (tests, `rlhf label serve`)."""
    if store is None:
        from rlhfkit.feedback.store import FeedbackStore
        store = FeedbackStore(store_url)
    app = FastAPI(title="rlhfkit feedback", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.state.secret_key = (secret or secrets.token_hex(32)).encode()
    # Per name and per address (LoginThrottle); the address limit defaults to 4 x the name limit.
    per_address = {"per_address": login_max_failures_per_address} if login_max_failures_per_address else {}
    app.state.throttle = LoginThrottle(login_max_failures, login_window_s, **per_address)
    app.state.max_body_bytes = max_body_bytes
    app.state.templates = make_env()
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.middleware("http")(security_headers)
    add_exception_handlers(app)
    for router in (pages.router, admin.router, people.router, review.router, calibration.router, api.router):
        app.include_router(router)
    return app


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
    # uvicorn believes X-Forwarded-For from 127.0.0.1 by default: any local client could then claim a
    # new address per attempt and never hit the login throttle. Only configured proxies are trusted.
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info", proxy_headers=bool(cfg.trusted_proxies),
                forwarded_allow_ips=",".join(cfg.trusted_proxies) or None)
