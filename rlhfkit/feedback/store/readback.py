"""Reading a project back: progress counts, its tasks and its judgements, for export, agreement
statistics and the admin pages."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from .projects import find_project
from .schema import Annotator, Judgement, Prompt, Response, Skip, Task, TaskResponse, _iso


def _responses_of(s: Session, task_ids: list[int]) -> dict[int, list[tuple[int, str, str, str]]]:
    """(response_id, text, model_id, handle) of each task, in canonical order; one query for all tasks."""
    out: dict[int, list[tuple[int, str, str, str]]] = {i: [] for i in task_ids}
    if not task_ids:
        return out
    q = (select(TaskResponse.task_id, Response.id, Response.text, Response.model_id, TaskResponse.handle)
         .join(Response, Response.id == TaskResponse.response_id)
         .where(TaskResponse.task_id.in_(task_ids)).order_by(TaskResponse.task_id, TaskResponse.position))
    for tid, rid, text, model, handle in s.execute(q):
        out[tid].append((rid, text, model, handle))
    return out


class ReadbackMixin:
    """The reading-back methods of :class:`~rlhfkit.feedback.store.FeedbackStore`."""

    _session: sessionmaker[Session]  # set by FeedbackStore.__init__

    def progress(self, project: str) -> dict:
        """Counts for a progress bar and the admin page."""
        with self._session.begin() as s:
            p = find_project(s, project)
            # Gold questions, like calibration tasks, go to every annotator: no slots to fill.
            rows = s.execute(select(Task.id, Task.annotators_needed, Task.calibration,
                                    Task.gold_answer.is_not(None)).where(Task.project_id == p.id)).all()
            tasks = [(i, n, bool(cal) or bool(gold)) for i, n, cal, gold in rows]  # (id, needed, uncapped)
            counts = dict(s.execute(select(Judgement.task_id, func.count())
                                    .join(Task, Task.id == Judgement.task_id)
                                    .where(Task.project_id == p.id).group_by(Judgement.task_id)).all())
            per = dict(s.execute(select(Annotator.name, func.count())
                                 .join(Judgement, Judgement.annotator_id == Annotator.id)
                                 .join(Task, Task.id == Judgement.task_id).where(Task.project_id == p.id)
                                 .group_by(Annotator.name).order_by(Annotator.name)).all())
            skips = s.scalar(select(func.count()).select_from(Skip).join(Task, Task.id == Skip.task_id)
                             .where(Task.project_id == p.id))
            needed = sum(n for _, n, cal in tasks if not cal)
            got = sum(min(counts.get(i, 0), n) for i, n, cal in tasks if not cal)
            return {
                "tasks": len(tasks),
                "tasks_complete": sum(counts.get(i, 0) >= n for i, n, _ in tasks),
                "calibration_tasks": sum(bool(cal) for _, _, cal, _ in rows),
                "gold_tasks": sum(bool(gold) for _, _, _, gold in rows),
                "judgements": sum(counts.values()),
                "judgements_needed": needed,  # ordinary slots; calibration and gold have no cap
                "judgements_open": needed - got,
                "per_annotator": per,
                "skips": skips,
            }

    def tasks(self, project: str) -> list[dict]:
        """Every task of a project: task_id, prompt, response_ids (canonical order), texts, model_ids,
        kind, calibration, annotators_needed."""
        with self._session.begin() as s:
            p = find_project(s, project)
            rows = s.execute(select(Task, Prompt.text, Prompt.messages)
                             .join(Prompt, Prompt.id == Task.prompt_id)
                             .where(Task.project_id == p.id).order_by(Task.id)).all()
            resp = _responses_of(s, [t.id for t, _, _ in rows])
            return [{"task_id": t.id, "prompt": prompt, "messages": messages,
                     "response_ids": [r[0] for r in resp[t.id]],
                     "texts": [r[1] for r in resp[t.id]], "model_ids": [r[2] for r in resp[t.id]],
                     "handles": [r[3] for r in resp[t.id]],  # what annotators saw instead of the ids
                     "kind": t.kind, "calibration": t.calibration, "annotators_needed": t.annotators_needed,
                     "gold_answer": t.gold_answer}
                    for t, prompt, messages in rows]

    def judgements(self, project: str) -> list[dict]:
        """One dict per judgement of the project, oldest first (fields: see the contract)."""
        with self._session.begin() as s:
            p = find_project(s, project)
            rows = s.execute(select(Judgement, Task, Annotator.name, Prompt.text, Prompt.messages)
                             .join(Task, Task.id == Judgement.task_id)
                             .join(Annotator, Annotator.id == Judgement.annotator_id)
                             .join(Prompt, Prompt.id == Task.prompt_id)
                             .where(Task.project_id == p.id).order_by(Judgement.id)).all()
            resp = _responses_of(s, sorted({t.id for _, t, _, _, _ in rows}))
            out = []
            for j, t, name, prompt, messages in rows:
                r = resp[t.id]
                out.append({
                    "judgement_id": j.id, "task_id": t.id, "annotator": name, "annotator_id": j.annotator_id,
                    "prompt": prompt, "messages": messages, "response_ids": [x[0] for x in r],
                    "texts": [x[1] for x in r],
                    "model_ids": [x[2] for x in r], "kind": t.kind, "choice": j.choice,
                    "winner_id": j.winner_response_id, "ranking": j.ranking, "strength": j.strength,
                    "rationale": j.rationale, "displayed_order": j.displayed_order,
                    "position_chosen": j.position_chosen, "seconds": j.seconds,
                    "guideline_version": j.guideline_version, "calibration": t.calibration,
                    "gold_answer": t.gold_answer,  # the known answer of a gold question, else None
                    "created_at": _iso(j.created_at),
                    "revision": j.revision,  # 1 = never revised; the row is always the latest answer
                })
            return out
