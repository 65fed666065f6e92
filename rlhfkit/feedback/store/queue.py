"""Prompts, responses and comparison tasks, and the labelling queue that hands them out.

Overlap (design note 2 of :mod:`rlhfkit.feedback.store`): each task needs ``annotators_needed``
distinct annotators. ``next_task`` reserves a slot (an :class:`Assignment` with a lease) inside one
write transaction, so two annotators asking at the same moment cannot both take the last slot;
``submit`` turns the reservation into a judgement. A lease that runs out (someone closed the tab)
frees the slot again. Calibration tasks go to every annotator first and have no cap; gold questions
(:mod:`.people`) go to every annotator too, at random points of their queue, unannounced. Every read
and write checks that the annotator may label the project (:func:`.people.check_access`).
"""

from __future__ import annotations

import hashlib
import random
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from .canonical import _canonical, _short
from .conversation import canonical_json, check_messages, transcript
from .errors import ConflictError, NotFoundError, StoreError
from .people import check_access
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


def _handles(s: Session, task_id: int) -> dict[int, str]:
    """response id -> the opaque handle annotators see for it in this task."""
    return dict(s.execute(select(TaskResponse.response_id, TaskResponse.handle)
                          .where(TaskResponse.task_id == task_id)).all())


def _view(s: Session, p: Project, t: Task, annotator_id: int, order: list[int] | None = None,
          **extra) -> TaskView:
    """The task as ``annotator_id`` sees it (``order``: the displayed order, default theirs)."""
    ids = _task_ids(s, t.id)
    texts = dict(s.execute(select(Response.id, Response.text).where(Response.id.in_(ids))).all())
    handles = _handles(s, t.id)
    order = displayed_order(t.id, annotator_id, ids) if order is None else order
    prompt = s.get(Prompt, t.prompt_id)
    return TaskView(id=t.id, project=p.name, prompt=prompt.text, responses=[(i, texts[i]) for i in order],
                    calibration=t.calibration, guideline_version=guideline_version(s, p.id), kind=t.kind,
                    handles=tuple(handles[i] for i in order),
                    messages=tuple(prompt.messages) if prompt.messages is not None else None, **extra)


def _from_handles(s: Session, task_id: int, values, field: str) -> list:
    """Opaque handles (what a web client was shown) -> response ids; anything else is refused, so a
    client cannot address responses by their sequential ids either."""
    by_handle = {h: rid for rid, h in _handles(s, task_id).items()}
    if not isinstance(values, (list, tuple)):
        raise StoreError(f"must be a list of this task's response handles, got {_short(values)}", field=field)
    out = []
    for v in values:
        if not isinstance(v, str) or v not in by_handle:
            raise StoreError(f"{_short(v)} is not a response of task {task_id}", field=field)
        out.append(by_handle[v])
    return out


def _open_tasks(base, annotator_id: int, now: datetime):
    """The ordinary (neither calibration nor gold) tasks of ``base`` with a slot free for this annotator."""
    judged = (select(func.count()).select_from(Judgement).where(Judgement.task_id == Task.id)
              .correlate(Task).scalar_subquery())
    live = (select(func.count()).select_from(Assignment)
            .where(Assignment.task_id == Task.id, Assignment.expires_at > now,
                   Assignment.annotator_id != annotator_id).correlate(Task).scalar_subquery())
    return base.where(Task.calibration.is_(False), Task.gold_answer.is_(None),
                      judged + live < Task.annotators_needed)


def _gold_task(s: Session, base, p: Project, annotator_id: int, now: datetime) -> Task | None:
    """A gold question for this annotator, or None to serve an ordinary task now.

    With G gold questions and F open ordinary tasks left for them, a gold question comes next with
    probability G / (G + F): the gold questions fall at uniformly random points of the annotator's
    queue (never all at the start, where people are most careful), and all of them are served by its
    end. The draw is seeded by (project, annotator, tasks answered so far), so it is reproducible."""
    gold_ids = list(s.scalars(base.with_only_columns(Task.id).where(Task.gold_answer.is_not(None),
                                                                    Task.calibration.is_(False))
                              .order_by(Task.id)))
    if not gold_ids:
        return None
    n_open = s.scalar(select(func.count()).select_from(_open_tasks(base, annotator_id, now).subquery()))
    answered = (s.scalar(select(func.count()).select_from(Judgement).join(Task, Task.id == Judgement.task_id)
                         .where(Task.project_id == p.id, Judgement.annotator_id == annotator_id))
                + s.scalar(select(func.count()).select_from(Skip).join(Task, Task.id == Skip.task_id)
                           .where(Task.project_id == p.id, Skip.annotator_id == annotator_id)))
    seed = hashlib.sha256(f"gold:{p.id}:{annotator_id}:{answered}".encode()).digest()[:8]
    rng = random.Random(int.from_bytes(seed, "big"))
    if n_open and rng.random() >= len(gold_ids) / (len(gold_ids) + n_open):
        return None
    return s.get(Task, rng.choice(gold_ids))


def _lock(task_id: int, *, skip_locked: bool = False):
    # FOR UPDATE on PostgreSQL and the like; SQLite has no row locks and already holds the write lock.
    return select(Task.id).where(Task.id == task_id).with_for_update(skip_locked=skip_locked)


