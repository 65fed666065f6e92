"""The labelling page's content in Debian's Chromium (Playwright, sync API): a conversation task with
markdown (code fence, list, table) rendered and every XSS payload of the other tests inert, long
answers scrolling inside their panes with the controls on screen, the side-by-side diff, ranking by
keyboard and by dragging, revising the last judgement with ``U``, and a refused post that keeps
what the annotator entered."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from _live_server import live_app
from playwright.sync_api import sync_playwright

from rlhfkit.feedback.export import export_rows
from rlhfkit.feedback.store import FeedbackStore

CHROMIUM = Path("/usr/bin/chromium")  # Debian's; never `playwright install`
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

# Every hostile input of test_feedback_app.py and test_feedback_browser.py, plus markdown-specific ones.
XSS = [
    "<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\"> evil",
    "<script>alert('p')</script>",
    "<b>raw html</b>",
    "<img src=x onerror=alert(1)>",
    "[bad](javascript:window.__pwned=3)",
    "[also bad](  JaVaScRiPt:window.__pwned=4 )",
    "![x](javascript:window.__pwned=5)",
    "<a href=\"javascript:window.__pwned=6\">link</a>",
    "<svg onload=\"window.__pwned = 7\"></svg>",
    "<iframe src=\"javascript:window.__pwned=8\"></iframe>",
    "```\n</code></pre><script>window.__pwned = 9</script>\n```",
]
ANSWER = """Here is the fix:

1. Sort the list first.
2. Then **deduplicate** it.

```python
def unique_sorted(xs):
    return sorted(set(xs))
```

| input | output |
|-------|--------|
| [3, 1, 3] | [1, 3] |

""" + "\n".join(f"- further note {k}" for k in range(60))
CONVERSATION = [
    {"role": "system", "content": "You are a careful Python tutor."},
    {"role": "user", "content": "How do I remove duplicates from a list?"},
    {"role": "assistant", "content": "Use `set(xs)`; note that it **loses the order**."},
    {"role": "user", "content": "I also need the result sorted. Show code, please."},
]


def build_store(path) -> FeedbackStore:
    """Three projects: a conversation with markdown answers, hostile text everywhere, and a 4-way
    ranking task followed by a pair (for revision)."""
    store = FeedbackStore(str(path))
    store.create_project("chat", guidelines="Prefer the **correct** answer.\n\n" + "\n\n".join(XSS))
    pid = store.add_prompt("chat", CONVERSATION)
    store.create_task("chat", [store.add_response(pid, ANSWER, "m1"),
                               store.add_response(pid, ANSWER.replace("deduplicate", "de-duplicate"), "m2")])
    store.create_project("xss", guidelines="\n\n".join(XSS))
    pid = store.add_prompt("xss", [{"role": "user", "content": x} for x in XSS])
    store.create_task("xss", [store.add_response(pid, "\n\n".join(XSS), "m1"),
                              store.add_response(pid, XSS[0] + " " + XSS[-1], "m2")])
    pid = store.add_prompt("xss", "prompt <script>alert('p')</script>\n\n" + "\n\n".join(XSS))
    store.create_task("xss", [store.add_response(pid, x, f"m{k}") for k, x in enumerate(XSS[:2])])
    store.create_project("rank")
    pid = store.add_prompt("rank", "Rank these *answers*:")
    store.create_task("rank", [store.add_response(pid, f"option **{k}**", f"m{k}") for k in range(4)])
    pid = store.add_prompt("rank", "Then this pair:")
    store.create_task("rank", [store.add_response(pid, f"pair answer {k}", f"m{k}") for k in range(2)])
    store.add_annotator("alice", "alice-pw")
    return store


@pytest.fixture
def served(tmp_path):
    store = build_store(tmp_path / "fb.db")
    try:
        with live_app(store, "browser-content-test") as base:
            yield base, store
    finally:
        store.close()


@contextlib.contextmanager
def logged_in(base: str, viewport=(1280, 900)):
    """A Chromium page logged in as alice; page errors (uncaught exceptions) are collected."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.set_default_timeout(20_000)
            page.errors = []
            page.on("pageerror", lambda e: page.errors.append(str(e)))
            page.goto(f"{base}/login")
            page.fill("#name", "alice")
            page.fill("#password", "alice-pw")
            with page.expect_navigation():
                page.keyboard.press("Enter")
            yield page
        finally:
            browser.close()


