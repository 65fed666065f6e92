"""Prompts, responses and comparison tasks, and the labelling queue that hands them out.

Overlap (design note 2 of :mod:`rlhfkit.feedback.store`): each task needs ``annotators_needed``
distinct annotators. ``next_task`` reserves a slot (an :class:`Assignment` with a lease) inside one
write transaction, so two annotators asking at the same moment cannot both take the last slot;
``submit`` turns the reservation into a judgement. A lease that runs out (someone closed the tab)
frees the slot again. Calibration tasks go to every annotator first and have no cap.
"""

from __future__ import annotations

import hashlib
import random
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from .canonical import _canonical
from .errors import ConflictError, NotFoundError, StoreError
from .projects import find_project, guideline_version
from .schema import (
    Annotator,
    Assignment,
    Judgement,
    Project,
    Prompt,
    Response,
    Skip,
    Task,
    TaskResponse,
    _now,
    _text_hash,
)
from .views import TaskView


def displayed_order(task_id: int, annotator_id: int, response_ids: list[int]) -> list[int]:
    """The order annotator ``annotator_id`` sees task ``task_id``'s responses in.

    A permutation seeded by a hash of (task, annotator): stable across reloads and processes
    (no Python ``hash()`` randomisation), independent between annotators, so each canonical
    response is shown first to about 1/K of the annotators.
    """
    seed = int.from_bytes(hashlib.sha256(f"order:{task_id}:{annotator_id}".encode()).digest()[:8], "big")
    order = list(response_ids)
    random.Random(seed).shuffle(order)
    return order


_served_order = displayed_order  # `submit`'s keyword of the same name hides the function there


def _task_ids(s: Session, task_id: int) -> list[int]:
    """The task's response ids in canonical order."""
    return list(s.scalars(select(TaskResponse.response_id).where(TaskResponse.task_id == task_id)
                          .order_by(TaskResponse.position)))


def _slots_used(s: Session, task_id: int, now: datetime, exclude_annotator: int | None = None) -> int:
    """Judgements plus live reservations of the task (optionally not counting one annotator's)."""
    j = s.scalar(select(func.count()).select_from(Judgement).where(Judgement.task_id == task_id))
    q = select(func.count()).select_from(Assignment).where(Assignment.task_id == task_id,
                                                           Assignment.expires_at > now)
    if exclude_annotator is not None:
        q = q.where(Assignment.annotator_id != exclude_annotator)
    return j + s.scalar(q)


def _view(s: Session, p: Project, t: Task, annotator_id: int) -> TaskView:
    ids = _task_ids(s, t.id)
    texts = dict(s.execute(select(Response.id, Response.text).where(Response.id.in_(ids))).all())
    order = displayed_order(t.id, annotator_id, ids)
    return TaskView(id=t.id, project=p.name, prompt=s.get(Prompt, t.prompt_id).text,
                    responses=[(i, texts[i]) for i in order], calibration=t.calibration,
                    guideline_version=guideline_version(s, p.id), kind=t.kind)


def _free_task(s: Session, base, annotator_id: int, now: datetime) -> Task | None:
    """The oldest non-calibration task of ``base`` with a slot free for this annotator."""
    judged = (select(func.count()).select_from(Judgement).where(Judgement.task_id == Task.id)
              .correlate(Task).scalar_subquery())
    live = (select(func.count()).select_from(Assignment)
            .where(Assignment.task_id == Task.id, Assignment.expires_at > now,
                   Assignment.annotator_id != annotator_id).correlate(Task).scalar_subquery())
    candidates = base.where(Task.calibration.is_(False), judged + live < Task.annotators_needed)
    for cand in s.scalars(candidates.order_by(Task.id).limit(20)).all():
        # Lock the row (PostgreSQL etc.; SQLite already holds the write lock) and re-count:
        # another transaction may have taken the slot between the query and the lock.
        s.scalar(select(Task.id).where(Task.id == cand.id).with_for_update())
        if _slots_used(s, cand.id, now, exclude_annotator=annotator_id) < cand.annotators_needed:
            return cand
    return None


def _task_for(s: Session, task_id: int, annotator_id: int) -> Task:
    """The task, after checking that both it and the annotator exist."""
    t = s.get(Task, task_id) if isinstance(task_id, int) else None
    if t is None:
        raise NotFoundError(f"unknown task {task_id!r}", field="task_id")
    if s.get(Annotator, annotator_id) is None:
        raise NotFoundError(f"unknown annotator id {annotator_id!r}", field="annotator_id")
    return t


