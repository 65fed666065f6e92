"""Admin pages (role admin, 403 otherwise): projects and progress, inviting annotators, a
project's analytics and guidelines, and the JSONL export download."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback import analytics
from rlhfkit.feedback.export import export_rows
from rlhfkit.feedback.quality import gold_accuracy
from rlhfkit.feedback.store.accounts import generated_password
from rlhfkit.feedback.web.deps import Store, progress_for, project_or_404
from rlhfkit.feedback.web.errors import status_for
from rlhfkit.feedback.web.markdown import render_markdown
from rlhfkit.feedback.web.security import PageAdmin, check_csrf
from rlhfkit.feedback.web.templating import render

router = APIRouter()


def _project_rows(store: Any, me: Any) -> list:
    return [(p, progress_for(store, p.name, me)) for p in store.list_projects()]


@router.get("/admin", response_class=HTMLResponse)
def admin_page(request: Request, me: PageAdmin, store: Store):
    return render(request, "admin.html", rows=_project_rows(store, me), people=store.list_annotators(),
                  invited=None, error=None)


@router.post("/admin/annotators")
async def invite(request: Request, me: PageAdmin, store: Store):
    form = await request.form()
    check_csrf(request, form)
    name = str(form.get("name", "")).strip()
    role = str(form.get("role", "annotator"))
    rows = await run_in_threadpool(_project_rows, store, me)
    if not name or role not in ("annotator", "admin"):
        return render(request, "admin.html", status=400, rows=rows, invited=None,
                      people=await run_in_threadpool(store.list_annotators),
                      error="field 'name' is required and 'role' must be annotator or admin")
    password = generated_password()  # shown once on this page, stored only hashed
    try:
        # The admin saw the password: the invited person must replace it at their first login.
        who = await run_in_threadpool(lambda: store.add_annotator(name, password, role,
                                                                  must_change_password=True))
    except (RlhfkitError, ValueError) as e:  # e.g. the name is taken (ConflictError -> 409)
        return render(request, "admin.html", status=status_for(e), rows=rows,
                      people=await run_in_threadpool(store.list_annotators), invited=None, error=str(e))
    return render(request, "admin.html", rows=rows, people=await run_in_threadpool(store.list_annotators),
                  invited={"name": who.name, "role": who.role, "password": password}, error=None)


@router.get("/admin/projects/{name}", response_class=HTMLResponse)
def admin_project(request: Request, name: str, me: PageAdmin, store: Store):
    project = project_or_404(store, name)
    js = store.judgements(name)
    gold = {row["annotator"]: row for row in gold_accuracy(js).values()}
    members = store.members(name)
    return render(request, "admin_project.html", project=project, progress=progress_for(store, name, me),
                  gold=gold, members=members, people=store.list_annotators(),
                  n_judgements=len(js), agreement=analytics.agreement_summary(js),
                  annotators=analytics.annotator_stats(js), bias=analytics.position_bias(js),
                  board=analytics.leaderboard(js, n_boot=200, seed=0),
                  guidelines=render_markdown(project.guidelines))


@router.post("/admin/projects/{name}/guidelines")
async def update_guidelines(request: Request, name: str, me: PageAdmin, store: Store):
    form = await request.form()
    check_csrf(request, form)
    await run_in_threadpool(project_or_404, store, name)
    await run_in_threadpool(store.update_guidelines, name, str(form.get("guidelines", "")))
    return RedirectResponse(f"/admin/projects/{quote(name, safe='')}", status_code=303)


@router.get("/admin/projects/{name}/export")
def export(request: Request, name: str, me: PageAdmin, store: Store,
           aggregate: Literal["judgement", "majority"] = "judgement", ties: Literal["drop", "keep"] = "drop",
           exclude_below: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
           judges: Literal["all", "calibrated", "none"] = "all",
           judge_margin: Annotated[float, Query(ge=0.0, le=2.0)] = 0.1,
           judge_min_tasks: Annotated[int, Query(ge=2, le=100_000)] = 20):
    """The same rows `rlhf label export` writes, as a JSONL download (``exclude_below``: drop
    annotators under that gold accuracy, as `rlhf label export exclude_below=...` does; ``judges``,
    ``judge_margin``, ``judge_min_tasks``: the AI-judge gate of rlhfkit.feedback.calibration)."""
    project_or_404(store, name)
    try:
        rows = export_rows(store, name, aggregate=aggregate, ties=ties, exclude_below=exclude_below,
                           judges=judges, judge_margin=judge_margin, judge_min_tasks=judge_min_tasks)[0]
    except (RlhfkitError, ValueError) as e:
        raise HTTPException(400, str(e)) from None
    body = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)  # a header-safe file name
    return Response(body, media_type="application/x-ndjson",
                    headers={"Content-Disposition": f'attachment; filename="{safe}-{aggregate}.jsonl"'})
