"""Admin page of judge–human calibration (role admin, 403 otherwise).

    GET  /admin/projects/{name}/calibration        each AI judge against people: shared tasks,
                                                   agreement, Cohen's kappa, gold accuracy (95%
                                                   bootstrap intervals), the human-human kappa, and
                                                   whether `judges=calibrated` export keeps it
    GET  /admin/projects/{name}/calibration.json   the same numbers as JSON

``margin`` and ``min_tasks`` (query) are the export's ``judge_margin`` and ``judge_min_tasks``, so
the "kept" column says what that export would do.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from rlhfkit.feedback import calibration as C
from rlhfkit.feedback.web.deps import Store, project_or_404
from rlhfkit.feedback.web.security import PageAdmin
from rlhfkit.feedback.web.templating import render

router = APIRouter()
N_BOOT = 200  # resamples of tasks, as the leaderboard on the project page
Margin = Annotated[float, Query(ge=0.0, le=2.0)]
MinTasks = Annotated[int, Query(ge=2, le=100_000)]


def _calibration(store: Any, name: str, margin: float, min_tasks: int) -> tuple[Any, C.Calibration, list]:
    project = project_or_404(store, name)
    cal = C.calibrate(store.judgements(name), C.roles_of(store), min_tasks=min_tasks, n_boot=N_BOOT, seed=0)
    return project, cal, C.gate(cal, "calibrated", margin)


@router.get("/admin/projects/{name}/calibration", response_class=HTMLResponse)
def calibration_page(request: Request, name: str, me: PageAdmin, store: Store,
                     margin: Margin = C.DEFAULT_MARGIN, min_tasks: MinTasks = C.MIN_SHARED_TASKS):
    project, cal, decisions = _calibration(store, name, margin, min_tasks)
    return render(request, "admin_calibration.html", project=project, cal=cal,
                  gate={d.judge_id: d for d in decisions}, margin=margin, min_tasks=min_tasks)


def _clean(x: Any) -> Any:
    """JSON has no NaN: undefined statistics become null."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    return x


@router.get("/admin/projects/{name}/calibration.json")
def calibration_json(name: str, me: PageAdmin, store: Store,
                     margin: Margin = C.DEFAULT_MARGIN, min_tasks: MinTasks = C.MIN_SHARED_TASKS):
    _, cal, decisions = _calibration(store, name, margin, min_tasks)
    body = asdict(cal)
    body["matrix"] = [{"human": h, "judge": g, "agreement": a, "kappa": k, "shared_tasks": n}
                      for (h, g), (a, k, n) in cal.matrix.items()]
    body["gate"] = [d.as_dict() for d in decisions]
    body["margin"] = margin
    return _clean(body)
