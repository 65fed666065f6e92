"""Admin pages for label quality (role admin, 403 otherwise): the disagreement review and gold
questions.

    GET  /admin/projects/{name}/review                  tasks where annotators split, most divided
                                                        first, with every label and rationale
    GET  /admin/projects/{name}/gold                    gold questions, each annotator's accuracy on
                                                        them, and tasks to mark
    POST /admin/projects/{name}/gold                    task_id + answer: make a task a gold question
    POST /admin/projects/{name}/gold/{task_id}/clear    make it an ordinary task again

An answer names responses by their canonical letter, as these pages show them: "A", "B",
"tie_good" or "tie_bad" for a pair, an order such as "B > A = C" for a K-way task.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback import quality
from rlhfkit.feedback.web.deps import Store, project_or_404
from rlhfkit.feedback.web.errors import status_for
from rlhfkit.feedback.web.markdown import render_markdown
from rlhfkit.feedback.web.models import MAX_ID, TaskId
from rlhfkit.feedback.web.security import PageAdmin, check_csrf
from rlhfkit.feedback.web.templating import render

router = APIRouter()
PAIR_ANSWERS = ("A", "B", "tie_good", "tie_bad")
TASKS_PER_PAGE = 50


@router.get("/admin/projects/{name}/review", response_class=HTMLResponse)
def review(request: Request, name: str, me: PageAdmin, store: Store):
    project = project_or_404(store, name)
    js = store.judgements(name)
    multi = len({t for t, n in _counts(js).items() if n >= 2})
    tasks = quality.disagreements(js)
    for t in tasks:  # rendered as annotators see them: sanitized markdown (code, lists, tables)
        t["prompt_html"] = render_markdown(t["prompt"])
        for r in t["responses"]:
            r["html"] = render_markdown(r["text"])
    return render(request, "admin_review.html", project=project, tasks=tasks, multi=multi)


def _counts(js: list[dict]) -> dict[int, int]:
    out: dict[int, int] = {}
    for j in js:
        out[j["task_id"]] = out.get(j["task_id"], 0) + 1
    return out


def parse_answer(kind: str, response_ids: list[int], text: str) -> dict:
    """An answer as typed on the gold page -> ``store.set_gold`` keyword arguments (canonical)."""
    text = text.strip()
    if kind == "pair":
        if text not in PAIR_ANSWERS:
            raise ValueError(f"field 'answer': a pair's answer is one of {', '.join(PAIR_ANSWERS)}")
        return {"choice": text}
    letters = {quality.letter(i): rid for i, rid in enumerate(response_ids)}
    groups = []
    for part in text.split(">"):
        names = [x.strip().upper() for x in part.split("=")]
        if not all(names) or not all(n in letters for n in names):
            raise ValueError(f"field 'answer': write an order of the letters {', '.join(letters)} such as "
                             "'B > A = C' (best first, '=' for ties)")
        groups.append([letters[n] for n in names])
    return {"ranking": groups}


def _gold_page(request: Request, store: Any, name: str, *, status: int = 200, error: str | None = None,
               offset: int = 0) -> HTMLResponse:
    project = project_or_404(store, name)
    tasks = store.tasks(name)
    js = store.judgements(name)
    for t in tasks:
        t["gold"] = quality.describe_gold(t)
        t["lettered"] = [(quality.letter(i), text) for i, text in enumerate(t["texts"])]
    gold = [t for t in tasks if t["gold"]]
    candidates = [t for t in tasks if not t["gold"] and not t["calibration"]]
    accuracy = sorted(quality.gold_accuracy(js).values(), key=lambda r: (r["accuracy"], r["annotator"]))
    return render(request, "admin_gold.html", status=status, project=project, gold=gold, accuracy=accuracy,
                  candidates=candidates[offset:offset + TASKS_PER_PAGE], offset=offset,
                  more=len(candidates) > offset + TASKS_PER_PAGE, per_page=TASKS_PER_PAGE, error=error)


@router.get("/admin/projects/{name}/gold", response_class=HTMLResponse)
def gold_page(request: Request, name: str, me: PageAdmin, store: Store, offset: int = 0):
    return _gold_page(request, store, name, offset=max(0, min(offset, MAX_ID)))


@router.post("/admin/projects/{name}/gold")
async def set_gold(request: Request, name: str, me: PageAdmin, store: Store):
    form = await request.form()
    check_csrf(request, form)
    await run_in_threadpool(project_or_404, store, name)
    raw_id = str(form.get("task_id", ""))
    task_id = int(raw_id) if re.fullmatch(r"\d{1,18}", raw_id) else 0
    task = next((t for t in await run_in_threadpool(store.tasks, name) if t["task_id"] == task_id), None)
    status, error = 0, ""
    if task is None:
        status, error = 404, f"field 'task_id': no task {raw_id[:20]!r} in project '{name}'"
    else:
        try:
            answer = parse_answer(task["kind"], task["response_ids"], str(form.get("answer", ""))[:200])
            await run_in_threadpool(lambda: store.set_gold(task_id, **answer))
        except (RlhfkitError, ValueError, LookupError) as e:
            status, error = status_for(e), str(e)
    if status:  # the page again, with the error, so the admin can correct the answer
        return await run_in_threadpool(lambda: _gold_page(request, store, name, status=status, error=error))
    target = "review" if str(form.get("back", "")) == "review" else "gold"  # where the form was
    return RedirectResponse(f"/admin/projects/{quote(name, safe='')}/{target}#task-{task_id}",
                            status_code=303)


@router.post("/admin/projects/{name}/gold/{task_id}/clear")
async def clear_gold(request: Request, name: str, task_id: TaskId, me: PageAdmin, store: Store):
    check_csrf(request, await request.form())
    await run_in_threadpool(project_or_404, store, name)
    if not any(t["task_id"] == task_id for t in await run_in_threadpool(store.tasks, name)):
        raise HTTPException(404, f"no task {task_id} in project '{name}'")
    await run_in_threadpool(store.clear_gold, task_id)
    return RedirectResponse(f"/admin/projects/{quote(name, safe='')}/gold", status_code=303)
