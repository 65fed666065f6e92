"""Projects and their versioned guidelines. Every judgement records the guideline version it was
made under, so guidelines are never edited in place: an update adds the next version."""

from __future__ import annotations

import re

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from .errors import ConflictError, NotFoundError, StoreError
from .schema import Guideline, Project, _iso
from .views import ProjectInfo

# Project names appear in URLs (/label/<name>, /admin/projects/<name>): one path segment, so no "/",
# no leading "." (".." would name the parent), printable and short.
PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,99}$")


def find_project(s: Session, name: str) -> Project:
    """The project row called ``name``, or :class:`NotFoundError`."""
    p = s.scalar(select(Project).where(Project.name == name))
    if p is None:
        raise NotFoundError(f"unknown project '{name}'", field="project")
    return p


def guideline_version(s: Session, project_id: int) -> int:
    """The project's current guideline version (0 before any guidelines)."""
    return s.scalar(select(func.max(Guideline.version)).where(Guideline.project_id == project_id)) or 0


def _info(s: Session, p: Project) -> ProjectInfo:
    g = s.scalar(select(Guideline).where(Guideline.project_id == p.id).order_by(Guideline.version.desc()))
    return ProjectInfo(id=p.id, name=p.name, guidelines=g.markdown if g else "",
                       guideline_version=g.version if g else 0, annotators_per_task=p.annotators_per_task,
                       members_only=bool(p.members_only))


class ProjectsMixin:
    """The project methods of :class:`~rlhfkit.feedback.store.FeedbackStore`."""

    _session: sessionmaker[Session]  # set by FeedbackStore.__init__

    def create_project(self, name: str, guidelines: str = "", annotators_per_task: int = 1) -> ProjectInfo:
        if not isinstance(name, str) or not name.strip():
            raise StoreError("a project needs a non-blank name", field="name")
        if not PROJECT_NAME.match(name):
            raise StoreError(f"{name[:120]!r} is not a project name: use letters, digits, '.', '_', '-' and "
                             "spaces (at most 100), starting with a letter or digit", field="name")
        if not isinstance(annotators_per_task, int) or annotators_per_task < 1:
            raise StoreError(f"must be an integer >= 1, got {annotators_per_task!r}",
                             field="annotators_per_task")
        with self._session.begin() as s:
            if s.scalar(select(Project.id).where(Project.name == name)) is not None:
                raise ConflictError(f"project '{name}' already exists", field="name")
            p = Project(name=name, annotators_per_task=annotators_per_task)
            s.add(p)
            s.flush()
            s.add(Guideline(project_id=p.id, version=1, markdown=guidelines or ""))
            s.flush()
            return _info(s, p)

    def get_project(self, name: str) -> ProjectInfo:
        with self._session.begin() as s:
            return _info(s, find_project(s, name))

    def list_projects(self) -> list[ProjectInfo]:
        with self._session.begin() as s:
            return [_info(s, p) for p in s.scalars(select(Project).order_by(Project.id))]

    def update_guidelines(self, project: str, markdown: str) -> int:
        with self._session.begin() as s:
            p = find_project(s, project)
            last = guideline_version(s, p.id)
            s.add(Guideline(project_id=p.id, version=last + 1, markdown=markdown))
            return last + 1

    def guideline_history(self, project: str) -> list[dict]:
        """Every guideline version of a project, oldest first."""
        with self._session.begin() as s:
            p = find_project(s, project)
            rows = s.scalars(select(Guideline).where(Guideline.project_id == p.id)
                             .order_by(Guideline.version))
            return [{"version": g.version, "markdown": g.markdown, "created_at": _iso(g.created_at)}
                    for g in rows]