def _free_task(s: Session, base, annotator_id: int, now: datetime) -> Task | None:
    """The oldest ordinary task of ``base`` with a slot free for this annotator.

    Each candidate is locked and its slots re-counted, since another transaction may have taken the
    last one between the query and the lock. On PostgreSQL, waiting for each candidate's lock in
    turn (and holding the locks of the full ones) made 50 annotators at once queue behind each
    other's locks, and a batch of candidates could all fill up meanwhile (annotators were told the
    queue was empty with thousands of slots left: tests/test_feedback_concurrency.py). So first
    pass over the candidates, batch after batch, skipping rows other transactions hold (SKIP
    LOCKED); only when the free tasks left are all being reserved by others, wait for those."""
    candidates = _open_tasks(base, annotator_id, now)
    full: set[int] = set()
    while True:
        busy: list[Task] = []
        while True:
            seen = sorted(full | {t.id for t in busy})
            batch = s.scalars(candidates.where(Task.id.not_in(seen)).order_by(Task.id).limit(20)).all()
            if not batch:
                break
            for cand in batch:
                if s.scalar(_lock(cand.id, skip_locked=True)) is None:
                    busy.append(cand)  # another transaction is reserving it right now
                elif _slots_used(s, cand.id, now, exclude_annotator=annotator_id) < cand.annotators_needed:
                    return cand
                else:
                    full.add(cand.id)
        if not busy:
            return None
        for cand in busy:
            s.scalar(_lock(cand.id))
            if _slots_used(s, cand.id, now, exclude_annotator=annotator_id) < cand.annotators_needed:
                return cand
            full.add(cand.id)


def _task_for(s: Session, task_id: int, annotator_id: int) -> Task:
    """The task, after checking that both it and the annotator exist."""
    t = s.get(Task, task_id) if isinstance(task_id, int) else None
    if t is None:
        raise NotFoundError(f"unknown task {task_id!r}", field="task_id")
    if s.get(Annotator, annotator_id) is None:
        raise NotFoundError(f"unknown annotator id {annotator_id!r}", field="annotator_id")
    return t


def _groups(ranking) -> list:
    if not isinstance(ranking, (list, tuple)):
        raise StoreError(f"must be groups of response handles, best first, got {_short(ranking)}",
                         field="ranking")
    return list(ranking)


class QueueMixin:
    """The task and queue methods of :class:`~rlhfkit.feedback.store.FeedbackStore`."""

    _session: sessionmaker[Session]  # set by FeedbackStore.__init__
    lease: timedelta

    # ------------------------------------------------------------------ prompts, responses, tasks

    def add_prompt(self, project: str, text: str | list[dict], meta: dict | None = None) -> int:
        """The prompt's id; adding the same prompt to the same project again returns the same id.

        ``text``: a string, or a conversation (a list of ``{"role", "content"}`` messages ending with
        the user's turn; see :mod:`.conversation`), whose responses are the next assistant turn."""
        messages = None
        if isinstance(text, (list, tuple)):
            messages = check_messages(text)
            # Hashed apart from string prompts: a conversation never equals a string prompt.
            text, h = transcript(messages), _text_hash("chat:" + canonical_json(messages))
        elif not isinstance(text, str) or not text.strip():
            raise StoreError("a prompt must be a non-blank string or a list of chat messages", field="prompt")
        else:
            h = _text_hash(text)
        with self._session.begin() as s:
            p = find_project(s, project)
            pid = s.scalar(select(Prompt.id).where(Prompt.project_id == p.id, Prompt.text_hash == h))
            if pid is None:
                row = Prompt(project_id=p.id, text=text, text_hash=h, meta=meta, messages=messages)
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
            handles: set[str] = set()
            while len(handles) < len(ids):  # 64 random bits each; a clash within a task is redrawn
                handles.add(secrets.token_hex(8))
            for pos, (rid, handle) in enumerate(zip(ids, sorted(handles))):
                s.add(TaskResponse(task_id=t.id, position=pos, response_id=rid, handle=handle))
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
            check_access(s, p, annotator_id)
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
                task = _gold_task(s, base, p, annotator_id, now)
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
               project: str | None = None, as_served: bool = False, opaque: bool = False) -> int:
        """Store one judgement; see the package docstring (design notes 1-3). Returns its id.

        ``project``: the task must belong to it (a web request names the project in its URL).
        ``as_served``: the displayed order must be the one this annotator was served
        (:func:`displayed_order`), not one a client chose: the position-bias statistics read it.
        ``opaque``: ``displayed_order`` and ``ranking`` name responses by the handles the annotator
        was shown (:attr:`TaskView.handles`), as web clients do, never by response id."""
        with self._session.begin() as s:
            t = _task_for(s, task_id, annotator_id)
            if project is not None and find_project(s, project).id != t.project_id:
                raise NotFoundError(f"task {t.id} is not in project '{project}'", field="task_id")
            check_access(s, s.get(Project, t.project_id), annotator_id)
            if opaque:
                displayed_order = _from_handles(s, t.id, displayed_order, "displayed_order")
                if ranking is not None:  # a tied group is a set: stored with its ids sorted
                    ranking = [sorted(_from_handles(s, t.id, g, "ranking")) for g in _groups(ranking)]
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
            if not t.calibration and t.gold_answer is None:  # both go to everyone: no cap
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
            t = _task_for(s, task_id, annotator_id)
            check_access(s, s.get(Project, t.project_id), annotator_id)
            if s.scalar(select(Judgement.id).where(Judgement.task_id == task_id,
                                                   Judgement.annotator_id == annotator_id)) is not None:
                raise ConflictError(f"task {task_id} is already judged; it cannot be skipped",
                                    field="task_id")
            s.execute(delete(Assignment).where(Assignment.task_id == task_id,
                                               Assignment.annotator_id == annotator_id))
            if s.scalar(select(Skip.id).where(Skip.task_id == task_id,
                                              Skip.annotator_id == annotator_id)) is None:
                s.add(Skip(task_id=task_id, annotator_id=annotator_id))
