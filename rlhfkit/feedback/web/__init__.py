"""The annotator web UI, its JSON API and the admin analytics pages (`rlhf label serve`).

Pages (server-rendered Jinja2, one small plain-JS file for the keyboard and the timer):

    GET  /login, POST /login, POST /logout       session cookie (signed token, HttpOnly, SameSite=Lax)
    GET  /account, POST /account                 change my password (other sessions end)
    GET  /projects                               projects with progress
    GET  /projects/{name}/label                  the next task of the queue for me
                                                 (?revise=1: my last judgement, to revise)
    POST /projects/{name}/label                  submit, skip or revise it (form post, CSRF token)
    GET  /admin                                  projects and progress, invite annotator form
    POST /admin/annotators                       create an annotator; the password is shown once
    GET  /admin/projects/{name}                  progress, agreement, annotators, position bias, leaderboard
    POST /admin/projects/{name}/guidelines       new guideline version
    GET  /admin/projects/{name}/export           JSONL in TRL columns (rlhfkit.feedback.export)
    GET  /admin/projects/{name}/review           tasks where annotators split, with rationales
    GET  /admin/projects/{name}/gold             gold questions, accuracy; POST marks / clears them
    GET  /admin/projects/{name}/calibration      AI judges vs people: agreement, kappa, gold, the
                                                 export gate (.json: the same as JSON)
    POST /admin/projects/{name}/access, .../members   members-only projects and their members
    GET  /admin/annotators/{id}                  one annotator's record; POST .../active,
                                                 .../password (reset), .../sessions/end

JSON API (``Authorization: Bearer <token>`` from ``POST /api/login``):

    POST /api/login                {"name", "password"} -> {"token", "annotator"}
    POST /api/password             {"current", "new"}: change my password (other tokens end)
    GET  /api/projects
    GET  /api/projects/{name}/next -> {"task": {...} | null}
    POST /api/tasks/{id}/judgement {"choice" | "ranking", "strength", "rationale", "displayed_order",
                                    "seconds"}
    POST /api/tasks/{id}/skip
    GET  /api/projects/{name}/last -> {"task": {..., "judgement_id", "answer"} | null}  (revisable)
    POST /api/tasks/{id}/revision  the same body as a judgement: replaces my answer, keeps the old
    GET  /api/projects/{name}/progress

Responses are named by their per-task handles (``"id"`` in a task, ``displayed_order``, ``ranking``).

Security. Every page and endpoint but the login needs a session; admin pages need role admin
(403 otherwise). The cookie holds the store's session token plus an HMAC of it under the app
secret, so a forged or altered cookie is rejected before the database is asked. Form posts carry
a CSRF token (HMAC of the session token) and a cross-site ``Origin`` is refused; the API takes
bearer tokens only, never the cookie, so it cannot be driven cross-site. Prompts and responses are
untrusted: they and the guidelines are rendered as markdown with raw HTML off and the result
sanitised against an allow-list (``markdown``), everything else is autoescaped, and a
Content-Security-Policy without inline scripts or styles backs both up. Annotators know responses
only by random per-task handles (``store.TaskView.handles``), never by their sequential ids.
Store errors become 400 / 404 / 409 with the store's message (which names the field); request
bodies are pydantic models, so a malformed payload is a 422 naming the field, never a 500.
Logins are throttled: after ``login_max_failures`` wrong passwords for one name (from any address)
or 4x that many from one address (over all names) within ``login_window_s`` seconds, further
attempts get 429 with Retry-After until the window has passed (a password cannot be guessed at
scrypt speed, nor sprayed over every account); a success clears the name's count. Invited and reset
accounts must replace the password the admin saw on /account (``POST /api/password``) before any
other page or endpoint opens; that ends their other sessions. A deactivated account cannot log in
and a members-only project is closed (403) to everyone but its members and admins.

Modules: ``app`` (create_app, serve), ``pages`` / ``admin`` / ``api`` (the routers), ``security``
(cookies, CSRF, throttle, who-is-asking dependencies, headers), ``deps`` (app state for routes),
``people`` / ``review`` (admin routers for accounts, membership, disagreements and gold questions),
``models`` (request bodies, form parsing), ``templating``, ``errors``, ``markdown``, ``labelview``
(what the labelling page shows of a task) and ``diff`` (side-by-side diff of two responses).
"""

from rlhfkit.feedback.web.app import create_app, serve

__all__ = ["create_app", "serve"]
