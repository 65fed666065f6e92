"""Who may label what, and gold questions.

Membership: a project is open to every active annotator until an admin makes it ``members_only``;
then only its :class:`ProjectMember` rows may take, judge or skip its tasks. Admins always may (they
manage the project anyway), and a deactivated account may do nothing. :func:`check_access` is the
one place this is decided; the queue calls it on every read and write.

Gold questions: an admin gives a task its known answer. Gold tasks go to every annotator (no
overlap cap), mixed into the queue at random points and never marked as gold on the page, so they
measure how people label when they do not know they are being checked. The answer is stored
canonically, like a judgement (:func:`~.canonical._canonical` validates it), and
:mod:`rlhfkit.feedback.quality` scores judgements against it.
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from .canonical import _canonical
from .errors import ForbiddenError, NotFoundError, StoreError
from .projects import _info, find_project
from .schema import Annotator, Project, ProjectMember, Task, TaskResponse
from .views import AnnotatorInfo, ProjectInfo


def may_label(s: Session, p: Project, a: Annotator) -> bool:
    if not a.active:
        return False
    if not p.members_only or a.role == "admin":
        return True
    return s.get(ProjectMember, (p.id, a.id)) is not None


def check_access(s: Session, p: Project, annotator_id: int) -> Annotator:
    """The annotator row, after checking they may label project ``p`` (else :class:`ForbiddenError`)."""
    a = s.get(Annotator, annotator_id) if isinstance(annotator_id, int) else None
    if a is None:
        raise NotFoundError(f"unknown annotator id {annotator_id!r}", field="annotator_id")
    if not a.active:
        raise ForbiddenError(f"annotator '{a.name}' is deactivated", field="annotator_id")
    if not may_label(s, p, a):
        raise ForbiddenError(f"project '{p.name}' is for its members only; ask an admin to add you",
                             field="project")
    return a


class PeopleMixin:
    """Membership and gold-question methods of :class:`~rlhfkit.feedback.store.FeedbackStore`."""

    _session: sessionmaker[Session]  # set by FeedbackStore.__init__

    # ------------------------------------------------------------------ membership

    def set_members_only(self, project: str, members_only: bool) -> ProjectInfo:
        with self._session.begin() as s:
            p = find_project(s, project)
            p.members_only = bool(members_only)
            s.flush()
            return _info(s, p)

    def add_member(self, project: str, annotator_id: int) -> None:
        """Let the annotator label a members-only project (adding a member twice is a no-op)."""
        with self._session.begin() as s:
            p = find_project(s, project)
            if not isinstance(annotator_id, int) or s.get(Annotator, annotator_id) is None:
                raise NotFoundError(f"unknown annotator id {annotator_id!r}", field="annotator_id")
            if s.get(ProjectMember, (p.id, annotator_id)) is None:
                s.add(ProjectMember(project_id=p.id, annotator_id=annotator_id))

    def remove_member(self, project: str, annotator_id: int) -> None:
        with self._session.begin() as s:
            p = find_project(s, project)
            s.execute(delete(ProjectMember).where(ProjectMember.project_id == p.id,
                                                  ProjectMember.annotator_id == annotator_id))

    def members(self, project: str) -> list[AnnotatorInfo]:
        from .accounts import _annotator_info

        with self._session.begin() as s:
            p = find_project(s, project)
            rows = s.scalars(select(Annotator).join(ProjectMember, ProjectMember.annotator_id == Annotator.id)
                             .where(ProjectMember.project_id == p.id).order_by(Annotator.name))
            return [_annotator_info(a) for a in rows]

    def projects_for(self, annotator_id: int) -> list[ProjectInfo]:
        """The projects this annotator may label (every project for an admin; none when deactivated)."""
        with self._session.begin() as s:
            a = s.get(Annotator, annotator_id)
            if a is None:
                raise NotFoundError(f"unknown annotator id {annotator_id!r}", field="annotator_id")
            projects = s.scalars(select(Project).order_by(Project.id)).all()
            return [_info(s, p) for p in projects if may_label(s, p, a)]

    def may_label(self, project: str, annotator_id: int) -> bool:
        with self._session.begin() as s:
            a = s.get(Annotator, annotator_id)
            return a is not None and may_label(s, find_project(s, project), a)

    # ------------------------------------------------------------------ gold questions

    def set_gold(self, task_id: int, *, choice: str | None = None,
                 ranking: list[list[int]] | None = None) -> dict:
        """Make a task a gold question with this known answer, given canonically: ``choice`` for a
        pair ("A" = the task's first response, "B", "tie_good", "tie_bad"), ``ranking`` (groups of
        response ids, best first) for a K-way task. Judgements already made are scored too."""
        with self._session.begin() as s:
            t = s.get(Task, task_id) if isinstance(task_id, int) else None
            if t is None:
                raise NotFoundError(f"unknown task {task_id!r}", field="task_id")
            ids = list(s.scalars(select(TaskResponse.response_id).where(TaskResponse.task_id == t.id)
                                 .order_by(TaskResponse.position)))
            # Shown in canonical order, so "A" is the first canonical response.
            fields = _canonical(t.kind, ids, choice=choice, strength=None, ranking=ranking, rationale=None,
                                shown=ids, seconds=None)
            if t.calibration:
                raise StoreError(f"task {t.id} is a calibration task (announced to everyone); a gold "
                                 "question must look like any other task", field="task_id")
            t.gold_answer = {"choice": fields["choice"], "ranking": fields["ranking"]}
            return dict(t.gold_answer)

    def clear_gold(self, task_id: int) -> None:
        """Make a gold task an ordinary one again (its judgements are no longer scored)."""
        with self._session.begin() as s:
            t = s.get(Task, task_id) if isinstance(task_id, int) else None
            if t is None:
                raise NotFoundError(f"unknown task {task_id!r}", field="task_id")
            t.gold_answer = None