def handles_shown(page) -> list[str]:
    return page.locator('input[name="displayed_order"]').get_attribute("value").split(",")


def ids_of(store, project: str, task_id: int, handles: list[str]) -> list[int]:
    (t,) = [t for t in store.tasks(project) if t["task_id"] == task_id]
    by_handle = dict(zip(t["handles"], t["response_ids"]))
    return [by_handle[h] for h in handles]


def test_conversation_task_renders_markdown_and_keeps_the_controls_on_screen(served):
    base, store = served
    with logged_in(base) as page:
        page.goto(f"{base}/projects/chat/label")
        # the history as a chat, in order, with its markdown rendered
        msgs = page.locator("#conversation .msg")
        assert msgs.count() == 4
        assert [page.locator("#conversation .msg .role").nth(k).inner_text().lower() for k in range(4)] == \
            ["system", "user", "assistant", "user"]
        assert page.locator("#conversation .msg.role-assistant code").inner_text() == "set(xs)"
        assert page.locator("#conversation .msg.role-assistant strong").inner_text() == "loses the order"
        # responses: code fence, ordered list and table are real elements
        a = page.locator("#response-A .text")
        assert "def unique_sorted(xs):" in a.locator("pre > code").inner_text()
        assert a.locator("ol > li").count() == 2 and a.locator("ul > li").count() == 60
        assert a.locator("table th").all_inner_texts() == ["input", "output"]
        # the long answer scrolls inside its pane; the buttons stay in the viewport
        assert a.evaluate("el => el.scrollHeight > el.clientHeight + 50")
        assert page.locator("#submit").is_visible()
        box, height = page.locator("#submit").bounding_box(), page.viewport_size["height"]
        assert 0 <= box["y"] and box["y"] + box["height"] <= height
        # the responses differ in one word: the diff is offered, D shows it side by side with the word marked
        assert "alike" in page.inner_text("#near-identical") and page.locator("#diff").is_hidden()
        page.keyboard.press("d")
        assert page.locator("#diff").is_visible()
        marked = page.locator("#diff del").all_inner_texts() + page.locator("#diff ins").all_inner_texts()
        assert sorted(marked) == sorted(["deduplicate", "de-duplicate"])
        page.keyboard.press("d")
        assert page.locator("#diff").is_hidden()
        shown = handles_shown(page)
        assert all(len(h) == 16 and not h.isdigit() for h in shown)  # opaque, not the response ids
        page.keyboard.press("b")
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert "saved=1" in page.url and page.is_visible("#no-task")
        assert page.errors == []
    (j,) = store.judgements("chat")
    assert j["messages"] == CONVERSATION and j["winner_id"] == ids_of(store, "chat", j["task_id"], shown)[1]


def test_every_xss_payload_stays_inert_under_the_markdown_renderer(served):
    base, store = served
    with logged_in(base) as page:
        page.goto(f"{base}/projects/xss/label")
        for _ in range(2):  # the conversation task, then the string prompt
            page.locator("#guidelines summary").click()
            assert page.evaluate("window.__pwned") is None
            for sel in ("main script", "main img", "main svg", "main iframe", "main [onerror]",
                        "main [onload]"):
                assert page.locator(sel).count() == 0, sel
            hrefs = page.eval_on_selector_all(".markdown a, .text a",
                                              "els => els.map(e => e.getAttribute('href'))")
            assert not [h for h in hrefs if h is None or "script:" in h.lower().replace(" ", "")], hrefs
            text = page.inner_text("main")
            assert "<script>window.__pwned = 1</script>" in text and "<b>raw html</b>" in text
            page.keyboard.press("a")
            with page.expect_navigation():
                page.keyboard.press("Enter")
        assert page.is_visible("#no-task") and page.errors == []
    assert len(store.judgements("xss")) == 2


