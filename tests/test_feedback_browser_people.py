"""The people side of the web UI in Debian's Chromium (Playwright, sync API) against uvicorn on
127.0.0.1: an admin marks gold questions on the gold page, an annotator labels by keyboard without
being told which tasks are gold, and the admin sees their score; a deactivated annotator is locked
out mid-session; the disagreement review shows the split task with its rationales.

Set RLHFKIT_SCREENSHOTS=<dir> to keep screenshots of the review and gold pages there."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from _live_server import live_app
from playwright.sync_api import sync_playwright

from rlhfkit.feedback.store import FeedbackStore, displayed_order

CHROMIUM = Path("/usr/bin/chromium")  # Debian's; never `playwright install`
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

QUESTIONS = [
    ("How do I reverse a list in Python?",
     "Use slicing:\n\n```python\nitems[::-1]\n```\n\nor `items.reverse()` to reverse in place.",
     "Call `reversed(items)`; it returns a new list."),
    ("Is it safe to store passwords with MD5?",
     "No. MD5 is fast and broken; use a slow, salted hash such as scrypt, bcrypt or Argon2.",
     "Yes, if you add a salt."),
    ("What is the capital of Australia?", "Canberra.", "Sydney."),
]


@pytest.fixture
def server(tmp_path):
    """Project "p": three pair tasks, one annotator per task; project "r": the same questions judged
    by three annotators who split on two of them, with rationales."""

    store = FeedbackStore(str(tmp_path / "fb.db"))
    for name, per_task in (("p", 1), ("r", 3)):
        store.create_project(name, guidelines="Prefer the **correct** answer.", annotators_per_task=per_task)
        for q, good, bad in QUESTIONS:
            pid = store.add_prompt(name, q)
            store.create_task(name, [store.add_response(pid, good, "model-a"),
                                     store.add_response(pid, bad, "model-b")])
    store.add_annotator("root", "root-pw-123", role="admin")
    people = {n: store.add_annotator(n, f"{n}-pw-123") for n in ("alice", "bob", "carol")}
    votes = {"alice": ("A", "A", "A"), "bob": ("A", "B", "A"), "carol": ("B", "B", "A")}
    why = {"alice": ("slicing is idiomatic", "MD5 is broken", "Canberra is right"),
           "bob": ("shows two ways", "a salt is enough <b>really</b>", "obviously"),
           "carol": ("reversed() is clearer", "salting fixes it", "")}
    for n, a in people.items():
        for t, vote, rationale in zip(store.tasks("r"), votes[n], why[n]):
            store.submit(t["task_id"], a.id, choice=vote, displayed_order=t["response_ids"],
                         strength=2 if vote == "A" else 1, rationale=rationale or None, seconds=12.5)
    try:
        with live_app(store, "people") as base:
            yield base, store
    finally:
        store.close()


def _login(page, base, name, password):
    page.goto(f"{base}/login")
    page.fill("#name", name)
    page.fill("#password", password)
    with page.expect_navigation():
        page.click("#login")


def _keep(page, name: str, tmp_path: Path) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    if os.environ.get("RLHFKIT_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["RLHFKIT_SCREENSHOTS"]) / name)
    return path


def test_gold_questions_are_scored_and_a_deactivated_annotator_is_locked_out(server, tmp_path):
    base, store = server
    alice = store.get_annotator("alice")
    tasks = store.tasks("p")
    # Alice will press A (the left response) everywhere: make her right on one gold task, wrong on the other.
    gold = {}
    for t, right in zip(tasks[:2], (True, False)):
        left = displayed_order(t["task_id"], alice.id, t["response_ids"])[0]
        left_is_a = left == t["response_ids"][0]
        gold[t["task_id"]] = "A" if left_is_a == right else "B"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            admin = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            admin.set_default_timeout(20_000)
            _login(admin, base, "root", "root-pw-123")
            admin.goto(f"{base}/admin/projects/p/gold")
            for tid, answer in gold.items():
                admin.select_option(f"#task-{tid} select[name=answer]", answer)
                with admin.expect_navigation():
                    admin.click(f"#task-{tid} button[type=submit]")
            assert admin.locator("#gold-tasks tbody tr").count() == 2

            page = browser.new_context().new_page()
            page.set_default_timeout(20_000)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            _login(page, base, "alice", "alice-pw-123")
            page.goto(f"{base}/projects/p/label")
            seen = []
            while page.locator('input[name="task_id"]').count():
                seen.append(int(page.locator('input[name="task_id"]').get_attribute("value")))
                assert "gold" not in page.inner_text("main").lower()  # unannounced
                page.keyboard.press("a")
                with page.expect_navigation():
                    page.keyboard.press("Enter")
                assert len(seen) <= 3
            assert sorted(seen) == sorted(t["task_id"] for t in tasks) and errors == []

            admin.goto(f"{base}/admin/projects/p/gold")
            row = admin.locator("#gold-accuracy tbody tr")
            assert row.count() == 1
            assert [c.strip() for c in row.locator("td").all_inner_texts()] == ["alice", "2", "1.00", "0.500"]
            _keep(admin, "gold.png", tmp_path)
            admin.goto(f"{base}/admin/projects/p")
            assert admin.inner_text("#annotators td.gold-accuracy") == "0.500 (2)"

            # deactivate alice while she is logged in: her next page is the login form, and she cannot return
            admin.goto(f"{base}/admin/annotators/{alice.id}")
            with admin.expect_navigation():
                admin.click("#deactivate")
            assert "Deactivated" in admin.inner_text("#flash") and admin.is_visible("#reactivate")
            page.goto(f"{base}/projects")
            assert page.url.endswith("/login")
            page.fill("#name", "alice")
            page.fill("#password", "alice-pw-123")
            with page.expect_navigation():
                page.click("#login")
            assert page.url.endswith("/login") and "deactivated" in page.inner_text("#error")
            with admin.expect_navigation():
                admin.click("#reactivate")
            _login(page, base, "alice", "alice-pw-123")
            assert page.url.endswith("/projects")
        finally:
            browser.close()


def test_the_disagreement_review_shows_split_tasks_with_rationales(server, tmp_path):
    base, store = server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            admin = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            admin.set_default_timeout(20_000)
            _login(admin, base, "root", "root-pw-123")
            admin.goto(f"{base}/admin/projects/r")
            with admin.expect_navigation():
                admin.click("#review-link")
            cards = admin.locator("section.review")
            assert cards.count() == 2  # the capital question was unanimous
            first = cards.nth(0).inner_text()
            assert "Is it safe to store passwords with MD5?" in first or "reverse a list" in first
            assert admin.locator("section.review b").count() == 0  # a rationale's HTML stays text
            assert "a salt is enough <b>really</b>" in admin.inner_text("main")
            assert admin.locator("section.review td.rationale-text").count() == 6
            assert re.search(r"agreement 0\.67", first)
            _keep(admin, "shot_disagreement.png", tmp_path)
        finally:
            browser.close()
