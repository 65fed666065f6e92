"""The people side of the web UI over a real store (FastAPI TestClient), on SQLite and PostgreSQL
(conftest.store_url): invited accounts choose their own password first, an admin deactivates,
reactivates, resets passwords, logs people out and restricts projects, the login throttle counts per
name and per address, and the disagreement review, gold and drill-down pages show what they should."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from rlhfkit.feedback.app import LoginThrottle, create_app
from rlhfkit.feedback.store import FeedbackStore

PASSWORDS = {"root": "root-pw-123", "alice": "alice-pw-123", "bob": "bob-pw-1234"}


@pytest.fixture
def store(store_url):
    s = FeedbackStore(store_url)
    s.create_project("p", annotators_per_task=2)
    for i in range(3):
        pid = s.add_prompt("p", f"prompt {i}")
        s.create_task("p", [s.add_response(pid, f"answer {i} by {m}", m) for m in ("m1", "m2")])
    s.add_annotator("root", PASSWORDS["root"], role="admin")
    for name in ("alice", "bob"):
        s.add_annotator(name, PASSWORDS[name])
    yield s
    s.close()


@pytest.fixture
def app(store):
    return create_app(store.url, secret="people-secret", store=store)


def client_for(app, address="10.0.0.1") -> TestClient:
    return TestClient(app, client=(address, 50000))


def login(client, name, password=None, expect="/projects"):
    r = client.post("/login", data={"name": name, "password": password or PASSWORDS[name]},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == expect, r.text
    return r


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)


def bearer(client, name, password=None) -> dict:
    r = client.post("/api/login", json={"name": name, "password": password or PASSWORDS[name]})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def test_an_invited_annotator_must_choose_a_password_before_anything_else(app, store):
    admin, dave = client_for(app), client_for(app, "10.0.0.2")
    login(admin, "root")
    r = admin.post("/admin/annotators", data={"name": "dave", "role": "annotator",
                                              "csrf": csrf_of(admin.get("/admin").text)})
    given = re.search(r'id="invited-password">([^<]+)<', r.text).group(1)
    assert store.get_annotator("dave").must_change_password
    login(dave, "dave", given, expect="/account")  # straight to the password form
    for path in ("/projects", "/projects/p/label"):
        r = dave.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/account", path
    page = dave.get("/account")
    assert page.status_code == 200 and 'id="must-change"' in page.text
    h = bearer(dave, "dave", given)
    r = dave.get("/api/projects", headers=h)
    assert r.status_code == 403 and "/api/password" in r.json()["detail"]
    csrf = csrf_of(page.text)
    r = dave.post("/account", data={"csrf": csrf, "current": given, "new": given, "again": given})
    assert r.status_code == 400 and "differ" in r.text  # the password the admin saw cannot stay
    r = dave.post("/account", data={"csrf": csrf, "current": given, "new": "dave's own pw",
                                    "again": "dave's own pw"})
    assert r.status_code == 200 and 'id="saved"' in r.text
    assert dave.get("/projects").status_code == 200
    assert dave.get("/api/projects", headers=h).status_code == 401  # other sessions ended with the change
    assert not store.get_annotator("dave").must_change_password


def test_admin_deactivates_reactivates_resets_and_logs_out(app, store):
    admin, alice = client_for(app), client_for(app, "10.0.0.2")
    login(admin, "root")
    login(alice, "alice")
    token = bearer(alice, "alice")
    aid = store.get_annotator("alice").id
    page = admin.get(f"/admin/annotators/{aid}")
    assert page.status_code == 200 and "Status: <strong>active</strong>" in page.text
    csrf = csrf_of(page.text)
    assert admin.post(f"/admin/annotators/{aid}/active", data={"active": "0"}).status_code == 403  # no CSRF
    r = admin.post(f"/admin/annotators/{aid}/active", data={"active": "0", "csrf": csrf},
                   follow_redirects=False)
    assert r.status_code == 303 and store.get_annotator("alice").active is False
    assert alice.get("/projects", follow_redirects=False).headers["location"] == "/login"  # session gone
    assert alice.get("/api/projects", headers=token).status_code == 401
    r = alice.post("/login", data={"name": "alice", "password": PASSWORDS["alice"]}, follow_redirects=False)
    assert r.status_code == 403 and "deactivated" in r.text
    r = alice.post("/api/login", json={"name": "alice", "password": PASSWORDS["alice"]})
    assert r.status_code == 403 and "deactivated" in r.json()["detail"]
    r = alice.post("/login", data={"name": "alice", "password": "wrong"}, follow_redirects=False)
    assert r.status_code == 401 and "deactivated" not in r.text  # a wrong password learns nothing
    assert "deactivated" in admin.get("/admin").text
    r = admin.post(f"/admin/annotators/{aid}/active", data={"active": "maybe", "csrf": csrf})
    assert r.status_code == 400 and "active" in r.text
    admin.post(f"/admin/annotators/{aid}/active", data={"active": "1", "csrf": csrf})
    login(alice, "alice")
    # reset: a new password shown once, the old one and every session dead, a change forced
    r = admin.post(f"/admin/annotators/{aid}/password", data={"csrf": csrf})
    new = re.search(r'id="reset-password">([^<]+)<', r.text).group(1)
    assert "reset-password" not in admin.get(f"/admin/annotators/{aid}").text
    assert alice.get("/projects", follow_redirects=False).headers["location"] == "/login"
    assert alice.post("/api/login", json={"name": "alice", "password": PASSWORDS["alice"]}).status_code == 401
    login(alice, "alice", new, expect="/account")
    # log out everywhere
    store.change_password(aid, new, "alice-own-pw")
    login(alice, "alice", "alice-own-pw")
    h = bearer(alice, "alice", "alice-own-pw")
    admin.post(f"/admin/annotators/{aid}/sessions/end", data={"csrf": csrf})
    assert alice.get("/api/projects", headers=h).status_code == 401
    assert alice.get("/projects", follow_redirects=False).status_code == 303
    # an admin cannot lock themselves out; an annotator cannot do any of this; unknown ids are 404s
    rid = store.get_annotator("root").id
    r = admin.post(f"/admin/annotators/{rid}/active", data={"active": "0", "csrf": csrf})
    assert r.status_code == 400 and store.get_annotator("root").active
    assert admin.get("/admin/annotators/999999").status_code == 404
    bob = client_for(app, "10.0.0.3")
    login(bob, "bob")
    r = bob.post(f"/admin/annotators/{aid}/active",
                 data={"active": "0", "csrf": csrf_of(bob.get("/account").text)})
    assert r.status_code == 403 and store.get_annotator("alice").active


def test_a_members_only_project_is_hidden_and_closed_to_others(app, store):
    admin, alice, bob = client_for(app), client_for(app, "10.0.0.2"), client_for(app, "10.0.0.3")
    login(admin, "root")
    csrf = csrf_of(admin.get("/admin/projects/p").text)
    admin.post("/admin/projects/p/access", data={"members_only": "1", "csrf": csrf})
    aid = store.get_annotator("alice").id
    r = admin.post("/admin/projects/p/members", data={"annotator_id": str(aid), "csrf": csrf},
                   follow_redirects=False)
    assert r.status_code == 303 and [m.name for m in store.members("p")] == ["alice"]
    page = admin.get("/admin/projects/p").text
    assert "Members only" in page and f'href="/admin/annotators/{aid}">alice<' in page
    login(alice, "alice")
    login(bob, "bob")
    assert "/projects/p/label" in alice.get("/projects").text
    assert "/projects/p/label" not in bob.get("/projects").text
    r = bob.get("/projects/p/label")
    assert r.status_code == 403 and "members only" in r.text
    hb = bearer(bob, "bob")
    assert bob.get("/api/projects", headers=hb).json() == {"projects": []}
    r = bob.get("/api/projects/p/next", headers=hb)
    assert r.status_code == 403 and "members only" in r.json()["detail"]
    tid = store.tasks("p")[0]["task_id"]
    assert bob.post(f"/api/tasks/{tid}/skip", headers=hb).status_code == 403
    assert alice.get("/api/projects/p/next", headers=bearer(alice, "alice")).json()["task"] is not None
    r = admin.post("/admin/projects/p/members", data={"annotator_id": "x", "csrf": csrf})
    assert r.status_code == 400 and "annotator_id" in r.text
    admin.post(f"/admin/projects/p/members/{aid}/remove", data={"csrf": csrf})
    admin.post("/admin/projects/p/access", data={"members_only": "0", "csrf": csrf})
    assert store.members("p") == [] and bob.get("/api/projects/p/next", headers=hb).status_code == 200


def test_the_login_throttle_counts_per_name_and_per_address(store):
    """3 failures for alice from one address lock alice from every address (a spoofed or rotating
    address buys nothing); failures spread over many names from one address lock that address
    (password spraying) but not others; a success clears the name's count, not the address's."""
    now = [0.0]

    class Clock(LoginThrottle):
        def __init__(self, max_failures, window_s, **kw):
            super().__init__(max_failures, window_s, clock=lambda: now[0], **kw)

    import rlhfkit.feedback.web.app as app_module

    original = app_module.LoginThrottle
    app_module.LoginThrottle = Clock
    try:
        app = create_app(store.url, secret="s", store=store, login_max_failures=3, login_window_s=60,
                         login_max_failures_per_address=5)
    finally:
        app_module.LoginThrottle = original
    a, b, c = client_for(app, "10.1.1.1"), client_for(app, "10.2.2.2"), client_for(app, "10.3.3.3")
    for client in (a, b, c):
        assert client.post("/api/login", json={"name": "alice", "password": "guess"}).status_code == 401
    fresh = client_for(app, "10.9.9.9")
    r = fresh.post("/api/login", json={"name": "alice", "password": PASSWORDS["alice"]})
    assert r.status_code == 429 and "for this name" in r.json()["detail"]
    r = fresh.post("/login", data={"name": "Alice ", "password": PASSWORDS["alice"]})
    assert r.status_code == 429  # the name is compared trimmed and case-folded, on the form too
    # spraying from a: 1 failure so far; 4 more over other names reach its 5
    for name in ("bob", "root", "nobody", "x"):
        assert a.post("/api/login", json={"name": name, "password": "guess"}).status_code == 401
    r = a.post("/api/login", json={"name": "bob", "password": PASSWORDS["bob"]})
    assert r.status_code == 429 and "from this address" in r.json()["detail"]
    assert b.post("/api/login", json={"name": "bob", "password": PASSWORDS["bob"]}).status_code == 200
    now[0] += 61
    assert a.post("/api/login", json={"name": "alice", "password": PASSWORDS["alice"]}).status_code == 200


def _split_votes(store):
    """alice and bob split on task 1 (bob's rationale is hostile HTML), agree on task 2."""
    t1, t2 = (t["task_id"] for t in store.tasks("p")[:2])
    (a, b) = (store.get_annotator(n) for n in ("alice", "bob"))
    ids1, ids2 = (t["response_ids"] for t in store.tasks("p")[:2])
    store.submit(t1, a.id, choice="A", strength=3, displayed_order=ids1, rationale="left is more complete")
    store.submit(t1, b.id, choice="B", displayed_order=ids1,
                 rationale="<script>alert(1)</script> right is terse")
    for who in (a, b):
        store.submit(t2, who.id, choice="A", displayed_order=ids2)
    return t1, t2


def test_review_gold_and_drill_down_pages(app, store):
    t1, t2 = _split_votes(store)
    admin = client_for(app)
    login(admin, "root")
    page = admin.get("/admin/projects/p")
    assert 'id="review-link"' in page.text and "Gold questions (0)" in page.text
    r = admin.get("/admin/projects/p/review")
    assert r.status_code == 200
    assert f'id="task-{t1}"' in r.text and f'id="task-{t2}"' not in r.text  # only the split task
    assert "left is more complete" in r.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; right is terse" in r.text  # escaped, inert
    assert "<script>alert(1)" not in r.text and "A better × 1" in r.text and "m2" in r.text
    # mark the split task gold from the review ("A" is right): alice scores 1, bob 0
    r = admin.post("/admin/projects/p/gold", data={"task_id": str(t1), "answer": "A", "back": "review",
                                                   "csrf": csrf_of(r.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith(f"/review#task-{t1}")
    gold = admin.get("/admin/projects/p/gold")
    rows = re.findall(r'<tr><td><a href="/admin/annotators/\d+">(\w+)</a></td><td>(\d+)</td>\s*'
                      r'<td>[\d.]+</td><td class="acc">([\d.]+)</td>', gold.text)
    assert rows == [("bob", "1", "0.000"), ("alice", "1", "1.000")]
    assert 'id="gold-tasks"' in gold.text and "A better" in gold.text
    page = admin.get("/admin/projects/p").text
    assert "Gold questions (1)" in page and '1.000 <span class="muted">(1)</span>' in page
    # bad answers name the field and keep the page
    for data, status, text in (({"task_id": str(t2), "answer": "C"}, 400, "answer"),
                               ({"task_id": "99999", "answer": "A"}, 404, "task_id")):
        r = admin.post("/admin/projects/p/gold", data={**data, "csrf": csrf_of(gold.text)})
        assert r.status_code == status and text in r.text and 'id="gold-accuracy"' in r.text
    # drill-down: the record and the rationales of one annotator
    bid = store.get_annotator("bob").id
    r = admin.get(f"/admin/annotators/{bid}")
    assert r.status_code == 200 and "right is terse" in r.text and "0.000" in r.text
    assert "<script>alert(1)" not in r.text
    # the export link can drop annotators under a gold accuracy (bob: 0.0) like `rlhf label export`
    rows = admin.get("/admin/projects/p/export?exclude_below=0.7").text
    assert "left is more complete" in rows and "right is terse" not in rows
    assert admin.get("/admin/projects/p/export?exclude_below=2").status_code == 422
    # clear it again
    admin.post(f"/admin/projects/p/gold/{t1}/clear", data={"csrf": csrf_of(gold.text)})
    r = admin.get("/admin/projects/p/export?exclude_below=0.7")
    assert r.status_code == 400 and "needs gold questions" in r.text
    assert store.progress("p")["gold_tasks"] == 0
    # export from the admin page carries the rationales
    rows = admin.get("/admin/projects/p/export").text
    assert "left is more complete" in rows and '"annotator_id"' in rows


def test_k_way_gold_answers_by_letters(app, store):
    pid = store.add_prompt("p", "rank us")
    tid = store.create_task("p", [store.add_response(pid, f"r{k}", f"m{k}") for k in range(3)])
    admin = client_for(app)
    login(admin, "root")
    csrf = csrf_of(admin.get("/admin/projects/p/gold").text)
    r = admin.post("/admin/projects/p/gold", data={"task_id": str(tid), "answer": "B > A = D", "csrf": csrf})
    assert r.status_code == 400 and "letters A, B, C" in r.text
    r = admin.post("/admin/projects/p/gold", data={"task_id": str(tid), "answer": "b > a = c", "csrf": csrf},
                   follow_redirects=False)
    assert r.status_code == 303
    ids = store.tasks("p")[-1]["response_ids"]
    assert store.tasks("p")[-1]["gold_answer"]["ranking"] == [[ids[1]], [ids[0], ids[2]]]
    assert "B &gt; A = C" in admin.get("/admin/projects/p/gold").text  # escaped ">"
