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

Modules: ``app`` (create_app, serve), ``pages`` / ``admin`` / ``api`` (the routers), ``security``
(cookies, CSRF, throttle, who-is-asking dependencies, headers), ``deps`` (app state for routes),
``models`` (request bodies, form parsing), ``templating``, ``errors``, ``markdown``.
"""

from rlhfkit.feedback.web.app import create_app, serve

__all__ = ["create_app", "serve"]
