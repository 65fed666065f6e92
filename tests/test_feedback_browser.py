"""The labeling UI in a real headless browser: Playwright (sync API) driving Debian's Chromium against
uvicorn on 127.0.0.1. Keyboard-only labeling (A, 1-4, Enter, T, S, rank digits in a 3-way task), one
judgement by mouse with a rationale typed through the shortcut keys, hostile response text rendered
inert, the store holding exactly those judgements, and the admin leaderboard."""

from __future__ import annotations

from pathlib import Path

import pytest
from _live_server import live_app
from playwright.sync_api import sync_playwright

from rlhfkit.feedback.store import FeedbackStore

# Debian's Chromium (CI installs it; never `playwright install`, which downloads a browser).
CHROMIUM = Path("/usr/bin/chromium")

HOSTILE = "<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\"> evil"


@pytest.fixture
def server(tmp_path):
    """A store with four pair tasks (one with hostile text) and a 3-way ranking task, served by
    uvicorn in a thread."""

    store = FeedbackStore(str(tmp_path / "fb.db"))
    store.create_project("p", guidelines="Prefer the **clearer** review.", annotators_per_task=1)
    for i in range(4):
        pid = store.add_prompt("p", f"Write review {i}:")
        texts = (HOSTILE, "plain answer 0") if i == 0 else (f"good answer {i}", f"bad answer {i}")
        ids = [store.add_response(pid, t, m) for t, m in zip(texts, ("m1", "m2"))]
        store.create_task("p", ids)
    pid = store.add_prompt("p", "Rank these reviews:")
    store.create_task("p", [store.add_response(pid, f"option {k}", m)
                            for k, m in enumerate(("m1", "m2", "m3"))])
    store.add_annotator("alice", "alice-pw")
    store.add_annotator("root", "root-pw", role="admin")

    try:
        with live_app(store, "browser-test") as base:
            yield base, store
    finally:
        store.close()


def shown_task(page) -> tuple[int, list[str]]:
    """The task on the page and the opaque handles of its responses in the order shown."""
    task_id = int(page.locator('input[name="task_id"]').get_attribute("value"))
    return task_id, page.locator('input[name="displayed_order"]').get_attribute("value").split(",")


def response_ids(store, task_id: int, handles: list[str]) -> list[int]:
    """The response ids behind the handles a page showed (the store knows both)."""
    (t,) = [t for t in store.tasks("p") if t["task_id"] == task_id]
    by_handle = dict(zip(t["handles"], t["response_ids"]))
    return [by_handle[h] for h in handles]


def test_label_by_keyboard_and_mouse_in_chromium(server):
    base, store = server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            page.goto(f"{base}/login")
            page.fill("#name", "alice")
            page.fill("#password", "alice-pw")
            with page.expect_navigation():
                page.keyboard.press("Enter")
            assert page.url.endswith("/projects")
            page.goto(f"{base}/projects/p/label")

            # task 1 (the hostile one): keyboard only, A then 3 then Enter
            t1, order1 = shown_task(page)
            assert page.evaluate("window.__pwned") is None       # neither the script nor onerror ran
            assert page.locator("img").count() == 0              # the <img> is text, not an element
            assert "<script>window.__pwned = 1</script>" in page.inner_text(".responses")
            page.keyboard.press("a")
            page.keyboard.press("3")
            assert page.is_checked("#choice-A") and page.is_checked("#strength-3")
            with page.expect_navigation():
                page.keyboard.press("Enter")
            assert "saved=1" in page.url and page.inner_text("#progress-mine") == "1"

            # task 2: S skips it
            t2, _ = shown_task(page)
            assert t2 != t1
            with page.expect_navigation():
                page.keyboard.press("s")
            assert "saved=skip" in page.url

            # task 3: by mouse, with a rationale whose letters are shortcut keys
            t3, order3 = shown_task(page)
            page.click('label[for="choice-B"]')
            page.click('label[for="strength-1"]')
            page.click("#rationale")
            page.keyboard.type("a bit terse; s t x 4")
            assert page.is_checked("#choice-B") and page.is_checked("#strength-1")  # unchanged by typing
            page.keyboard.press("Escape")
            with page.expect_navigation():
                page.click("#submit")

            # task 4: a tie (both good) by keyboard; Enter without a choice first is refused in place
            t4, _ = shown_task(page)
            page.keyboard.press("Enter")
            assert page.is_visible("#client-error") and shown_task(page)[0] == t4
            page.keyboard.press("t")
            with page.expect_navigation():
                page.keyboard.press("Enter")

            # task 5, 3-way: rank numbers typed into the selects (B best, A and C tied), Enter submits
            t5, order5 = shown_task(page)
            page.focus("#rank-A")
            page.keyboard.press("2")
            page.keyboard.press("Tab")
            page.keyboard.press("1")
            page.keyboard.press("Tab")
            page.keyboard.press("2")
            assert page.inner_text("#rankno-B") == "1"  # the ranking list follows the selects
            with page.expect_navigation():
                page.keyboard.press("Enter")
            assert page.is_visible("#no-task") and page.inner_text("#progress-mine") == "4"
            assert page.inner_text("#progress-project") == "4 / 5"
            assert errors == []

            # the store holds exactly those judgements
            js = {j["task_id"]: j for j in store.judgements("p")}
            order1, order3, order5 = (response_ids(store, t, o) for t, o in ((t1, order1), (t3, order3),
                                                                            (t5, order5)))
            assert set(js) == {t1, t3, t4, t5} and store.progress("p")["skips"] == 1
            j1, j3, j4, j5 = js[t1], js[t3], js[t4], js[t5]
            assert j1["strength"] == 3 and j1["winner_id"] == order1[0] and j1["position_chosen"] == 0
            assert j1["choice"] == ("A" if order1[0] == j1["response_ids"][0] else "B")
            assert j1["displayed_order"] == order1 and j1["seconds"] > 0
            assert j3["winner_id"] == order3[1] and j3["strength"] == 1
            assert j3["rationale"] == "a bit terse; s t x 4"
            assert j4["choice"] == "tie_good" and j4["winner_id"] is None and j4["strength"] is None
            assert j5["ranking"] == [[order5[1]], sorted([order5[0], order5[2]])]
            assert j5["displayed_order"] == order5

            # an admin sees the leaderboard of the two models
            admin = browser.new_context().new_page()
            admin.goto(f"{base}/login")
            admin.fill("#name", "root")
            admin.fill("#password", "root-pw")
            with admin.expect_navigation():
                admin.click("#login")
            admin.goto(f"{base}/admin/projects/p")
            rows = admin.locator("#leaderboard tbody tr")
            assert rows.count() == 3
            assert sorted(admin.locator("#leaderboard td.model").all_inner_texts()) == ["m1", "m2", "m3"]
            assert "of 2 decided pair judgements" in admin.inner_text("#position-bias")
        finally:
            browser.close()
