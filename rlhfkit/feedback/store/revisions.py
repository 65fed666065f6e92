"""Revising a judgement: an annotator reopens their last answer (``U`` on the labelling page) and
changes it, within the lease period after first giving it.

The ``judgements`` row always holds the latest answer, so export, agreement and the queue read
one row per (task, annotator) as before; each superseded answer moves to ``judgement_revisions``
with the revision number it had, so nothing an annotator once submitted is lost. The window is
the store's lease (``lease_seconds``) counted from the first answer: long enough to fix a slip,
short enough that a judgement seen by others (agreement, export) does not keep changing.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from .canonical import _canonical
from .errors import ConflictError, NotFoundError, StoreError
from .people import check_access
from .projects import find_project, guideline_version
from .queue import _from_handles, _groups, _handles, _task_for, _task_ids, _view
from .schema import Judgement, JudgementRevision, Project, Task, _iso, _now
from .views import TaskView

# The answer columns of a judgement, copied to a revision row when it is superseded.
_ANSWER = ("choice", "winner_response_id", "tie", "ranking", "strength", "rationale", "displayed_order",
           "position_chosen", "seconds", "guideline_version")


def _answer_as_shown(j: Judgement, handles: dict[int, str]) -> dict:
    """A stored (canonical) answer back in the terms the annotator gave it: the choice relative to
    the order they were shown, ranks by handle (1 = best)."""
    if j.ranking is not None and j.choice is None:
        ranks = {handles[rid]: g + 1 for g, group in enumerate(j.ranking) for rid in group}
        choice = None
    else:
        ranks = {}
        choice = j.tie if j.tie else ("A" if j.position_chosen == 0 else "B")
    return {"choice": choice, "strength": j.strength, "rationale": j.rationale or "", "ranks": ranks}


class RevisionsMixin:
    """The revision methods of :class:`~rlhfkit.feedback.store.FeedbackStore`."""

    _session: sessionmaker[Session]  # set by FeedbackStore.__init__
    lease: timedelta

    def _revisable(self, j: Judgement) -> bool:
        return _now() < j.created_at + self.lease

    def last_judgement(self, project: str, annotator_id: int) -> TaskView | None:
        """The annotator's most recent judgement in the project, as a task view prefilled with their
        answer (``revision_of``, ``answer``) in the order they saw it; None when they have none or
        its revision window has closed."""
        with self._session.begin() as s:
            p = find_project(s, project)
            check_access(s, p, annotator_id)  # a deactivated account or a non-member revises nothing
            row = s.execute(select(Judgement, Task).join(Task, Task.id == Judgement.task_id)
                            .where(Task.project_id == p.id, Judgement.annotator_id == annotator_id)
                            .order_by(Judgement.id.desc()).limit(1)).first()
            if row is None or not self._revisable(row[0]):
                return None
            j, t = row
            return _view(s, p, t, annotator_id, order=list(j.displayed_order), revision_of=j.id,
                         answer=_answer_as_shown(j, _handles(s, t.id)))

    def revise(self, task_id: int, annotator_id: int, *, choice: str | None = None,
               strength: int | None = None, ranking: list | None = None, rationale: str | None = None,
               displayed_order: list, seconds: float | None = None, project: str | None = None,
               opaque: bool = False) -> int:
        """Replace this annotator's judgement of the task with a new answer; returns its id.

        The same validation as :meth:`submit`; the order must be the one the judgement was made in.
        An unchanged answer stores nothing. ``seconds`` is added to the time already spent."""
        with self._session.begin() as s:
            t = _task_for(s, task_id, annotator_id)
            if project is not None and find_project(s, project).id != t.project_id:
                raise NotFoundError(f"task {t.id} is not in project '{project}'", field="task_id")
            check_access(s, s.get(Project, t.project_id), annotator_id)
            j = s.scalar(select(Judgement).where(Judgement.task_id == t.id,
                                                 Judgement.annotator_id == annotator_id))
            if j is None:
                raise NotFoundError(f"task {t.id} has no judgement of yours to revise", field="task_id")
            if not self._revisable(j):
                raise ConflictError(f"the judgement of task {t.id} can no longer be revised (the window "
                                    f"closed at {_iso(j.created_at + self.lease)})", field="task_id")
            if opaque:
                displayed_order = _from_handles(s, t.id, displayed_order, "displayed_order")
                if ranking is not None:
                    ranking = [sorted(_from_handles(s, t.id, g, "ranking")) for g in _groups(ranking)]
            if list(displayed_order or []) != list(j.displayed_order):
                raise StoreError("is not the order this judgement was made in", field="displayed_order")
            fields = _canonical(t.kind, _task_ids(s, t.id), choice=choice, strength=strength, ranking=ranking,
                                rationale=rationale, shown=displayed_order, seconds=seconds)
            if all(getattr(j, k) == v for k, v in fields.items() if k != "seconds"):
                return j.id  # nothing changed (a repeated post): no revision
            s.add(JudgementRevision(judgement_id=j.id, revision=j.revision, made_at=j.updated_at,
                                    **{k: getattr(j, k) for k in _ANSWER}))
            if fields["seconds"] is None:  # time on the task: what was spent before, plus this revision's
                fields["seconds"] = j.seconds
            elif j.seconds is not None:
                fields["seconds"] += j.seconds
            for k, v in fields.items():
                setattr(j, k, v)
            j.guideline_version = guideline_version(s, t.project_id)
            j.revision += 1
            j.updated_at = _now()
            return j.id

    def judgement_history(self, judgement_id: int) -> list[dict]:
        """Every answer of a judgement, oldest first: the superseded ones, then the current one
        (``revision`` counts from 1; ``made_at`` is when that answer was given)."""
        with self._session.begin() as s:
            j = s.get(Judgement, judgement_id) if isinstance(judgement_id, int) else None
            if j is None:
                raise NotFoundError(f"unknown judgement {judgement_id!r}", field="judgement_id")
            old = s.scalars(select(JudgementRevision).where(JudgementRevision.judgement_id == j.id)
                            .order_by(JudgementRevision.revision)).all()
            rows = [{"revision": r.revision, "made_at": _iso(r.made_at), "replaced_at": _iso(r.replaced_at),
                     **{k: getattr(r, k) for k in _ANSWER}} for r in old]
            rows.append({"revision": j.revision, "made_at": _iso(j.updated_at), "replaced_at": None,
                         **{k: getattr(j, k) for k in _ANSWER}})
            return rows