def test_ranking_by_keyboard_and_drag_then_revise_with_u(served):
    base, store = served
    with logged_in(base) as page:
        page.goto(f"{base}/projects/rank/label")
        # the ranking list has the focus on load: no Tab; a digit ranks and moves on; Up goes back
        assert page.evaluate("document.activeElement.id") == "rankitem-A"
        assert page.evaluate("window.scrollY") == 0  # focused without scrolling the prompt away
        assert "current" in page.get_attribute("#response-A", "class")  # the focused response is marked
        for key in ("2", "1", "4"):
            page.keyboard.press(key)
        assert page.evaluate("document.activeElement.id") == "rankitem-D"
        page.keyboard.press("ArrowUp")
        page.keyboard.press("ArrowUp")
        assert page.evaluate("document.activeElement.id") == "rankitem-B"
        page.keyboard.press("3")  # B: 1 -> 3
        page.keyboard.press("ArrowDown")
        page.keyboard.press("4")
        page.keyboard.press("2")  # D
        assert [page.inner_text(f"#rankno-{x}") for x in "ABCD"] == ["2", "3", "4", "2"]
        # a server-side refusal (everything tied) keeps the ranks and the rationale typed
        page.locator("#rankitem-A").focus()
        for _ in range(4):
            page.keyboard.press("1")
        page.fill("#rationale", "all the same to me")
        page.locator("#ranklist li").first.focus()
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert "everything tied" in page.inner_text("#error")
        assert [page.input_value(f"#rank-{x}") for x in "ABCD"] == ["1", "1", "1", "1"]
        assert page.input_value("#rationale") == "all the same to me"
        # drag D to the top, then Shift+Down moves A below B: list order A.. sets the ranks
        page.drag_and_drop("#rankitem-D", "#rankitem-A", target_position={"x": 5, "y": 2})
        order = page.eval_on_selector_all("#ranklist li", "els => els.map(e => e.dataset.letter)")
        assert order == ["D", "A", "B", "C"], order
        assert [page.inner_text(f"#rankno-{x}") for x in "DABC"] == ["1", "2", "3", "4"]
        page.locator("#rankitem-A").focus()
        page.keyboard.press("Shift+ArrowDown")
        assert page.eval_on_selector_all("#ranklist li", "els => els.map(e => e.dataset.letter)") == \
            ["D", "B", "A", "C"]
        assert [page.input_value(f"#rank-{x}") for x in "ABCD"] == ["3", "2", "4", "1"]
        rank_task = int(page.get_attribute('input[name="task_id"]', "value"))
        shown = handles_shown(page)
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert "saved=1" in page.url
        # U reopens it with the answer filled in; change it and save a revision
        with page.expect_navigation():
            page.keyboard.press("u")
        assert page.is_visible("#revising")
        assert int(page.get_attribute('input[name="task_id"]', "value")) == rank_task
        assert [page.input_value(f"#rank-{x}") for x in "ABCD"] == ["3", "2", "4", "1"]
        assert page.input_value("#rationale") == "all the same to me"
        assert page.locator("#skip").count() == 0
        page.locator("#rankitem-A").focus()
        for key in ("1", "2", "3", "4"):
            page.keyboard.press(key)
        page.fill("#rationale", "on reflection A is best")
        page.locator("#rankitem-A").focus()
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert "saved=revised" in page.url and page.inner_text("#progress-mine") == "1"
        # the pair is next; judge it and revise that one by keyboard too
        page.keyboard.press("a")
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert page.is_visible("#no-task")
        with page.expect_navigation():
            page.keyboard.press("u")
        assert page.is_checked("#choice-A")
        page.keyboard.press("b")
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert "saved=revised" in page.url and page.errors == []
    ranking, pair = store.judgements("rank")
    a, b, c, d = ids_of(store, "rank", rank_task, shown)
    assert ranking["ranking"] == [[a], [b], [c], [d]] and ranking["revision"] == 2
    assert ranking["rationale"] == "on reflection A is best"
    history = store.judgement_history(ranking["judgement_id"])
    assert [h["ranking"] for h in history] == [[[d], [b], [a], [c]], [[a], [b], [c], [d]]]
    assert pair["revision"] == 2 and pair["position_chosen"] == 1
    # export reads the latest answers only
    rows, _ = export_rows(store, "rank", rankings="ranking")
    assert [r["ranks"] for r in rows if r["task_id"] == rank_task] == \
        [[1 + [a, b, c, d].index(rid) for rid in ranking["response_ids"]]]