class QueueMixin:
    """The task and queue methods of :class:`~rlhfkit.feedback.store.FeedbackStore`."""

    _session: sessionmaker[Session]  # set by FeedbackStore.__init__
    lease: timedelta

    # ------------------------------------------------------------------ prompts, responses, tasks

    def add_prompt(self, project: str, text: str, meta: dict | None = None) -> int:
        """The prompt's id; adding the same text to the same project again returns the same id."""
        if not isinstance(text, str) or not text.strip():
            raise StoreError("a prompt must be a non-blank string", field="prompt")
        with self._session.begin() as s:
            p = find_project(s, project)
            h = _text_hash(text)
            pid = s.scalar(select(Prompt.id).where(Prompt.project_id == p.id, Prompt.text_hash == h))
            if pid is None:
                row = Prompt(project_id=p.id, text=text, text_hash=h, meta=meta)
                s.add(row)
                s.flush()
                pid = row.id
            return pid

    def add_response(self, prompt_id: int, text: str, model_id: str, sampling: dict | None = None) -> int:
        """The response's id; the same (prompt, text, model id) again returns the same id."""
        if not isinstance(text, str) or not text.strip():
            raise StoreError("a response must be a non-blank string", field="response")
        if not isinstance(model_id, str) or not model_id:
            raise StoreError("a response needs a model id", field="model_id")
        with self._session.begin() as s:
            if s.get(Prompt, prompt_id) is None:
                raise NotFoundError(f"unknown prompt id {prompt_id}", field="prompt_id")
            h = _text_hash(text)
            rid = s.scalar(select(Response.id).where(Response.prompt_id == prompt_id, Response.text_hash == h,
                                                     Response.model_id == model_id))
            if rid is None:
                row = Response(prompt_id=prompt_id, text=text, text_hash=h, model_id=model_id,
                               sampling=sampling)
                s.add(row)
                s.flush()
                rid = row.id
            return rid

    def create_task(self, project: str, response_ids: list[int], annotators_needed: int | None = None,
                    calibration: bool = False) -> int:
        ids = list(response_ids)
        if len(ids) < 2:
            raise StoreError(f"a task compares at least 2 responses, got {len(ids)}", field="response_ids")
        if len(set(ids)) != len(ids):
            raise StoreError(f"response ids repeat: {ids}", field="response_ids")
        if annotators_needed is not None and (not isinstance(annotators_needed, int)
                                              or annotators_needed < 1):
            raise StoreError(f"must be an integer >= 1, got {annotators_needed!r}", field="annotators_needed")
        with self._session.begin() as s:
            p = find_project(s, project)
            rows = {r.id: r for r in s.scalars(select(Response).where(Response.id.in_(ids)))}
            missing = [i for i in ids if i not in rows]
            if missing:
                raise NotFoundError(f"unknown response ids {missing}", field="response_ids")
            prompts = {rows[i].prompt_id for i in ids}
            if len(prompts) != 1:
                raise StoreError("all responses of a task must answer the same prompt", field="response_ids")
            prompt = s.get(Prompt, prompts.pop())
            if prompt.project_id != p.id:
                raise StoreError(f"the responses' prompt belongs to another project than '{project}'",
                                 field="response_ids")
            t = Task(project_id=p.id, prompt_id=prompt.id, kind="pair" if len(ids) == 2 else "ranking",
                     annotators_needed=annotators_needed or p.annotators_per_task,
                     calibration=bool(calibration))
            s.add(t)
            s.flush()
            for pos, rid in enumerate(ids):
                s.add(TaskResponse(task_id=t.id, position=pos, response_id=rid))
            return t.id

    # ------------------------------------------------------------------ the queue

    def next_task(self, project: str, annotator_id: int) -> TaskView | None:
        """The next task for this annotator, with a slot reserved for them (see design note 2).

        Order: a task this annotator already holds a live reservation for (a reload shows the same
        task); calibration tasks they have not done; then the oldest task with a free slot that
        they have neither judged nor skipped. ``None`` when nothing is left for them.
        """
        with self._session.begin() as s:
            p = find_project(s, project)
            if s.get(Annotator, annotator_id) is None:
                raise NotFoundError(f"unknown annotator id {annotator_id}", field="annotator_id")
            now = _now()
            done = (select(Judgement.task_id).where(Judgement.annotator_id == annotator_id)
                    .union(select(Skip.task_id).where(Skip.annotator_id == annotator_id)))
            held = s.scalar(select(Task).join(Assignment, Assignment.task_id == Task.id)
                            .where(Task.project_id == p.id, Assignment.annotator_id == annotator_id,
                                   Assignment.expires_at > now, Task.id.not_in(done))
                            .order_by(Task.calibration.desc(), Task.id).limit(1))
            if held is not None:
                return _view(s, p, held, annotator_id)
            base = select(Task).where(Task.project_id == p.id, Task.id.not_in(done))
            task = s.scalar(base.where(Task.calibration.is_(True)).order_by(Task.id).limit(1))
            if task is None:
                task = _free_task(s, base, annotator_id, now)
            if task is None:
                return None
            a = s.scalar(select(Assignment).where(Assignment.task_id == task.id,
                                                  Assignment.annotator_id == annotator_id))
            if a is None:
                s.add(Assignment(task_id=task.id, annotator_id=annotator_id, created_at=now,
                                 expires_at=now + self.lease))
            else:  # an expired reservation of our own: renew it
                a.expires_at = now + self.lease
            return _view(s, p, task, annotator_id)

    def submit(self, task_id: int, annotator_id: int, *, choice: str | None = None,
               strength: int | None = None, ranking: list[list[int]] | None = None,
               rationale: str | None = None, displayed_order: list[int], seconds: float | None = None,
               project: str | None = None, as_served: bool = False) -> int:
        """Store one judgement; see the package docstring (design notes 1-3). Returns its id.

        ``project``: the task must belong to it (a web request names the project in its URL).
        ``as_served``: the displayed order must be the one this annotator was served
        (:func:`displayed_order`), not one a client chose: the position-bias statistics read it."""
        with self._session.begin() as s:
            t = _task_for(s, task_id, annotator_id)
            if project is not None and find_project(s, project).id != t.project_id:
                raise NotFoundError(f"task {t.id} is not in project '{project}'", field="task_id")
            ids = _task_ids(s, t.id)
            if as_served and list(displayed_order or []) != _served_order(t.id, annotator_id, ids):
                raise StoreError("is not the order this task was shown to you in", field="displayed_order")
            fields = _canonical(t.kind, ids, choice=choice, strength=strength, ranking=ranking,
                                rationale=rationale, shown=displayed_order, seconds=seconds)
            old = s.scalar(select(Judgement).where(Judgement.task_id == t.id,
                                                   Judgement.annotator_id == annotator_id))
            if old is None and s.scalar(select(Skip.id).where(Skip.task_id == t.id,
                                                              Skip.annotator_id == annotator_id)) is not None:
                # A skip freed the slot for someone else and the queue never offers the task again.
                raise ConflictError(f"task {t.id} was skipped by this annotator", field="task_id")
            if old is not None:
                same = all(getattr(old, k) == v for k, v in fields.items()
                           if k not in ("seconds", "rationale"))
                if same:  # a repeated submit (double click, retried request): idempotent
                    return old.id
                raise ConflictError(f"task {t.id} was already judged by this annotator (judgement {old.id})",
                                    field="task_id")
            now = _now()
            if not t.calibration:
                mine = s.scalar(select(Assignment).where(Assignment.task_id == t.id,
                                                         Assignment.annotator_id == annotator_id))
                holds = mine is not None and mine.expires_at > now
                if not holds and _slots_used(s, t.id, now,
                                             exclude_annotator=annotator_id) >= t.annotators_needed:
                    raise ConflictError(f"task {t.id} is not assigned to this annotator and already has its "
                                        f"{t.annotators_needed} annotator(s)", field="task_id")
            version = guideline_version(s, t.project_id)
            j = Judgement(task_id=t.id, annotator_id=annotator_id, guideline_version=version, created_at=now,
                          updated_at=now, **fields)
            s.add(j)
            s.execute(delete(Assignment).where(Assignment.task_id == t.id,
                                               Assignment.annotator_id == annotator_id))
            try:
                s.flush()
            except IntegrityError:  # a concurrent identical submit won the race (non-SQLite backends)
                raise ConflictError(f"task {t.id} was already judged by this annotator",
                                    field="task_id") from None
            return j.id

    def skip(self, task_id: int, annotator_id: int) -> None:
        """This annotator passes on the task: it is not offered to them again and their slot is freed."""
        with self._session.begin() as s:
            _task_for(s, task_id, annotator_id)
            if s.scalar(select(Judgement.id).where(Judgement.task_id == task_id,
                                                   Judgement.annotator_id == annotator_id)) is not None:
                raise ConflictError(f"task {task_id} is already judged; it cannot be skipped",
                                    field="task_id")
            s.execute(delete(Assignment).where(Assignment.task_id == task_id,
                                               Assignment.annotator_id == annotator_id))
            if s.scalar(select(Skip.id).where(Skip.task_id == task_id,
                                              Skip.annotator_id == annotator_id)) is None:
                s.add(Skip(task_id=task_id, annotator_id=annotator_id))
