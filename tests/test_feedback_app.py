"""The annotator web UI and JSON API over a real FeedbackStore (FastAPI TestClient, no network):
auth and roles, the queue's overlap rules, what a judgement stores, bad input -> 4xx, CSRF,
escaping, admin analytics pages."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient

from rlhfkit.feedback.app import create_app, render_markdown
from rlhfkit.feedback.store import FeedbackStore

PASSWORDS = {"root": "root-pw", "alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}


def make_store(path, *, n_tasks=8, per_task=2, project="p", models=("m1", "m2")) -> FeedbackStore:
    store = FeedbackStore(str(path))
    store.create_project(project, guidelines="# Rules\nPrefer **helpful** answers. <b>raw html</b>",
                         annotators_per_task=per_task)
    for i in range(n_tasks):
        pid = store.add_prompt(project, f"prompt {i} <script>alert('p')</script>")
        ids = [store.add_response(pid, f"answer {i} from {m}", m) for m in models]
        store.create_task(project, ids)
    store.add_annotator("root", PASSWORDS["root"], role="admin")
    for name in ("alice", "bob", "carol"):
        store.add_annotator(name, PASSWORDS[name])
    return store


@pytest.fixture
def store(store_url):
    # Every test on ``store`` / ``client`` runs on SQLite and on PostgreSQL (conftest.store_url).
    s = make_store(store_url)
    yield s
    s.close()


@pytest.fixture
def client(store):
    with TestClient(create_app(store.url, secret="test-secret", store=store)) as c:
        yield c


def api_token(client, name) -> dict:
    r = client.post("/api/login", json={"name": name, "password": PASSWORDS[name]})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def form_login(client, name):
    r = client.post("/login", data={"name": name, "password": PASSWORDS[name]}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/projects"
    return r


def response_ids(view, handles: str) -> list[int]:
    """The response ids behind comma-separated handles of the task ``view`` (a store TaskView)."""
    by_handle = dict(zip(view.handles, (rid for rid, _ in view.responses)))
    return [by_handle[h] for h in handles.split(",")]


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)


# ------------------------------------------------------------------------------------ auth, roles


def test_login_fails_with_wrong_password(client):
    r = client.post("/login", data={"name": "alice", "password": "nope"}, follow_redirects=False)
    assert r.status_code == 401 and "wrong name or password" in r.text
    assert "rlhf_session" not in r.cookies
    # without a session every page sends the browser to the login form
    r = client.get("/projects", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert client.post("/api/login", json={"name": "alice", "password": "nope"}).status_code == 401
    assert client.post("/api/login", json={"name": "nobody", "password": "x"}).status_code == 401
    # the API wants a bearer token: none, or a made-up one, is a 401
    assert client.get("/api/projects").status_code == 401
    assert client.get("/api/projects", headers={"Authorization": "Bearer made-up"}).status_code == 401


def test_login_throttle_by_hand():
    """5 failures in the window block the (address, name) pair until the oldest of them
    leaves the window; other names and addresses are unaffected; a success clears the count."""
    from rlhfkit.feedback.app import LoginThrottle

    now = [1000.0]
    t = LoginThrottle(max_failures=3, window_s=60, clock=lambda: now[0])
    key, other = ("1.2.3.4", "alice"), ("1.2.3.4", "bob")
    for dt in (0, 10, 20):
        now[0] = 1000.0 + dt
        assert t.retry_after(key) == 0
        t.failed(key)
    assert t.retry_after(key) == 40  # first failure at 1000 leaves the window at 1060; now 1020
    assert t.retry_after(other) == 0 and t.retry_after(("5.6.7.8", "alice")) == 0
    now[0] = 1060.0
    assert t.retry_after(key) == 0  # two failures left in the window
    t.failed(key)
    assert t.retry_after(key) == 10  # the failure at 1010 leaves at 1070
    t.succeeded(key)
    assert t.retry_after(key) == 0


def test_repeated_wrong_passwords_get_429_and_the_right_one_works_after(store, monkeypatch):
    # A fake clock: with a real 0.5 s window, slow password hashing on a loaded machine let the
    # failures age out before the fourth attempt (a CI flake).
    import rlhfkit.feedback.web.app as app_module  # create_app looks LoginThrottle up there

    now = [0.0]

    class FakeClockThrottle(app_module.LoginThrottle):
        def __init__(self, max_failures, window_s):
            super().__init__(max_failures, window_s, clock=lambda: now[0])

    monkeypatch.setattr(app_module, "LoginThrottle", FakeClockThrottle)
    with TestClient(create_app(store.url, secret="s", store=store, login_max_failures=3,
                               login_window_s=60.0)) as client:
        for _ in range(3):
            assert client.post("/api/login", json={"name": "alice", "password": "guess"}).status_code == 401
        r = client.post("/api/login", json={"name": "alice", "password": PASSWORDS["alice"]})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "too many failed logins" in r.json()["detail"]
        r = client.post("/login", data={"name": "alice", "password": PASSWORDS["alice"]},
                        follow_redirects=False)
        assert r.status_code == 429 and "too many failed logins" in r.text  # the form shares the count
        assert client.post("/api/login",
                           json={"name": "bob", "password": PASSWORDS["bob"]}).status_code == 200
        now[0] += 61.0  # the window passes
        assert client.post("/api/login",
                           json={"name": "alice", "password": PASSWORDS["alice"]}).status_code == 200


def test_change_password_by_form_and_api_ends_other_sessions(client, store):
    other = api_token(client, "alice")  # e.g. a script's token, or another browser
    form_login(client, "alice")
    page = client.get("/account")
    assert page.status_code == 200 and "Change password" in page.text
    csrf = csrf_of(page.text)
    new = "correct horse battery"
    bad = [({"current": "wrong", "new": new, "again": new}, "current"),
           ({"current": PASSWORDS["alice"], "new": "short", "again": "short"}, "new"),
           ({"current": PASSWORDS["alice"], "new": new, "again": new + "x"}, "differ")]
    for data, named in bad:
        r = client.post("/account", data={"csrf": csrf, **data})
        assert r.status_code == 400 and named in r.text, (data, r.text)
    assert client.post("/account",
                       data={"current": PASSWORDS["alice"], "new": new, "again": new}).status_code == 403
    assert store.authenticate("alice", PASSWORDS["alice"]) is not None  # nothing changed so far
    r = client.post("/account", data={"csrf": csrf, "current": PASSWORDS["alice"], "new": new, "again": new})
    assert r.status_code == 200 and "Password changed" in r.text
    assert store.authenticate("alice", PASSWORDS["alice"]) is None and store.authenticate("alice", new)
    assert client.get("/projects").status_code == 200  # this browser stays logged in
    assert client.get("/api/projects", headers=other).status_code == 401  # the other token ended
    # The API: bearer token, JSON body naming the field on error; the caller's token survives.
    token = client.post("/api/login", json={"name": "alice", "password": new}).json()["token"]
    mine = {"Authorization": f"Bearer {token}"}
    r = client.post("/api/password", json={"current": "nope", "new": "another long one"}, headers=mine)
    assert r.status_code == 400 and "current" in r.json()["detail"]
    r = client.post("/api/password", json={"current": new, "new": "another long one", "x": 1}, headers=mine)
    assert r.status_code == 422 and "x" in r.json()["detail"]
    r = client.post("/api/password", json={"current": new, "new": "another long one"}, headers=mine)
    assert r.status_code == 200 and client.get("/api/projects", headers=mine).status_code == 200
    assert client.post("/api/password", json={"current": "a", "new": "bbbbbbbbb"}).status_code == 401


def test_session_cookie_is_signed_httponly_and_lax(client):
    r = form_login(client, "alice")
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=lax" in cookie.lower()
    assert client.get("/projects").status_code == 200
    # an altered cookie (same token, wrong signature) is not a session
    good = client.cookies.get("rlhf_session")
    token = good.rpartition(".")[0]
    client.cookies.clear()
    client.cookies.set("rlhf_session", token + ".0000")
    assert client.get("/projects", follow_redirects=False).status_code == 303
    client.cookies.clear()
    client.cookies.set("rlhf_session", good)
    assert client.get("/projects", follow_redirects=False).status_code == 200


def test_annotator_cannot_open_admin_pages(client):
    form_login(client, "alice")
    assert client.get("/admin").status_code == 403
    assert client.get("/admin/projects/p").status_code == 403
    assert client.get("/admin/projects/p/export").status_code == 403
    page = client.get("/projects/p/label").text
    r = client.post("/admin/annotators", data={"name": "mallory", "role": "admin", "csrf": csrf_of(page)})
    assert r.status_code == 403
    form_login(client, "root")
    assert client.get("/admin").status_code == 200
    assert client.get("/admin/projects/p").status_code == 200


def test_logout_ends_the_session(client, store):
    form_login(client, "alice")
    page = client.get("/projects").text
    token = client.cookies.get("rlhf_session").rpartition(".")[0]
    r = client.post("/logout", data={"csrf": csrf_of(page)}, follow_redirects=False)
    assert r.status_code == 303
    assert store.annotator_for_session(token) is None


# ------------------------------------------------------------------------------------ the API flow


def test_next_submit_progress_and_the_stored_judgement(client, store):
    h = api_token(client, "alice")
    assert [p["name"] for p in client.get("/api/projects", headers=h).json()["projects"]] == ["p"]
    seen_orders = set()
    for _ in range(8):
        task = client.get("/api/projects/p/next", headers=h).json()["task"]
        assert task["kind"] == "pair" and len(task["responses"]) == 2
        assert all("model" not in r for r in task["responses"])  # identity hidden
        shown = [r["id"] for r in task["responses"]]
        r = client.post(f"/api/tasks/{task['id']}/judgement", headers=h,
                        json={"choice": "A", "strength": 3, "displayed_order": shown, "seconds": 2.5})
        assert r.status_code == 200, r.text
        seen_orders.add(shown[0] < shown[1])
    assert client.get("/api/projects/p/next", headers=h).json() == {"task": None}
    prog = client.get("/api/projects/p/progress", headers=h).json()
    assert prog["mine"] == 8 and prog["judgements"] == 8 and prog["tasks"] == 8
    assert prog["tasks_complete"] == 0           # each task needs 2 annotators
    assert "per_annotator" not in prog           # an annotator sees only their own count
    # both display orders occurred, and every judgement stores the displayed order with the
    # LEFT response as the canonical winner ("A" = response_ids[0] won)
    assert seen_orders == {True, False}
    js = store.judgements("p")
    assert len(js) == 8
    for j in js:
        assert j["annotator"] == "alice" and j["strength"] == 3 and j["seconds"] == 2.5
        assert j["winner_id"] == j["displayed_order"][0] and j["position_chosen"] == 0
        assert j["choice"] == ("A" if j["displayed_order"][0] == j["response_ids"][0] else "B")


def test_resubmit_is_idempotent_and_a_different_one_conflicts(client, store):
    h = api_token(client, "alice")
    task = client.get("/api/projects/p/next", headers=h).json()["task"]
    body = {"choice": "B", "displayed_order": [r["id"] for r in task["responses"]]}
    first = client.post(f"/api/tasks/{task['id']}/judgement", headers=h, json=body).json()
    again = client.post(f"/api/tasks/{task['id']}/judgement", headers=h, json=body)
    assert again.status_code == 200 and again.json() == first
    r = client.post(f"/api/tasks/{task['id']}/judgement", headers=h, json={**body, "choice": "A"})
    assert r.status_code == 409 and "already judged" in r.json()["detail"]
    assert client.post(f"/api/tasks/{task['id']}/skip", headers=h).status_code == 409
    assert len(store.judgements("p")) == 1


def test_malformed_payloads_get_4xx_naming_the_field(client, store):
    h = api_token(client, "alice")
    task = client.get("/api/projects/p/next", headers=h).json()["task"]
    shown = [r["id"] for r in task["responses"]]
    url = f"/api/tasks/{task['id']}/judgement"
    cases = [
        ({"choice": "A", "strength": 7, "displayed_order": shown}, 422, "strength"),
        ({"choice": "C", "displayed_order": shown}, 422, "choice"),
        ({"choice": "A"}, 422, "displayed_order"),
        ({"choice": "A", "displayed_order": shown, "winner": 1}, 422, "winner"),
        ({"choice": "A", "displayed_order": shown, "seconds": -1}, 422, "seconds"),
        ({"choice": "A", "displayed_order": "12"}, 422, "displayed_order"),
        ({"displayed_order": shown}, 422, "choice"),
        ({"choice": "A", "ranking": [[shown[0]], [shown[1]]], "displayed_order": shown}, 422, "ranking"),
        # well-formed but wrong for this task: the store's message names the field
        ({"choice": "A", "displayed_order": [shown[0], 999_999]}, 422, "displayed_order"),  # ids: refused
        ({"choice": "A", "displayed_order": [shown[0], "0" * 16]}, 400, "displayed_order"),  # not this task's
        ({"ranking": [[shown[0]], [shown[1]]], "displayed_order": shown}, 400, "ranking"),
    ]
    for body, status, field in cases:
        r = client.post(url, headers=h, json=body)
        assert r.status_code == status, (body, r.text)
        assert field in r.json()["detail"], (body, r.json())
    r = client.post(url, headers={**h, "Content-Type": "application/json"}, content=b'{"choice": "A",')
    assert r.status_code == 422 and "json" in r.text.lower()
    r = client.post("/api/tasks/999999/judgement", headers=h, json={"choice": "A", "displayed_order": shown})
    assert r.status_code == 404 and "task_id" in r.json()["detail"]
    assert client.post("/api/tasks/abc/judgement", headers=h, json={}).status_code == 422
    # ids beyond 64 bits, NaN and NUL bytes are refused before they reach the database driver
    for bad in ("/api/tasks/100000000000000000000000/judgement", "/api/tasks/100000000000000000000000/skip"):
        r = client.post(bad, headers=h, json={"choice": "A", "displayed_order": shown})
        assert r.status_code == 422 and "task_id" in r.json()["detail"]
    r = client.post(url, headers={**h, "Content-Type": "application/json"},
                    content=b'{"choice": "A", "displayed_order": %s, "seconds": NaN}'
                    % json.dumps(shown).encode())
    assert r.status_code == 422 and "seconds" in r.json()["detail"]
    r = client.post(url, headers=h, json={"choice": "A", "displayed_order": shown, "rationale": "a\x00b"})
    assert r.status_code == 422 and "rationale" in r.json()["detail"]
    assert client.get("/api/projects/nope/next", headers=h).status_code == 404
    assert client.post("/api/login", json={"name": "alice"}).status_code == 422
    assert store.judgements("p") == []  # nothing stored by any of them


def test_two_annotators_share_a_task_and_a_third_does_not_get_it(tmp_path):
    store = make_store(tmp_path / "one.db", n_tasks=1, per_task=2)
    with TestClient(create_app(store.url, secret="s", store=store)) as client:
        ha, hb, hc = (api_token(client, n) for n in ("alice", "bob", "carol"))
        ta = client.get("/api/projects/p/next", headers=ha).json()["task"]
        tb = client.get("/api/projects/p/next", headers=hb).json()["task"]
        assert ta["id"] == tb["id"]
        # both slots are reserved: nothing for carol, and she cannot take the task anyway
        assert client.get("/api/projects/p/next", headers=hc).json() == {"task": None}
        for h, t in ((ha, ta), (hb, tb)):
            r = client.post(f"/api/tasks/{t['id']}/judgement", headers=h,
                            json={"choice": "tie_good", "displayed_order": [x["id"] for x in t["responses"]]})
            assert r.status_code == 200
        assert client.get("/api/projects/p/next", headers=hc).json() == {"task": None}
        r = client.post(f"/api/tasks/{ta['id']}/judgement", headers=hc,
                        json={"choice": "A", "displayed_order": [x["id"] for x in ta["responses"]]})
        assert r.status_code == 409
        # never the same annotator twice
        assert client.get("/api/projects/p/next", headers=ha).json() == {"task": None}
        assert client.get("/api/projects/p/progress", headers=ha).json()["tasks_complete"] == 1
    assert sorted(j["annotator"] for j in store.judgements("p")) == ["alice", "bob"]
    store.close()


def test_skip_moves_on_and_is_not_offered_again(client, store):
    h = api_token(client, "alice")
    first = client.get("/api/projects/p/next", headers=h).json()["task"]
    assert client.post(f"/api/tasks/{first['id']}/skip", headers=h).json() == {"skipped": first["id"]}
    nxt = client.get("/api/projects/p/next", headers=h).json()["task"]
    assert nxt["id"] != first["id"]
    assert store.progress("p")["skips"] == 1


# ------------------------------------------------------------------------------------ HTML pages


def test_label_page_form_flow_escaping_and_csrf(client, store):
    form_login(client, "bob")
    page = client.get("/projects/p/label")
    assert page.status_code == 200
    html = page.text
    # untrusted prompt text is escaped, guidelines markdown rendered with raw HTML escaped
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    assert "<strong>helpful</strong>" in html and "&lt;b&gt;raw html&lt;/b&gt;" in html
    assert "script-src 'self'" in page.headers["content-security-policy"]
    task_id = int(re.search(r'name="task_id" value="(\d+)"', html).group(1))
    order = re.search(r'name="displayed_order" value="([0-9a-f,]+)"', html).group(1)
    shown = response_ids(store.next_task("p", store.get_annotator("bob").id), order)
    form = {"task_id": task_id, "displayed_order": order, "choice": "B", "strength": "2",
            "seconds": "4.25", "rationale": "right one is clearer", "action": "submit"}
    # no CSRF token, or a wrong one: refused, nothing stored
    assert client.post("/projects/p/label", data=form).status_code == 403
    assert client.post("/projects/p/label", data={**form, "csrf": "0" * 64}).status_code == 403
    # a cross-site form post is refused whatever it carries
    r = client.post("/projects/p/label", data={**form, "csrf": csrf_of(html)},
                    headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    assert store.judgements("p") == []
    r = client.post("/projects/p/label", data={**form, "csrf": csrf_of(html)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/projects/p/label?saved=1"
    (j,) = store.judgements("p")
    assert j["displayed_order"] == shown and j["winner_id"] == shown[1] and j["position_chosen"] == 1
    assert j["strength"] == 2 and j["seconds"] == 4.25 and j["rationale"] == "right one is clearer"
    nxt = client.get("/projects/p/label?saved=1").text
    assert "Saved." in nxt and 'id="progress-mine">1<' in nxt
    # a form without a choice is a 400 naming the field, and the page still offers a task
    tid2 = int(re.search(r'name="task_id" value="(\d+)"', nxt).group(1))
    order2 = re.search(r'name="displayed_order" value="([0-9a-f,]+)"', nxt).group(1)
    r = client.post("/projects/p/label", data={"task_id": tid2, "displayed_order": order2, "action": "submit",
                                               "csrf": csrf_of(nxt)})
    assert r.status_code == 400 and "choice" in r.text and 'name="task_id"' in r.text
    # skip through the form
    r = client.post("/projects/p/label", data={"task_id": tid2, "action": "skip", "csrf": csrf_of(nxt)},
                    follow_redirects=False)
    assert r.status_code == 303 and store.progress("p")["skips"] == 1


def test_login_form_refuses_cross_site_origin(client):
    for origin in ("http://evil.example", "null", "http://testserver.evil.example"):
        r = client.post("/login", data={"name": "alice", "password": PASSWORDS["alice"]},
                        headers={"Origin": origin}, follow_redirects=False)
        assert r.status_code == 403, origin
    r = client.post("/login", data={"name": "alice", "password": PASSWORDS["alice"]},
                    headers={"Origin": "http://testserver"}, follow_redirects=False)
    assert r.status_code == 303


def test_ranking_task_by_form_and_api(tmp_path):
    store = make_store(tmp_path / "k.db", n_tasks=2, per_task=1, models=("m1", "m2", "m3"))
    with TestClient(create_app(store.url, secret="s", store=store)) as client:
        form_login(client, "alice")
        html = client.get("/projects/p/label").text
        assert html.count("<select name=\"rank_") == 3
        tid = int(re.search(r'name="task_id" value="(\d+)"', html).group(1))
        order = re.search(r'name="displayed_order" value="([0-9a-f,]+)"', html).group(1)
        a, b, c = order.split(",")
        # b best, a and c tied behind it
        r = client.post("/projects/p/label", data={
            "task_id": tid, "displayed_order": order, "action": "submit",
            f"rank_{a}": "2", f"rank_{b}": "1", f"rank_{c}": "2", "csrf": csrf_of(html)},
            follow_redirects=False)
        assert r.status_code == 303, r.text
        h = api_token(client, "bob")
        t = client.get("/api/projects/p/next", headers=h).json()["task"]
        ids = [x["id"] for x in t["responses"]]
        r = client.post(f"/api/tasks/{t['id']}/judgement", headers=h,
                        json={"ranking": [[ids[2]], [ids[0]], [ids[1]]], "displayed_order": ids})
        assert r.status_code == 200, r.text
    j1, j2 = store.judgements("p")
    a, b, c = response_ids(store.last_judgement("p", j1["annotator_id"]), order)
    assert j1["ranking"] == [[b], sorted([a, c])] and j1["winner_id"] == b
    ids = response_ids(store.last_judgement("p", j2["annotator_id"]), ",".join(ids))
    assert j2["ranking"] == [[ids[2]], [ids[0]], [ids[1]]]
    store.close()


def test_admin_pages_invite_analytics_and_guidelines(client, store):
    # two annotators label everything, both always choosing the left (first shown) response
    for name in ("alice", "bob"):
        h = api_token(client, name)
        while (t := client.get("/api/projects/p/next", headers=h).json()["task"]) is not None:
            shown = [r["id"] for r in t["responses"]]
            client.post(f"/api/tasks/{t['id']}/judgement", headers=h,
                        json={"choice": "A", "strength": 2, "displayed_order": shown, "seconds": 3})
    form_login(client, "root")
    admin = client.get("/admin")
    assert "8 / 8" in admin.text and "alice: 8" in admin.text
    page = client.get("/admin/projects/p")
    assert page.status_code == 200
    board = re.search(r'<table id="leaderboard">(.*?)</table>', page.text, re.S).group(1)
    assert "m1" in board and "m2" in board
    assert "Fleiss" in page.text and "Krippendorff" in page.text and "position-bias" in page.text
    assert "Left (first shown) chosen in 16 of 16" in page.text  # everyone clicked the left one
    # invite: the generated password is shown once and works; the name cannot be taken twice
    csrf = csrf_of(admin.text)
    r = client.post("/admin/annotators", data={"name": "dave", "role": "annotator", "csrf": csrf})
    password = re.search(r'id="invited-password">([^<]+)<', r.text).group(1)
    assert store.authenticate("dave", password).role == "annotator"
    assert "invited-password" not in client.get("/admin").text
    r = client.post("/admin/annotators", data={"name": "dave", "role": "annotator", "csrf": csrf})
    assert r.status_code == 409 and "already exists" in r.text
    # guidelines: a new version, old kept
    r = client.post("/admin/projects/p/guidelines", data={"guidelines": "v2 rules", "csrf": csrf},
                    follow_redirects=False)
    assert r.status_code == 303 and store.get_project("p").guideline_version == 2
    assert client.get("/admin/projects/nope").status_code == 404
    # export: the rows `rlhf label export` writes, in TRL columns; chosen = the left response here
    r = client.get("/admin/projects/p/export?aggregate=judgement")
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    rows = [json.loads(line) for line in r.text.splitlines()]
    assert len(rows) == 16
    by_key = {(j["task_id"], j["annotator"]): j for j in store.judgements("p")}
    for row in rows:
        j = by_key[(row["task_id"], row["annotator"])]
        assert row["prompt"] == j["prompt"] and row["margin"] == pytest.approx(0.3333)
        left, right = (j["texts"][j["response_ids"].index(i)] for i in j["displayed_order"])
        assert (row["chosen"], row["rejected"]) == (left, right)
    assert client.get("/admin/projects/p/export?aggregate=bogus").status_code == 422


def test_admin_sees_per_annotator_progress_in_the_api(client):
    h = api_token(client, "root")
    prog = client.get("/api/projects/p/progress", headers=h).json()
    assert prog["per_annotator"] == {} and prog["mine"] == 0


def test_render_markdown_is_safe_subset():
    out = str(render_markdown("# Title\n\n- one **bold**\n- two `<b>`\n\n<img src=x onerror=alert(1)> "
                              "[ok](https://example.org) [bad](javascript:alert(1)) ![pic](https://x.test/a.png)"
                              "\n\n```python\nif a < b:\n    print('<i>')\n```\n\n| h1 | h2 |\n|---|:-:|\n"
                              "| <u>c</u> | [x](vbscript:y) |\n"))
    assert "<h3>Title</h3>" in out
    assert "<ul>\n<li>one <strong>bold</strong></li>\n<li>two <code>&lt;b&gt;</code></li>\n</ul>" in out
    assert "<img" not in out and "&lt;img src=x onerror=alert(1)&gt;" in out
    assert '<a href="https://example.org"' in out  # an image is at most a link: the page never fetches it
    assert 'href="javascript' not in out and 'href="vbscript' not in out
    assert 'rel="noopener noreferrer nofollow"' in out
    assert "<pre><code class=\"language-python\">if a &lt; b:\n    print('&lt;i&gt;')\n</code></pre>" in out
    assert "<table>" in out and "<th>h1</th>" in out and "<td>&lt;u&gt;c&lt;/u&gt;</td>" in out
    assert "style=" not in out  # the CSP refuses inline styles; alignment is dropped, not half-applied


def test_rlhf_label_serve_starts_on_a_fresh_file_and_prints_the_url(tmp_path):
    """`rlhf label serve` as a user types it: a fresh SQLite file, the first admin created, the URL
    printed, the server answering on 127.0.0.1; stopped at the end."""
    import os
    import socket
    import subprocess
    import sys
    import threading
    import time
    from pathlib import Path

    import httpx

    with socket.socket() as s:  # a free port (released just before the server binds it)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = tmp_path / "fresh.db"
    exe = str(Path(sys.executable).parent / "rlhf")
    proc = subprocess.Popen([exe, "label", "serve", f"store={db}", f"port={port}", "create_admin=root"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out: list[str] = []
    # A reader thread, not select() + readline(): readline can pull several lines into the text
    # wrapper's buffer, after which select() never reports the pipe readable again and the last
    # lines ("Application startup complete") are never seen (a CI flake).
    reader = threading.Thread(target=lambda: out.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 90
        while not any("Uvicorn running" in line or "Application startup complete" in line
                      for line in list(out)):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(out)
            time.sleep(0.1)
        text = "".join(out)
        assert f"open http://127.0.0.1:{port}/" in text
        password = re.search(r"created admin 'root' with password: (\S+)", text).group(1)
        assert db.exists()
        assert httpx.get(f"http://127.0.0.1:{port}/login", timeout=10).status_code == 200
        r = httpx.post(f"http://127.0.0.1:{port}/api/login", json={"name": "root", "password": password},
                       timeout=10)
        assert r.status_code == 200 and r.json()["annotator"]["role"] == "admin"
        # X-Forwarded-For is not believed (no trusted proxy): after 5 failures the name is locked for
        # every claimed address, and the right password is refused while it is.
        codes = [httpx.post(f"http://127.0.0.1:{port}/api/login", json={"name": "root", "password": "wrong"},
                            headers={"X-Forwarded-For": f"10.0.0.{i}"}, timeout=10).status_code
                 for i in range(8)]
        assert codes[:5] == [401] * 5 and codes[5:] == [429] * 3, codes
        r = httpx.post(f"http://127.0.0.1:{port}/api/login", json={"name": "root", "password": password},
                       headers={"X-Forwarded-For": "10.9.9.9"}, timeout=10)
        assert r.status_code == 429, r.text
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.slow  # ~1 min on 2 cores, mostly creating 560 tasks (one fsync'd transaction each)
def test_twenty_concurrent_clients_over_loopback_lose_and_duplicate_nothing(tmp_path):
    """20 annotators, each its own thread and HTTP connection to uvicorn on 127.0.0.1, take 50 tasks
    each through the JSON API (next -> judgement): 1000 rows, none lost or duplicated, no task over
    its 2 annotators, nobody judging a task twice."""
    import socket
    import threading
    import time
    from collections import Counter

    import httpx
    import uvicorn

    store = FeedbackStore(str(tmp_path / "conc.db"))
    store.create_project("c", annotators_per_task=2)
    for i in range(560):  # 1120 slots for 1000 judgements: the queue never runs dry
        pid = store.add_prompt("c", f"prompt {i}")
        store.create_task("c", [store.add_response(pid, f"x{i}", "m1"),
                                store.add_response(pid, f"y{i}", "m2")])
    names = [f"ann{k:02d}" for k in range(20)]
    for n in names:
        store.add_annotator(n, "pw-" + n)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    srv = uvicorn.Server(uvicorn.Config(create_app(store.url, secret="s", store=store), log_level="warning",
                                        lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    failures: list[str] = []
    done: dict[str, list[int]] = {}

    def annotator(name: str) -> None:
        try:
            with httpx.Client(base_url=base, timeout=60) as c:
                token = c.post("/api/login", json={"name": name, "password": "pw-" + name}).json()["token"]
                h = {"Authorization": f"Bearer {token}"}
                mine = []
                for _ in range(50):
                    task = c.get("/api/projects/c/next", headers=h).json()["task"]
                    shown = [r["id"] for r in task["responses"]]
                    r = c.post(f"/api/tasks/{task['id']}/judgement", headers=h,
                               json={"choice": "A", "displayed_order": shown})
                    if r.status_code != 200:
                        failures.append(f"{name}: {r.status_code} {r.text}")
                    mine.append(task["id"])
                done[name] = mine
        except Exception as e:  # surfaced by the assertion below, with the client's name
            failures.append(f"{name}: {e!r}")

    try:
        workers = [threading.Thread(target=annotator, args=(n,)) for n in names]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=600)
        assert failures == []
        js = store.judgements("c")
        assert len(js) == 1000
        pairs = Counter((j["task_id"], j["annotator"]) for j in js)
        assert max(pairs.values()) == 1                                  # nobody twice on a task
        assert max(Counter(j["task_id"] for j in js).values()) <= 2      # overlap cap held
        assert all(len(set(done[n])) == 50 for n in names)
        assert sorted(pairs) == sorted((t, n) for n in names for t in done[n])  # none lost
    finally:
        srv.should_exit = True
        thread.join(timeout=15)
        sock.close()
        store.close()


def test_oversized_and_unlengthed_bodies_are_refused_before_parsing(client, store):
    """A 2 MB form to /login (unauthenticated) is refused from its Content-Length (413), a chunked body
    without one gets 411, and nothing was parsed or stored; normal requests still work."""
    before = len(store.list_annotators())
    r = client.post("/login", data={"name": "x" * 2_000_000, "password": "p"})
    assert r.status_code == 413 and "x" * 100 not in r.text  # the input is not echoed back
    r = client.post("/api/login", content=iter([b'{"name": "alice", ', b'"password": "nope"}']),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 411
    assert len(store.list_annotators()) == before
    r = client.post("/api/login", json={"name": "alice", "password": PASSWORDS["alice"]})
    assert r.status_code == 200


def test_the_order_shown_is_the_servers_not_the_clients(client, store):
    """position_chosen feeds the position-bias test: a client that reports another order than the
    one it was served (to skew it, or by a bug) is refused, naming the field; nothing is stored."""
    h = api_token(client, "alice")
    task = client.get("/api/projects/p/next", headers=h).json()["task"]
    shown = [r["id"] for r in task["responses"]]
    url = f"/api/tasks/{task['id']}/judgement"
    r = client.post(url, headers=h, json={"choice": "A", "displayed_order": shown[::-1]})
    assert r.status_code == 400 and "displayed_order" in r.text and "shown to you" in r.text
    assert store.judgements("p") == []
    assert client.post(url, headers=h, json={"choice": "A", "displayed_order": shown}).status_code == 200


def test_a_task_of_another_project_cannot_be_judged_under_this_projects_url(client, store):
    other = store.create_project("q", annotators_per_task=1)
    pid = store.add_prompt(other.name, "a prompt of q")
    ids = [store.add_response(pid, f"answer {m}", m) for m in ("m1", "m2")]
    foreign = store.create_task(other.name, ids)
    form_login(client, "bob")
    html = client.get("/projects/p/label").text
    served = ",".join(store.next_task("q", store.get_annotator("bob").id).handles)
    form = {"task_id": foreign, "displayed_order": served, "choice": "A", "action": "submit",
            "csrf": csrf_of(html)}
    r = client.post("/projects/p/label", data=form, follow_redirects=False)
    assert r.status_code == 404 and "is not in project &#39;p&#39;" in r.text  # escaped in the page
    assert store.judgements("q") == [] and store.judgements("p") == []
