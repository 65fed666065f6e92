"""The human-feedback store: projects, prompts, responses, comparison tasks, annotators, judgements.

One database holds everything people (or simulated labelers) produce, so that export, agreement
statistics and the web UI all read the same rows. SQLAlchemy 2 models; the default is a SQLite file
in WAL mode (readers never block the writer, so the web UI stays responsive while people submit),
and any SQLAlchemy URL works unchanged. The schema is owned by Alembic (``migrations/``): opening a
store runs ``upgrade head``, so an old database file is brought up to date, and opening a current
one is a no-op.

Design decisions, each tied to a property the data must have:

1. **Canonical vs displayed order.** A task's responses have a fixed *canonical* order
   (``task_responses.position``). Each annotator sees them in an order randomised per
   (task, annotator) by a hash, so it is deterministic (a page reload shows the same order) and
   balanced across annotators (left/right position bias averages out). ``submit`` takes the choice
   *relative to what was shown* plus the shown order, and stores the canonical winner, the shown
   order and the position chosen, so position bias can be measured afterwards.
2. **Overlap.** Each task needs ``annotators_needed`` distinct annotators. ``next_task`` reserves a
   slot (an *assignment* with a lease) inside one write transaction, so two annotators asking at
   the same moment cannot both take the last slot; ``submit`` turns the reservation into a
   judgement. A lease that runs out (someone closed the tab) frees the slot again. Calibration
   tasks go to every annotator first and have no cap.
3. **One judgement per (task, annotator)** is a unique constraint, not a convention. Re-submitting
   the identical judgement returns the existing id (a double-clicked submit is not an error);
   submitting a different one is a :class:`ConflictError`.
4. **Credentials.** Passwords are hashed with scrypt and a per-user salt; session tokens are random
   and stored only as their SHA-256, so a leaked database yields no usable token.
5. **Errors** are :class:`~rlhfkit.errors.DataError` subclasses (also ``ValueError``) naming the
   field, so the CLI prints them without a traceback and the web layer can map them to 4xx:
   :class:`NotFoundError` (404), :class:`ConflictError` (409), :class:`StoreError` (400).

Modules: ``schema`` (tables), ``engine`` (opening, migrations), ``errors`` and ``views`` (what
callers catch and receive), and one mixin per concern that :class:`FeedbackStore` combines:
``projects``, ``accounts`` (note 4), ``people`` (membership, gold questions), ``queue`` (notes 1-3;
``canonical`` validates submissions),
``revisions`` (an annotator revising their last judgement) and ``readback``. Import from this
package: the split into modules is not part of the API.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Self

from .accounts import AccountsMixin
from .engine import head_revision, make_engine, resolve_url, session_factory, upgrade
from .errors import ConflictError, ForbiddenError, NotFoundError, StoreError
from .people import PeopleMixin
from .projects import ProjectsMixin
from .queue import QueueMixin, displayed_order
from .readback import ReadbackMixin
from .revisions import RevisionsMixin
from .schema import (
    Annotator,
    Assignment,
    Base,
    Guideline,
    Judgement,
    JudgementRevision,
    Project,
    ProjectMember,
    Prompt,
    Response,
    SessionToken,
    Skip,
    Task,
    TaskResponse,
)
from .views import AnnotatorInfo, ProjectInfo, TaskView


class FeedbackStore(ProjectsMixin, AccountsMixin, PeopleMixin, QueueMixin, RevisionsMixin,
                    ReadbackMixin):
    """All reads and writes of human feedback; every public method is one transaction.

    ``url``: a SQLAlchemy URL or a plain file path (SQLite, WAL mode, foreign keys on).
    ``lease_seconds``: how long a slot reserved by :meth:`next_task` stays reserved.
    ``session_days``: lifetime of a login session token.
    """

    def __init__(self, url: str | os.PathLike, *, lease_seconds: float = 1800.0, session_days: float = 14.0):
        self.url = resolve_url(url)
        self.engine = make_engine(self.url)
        self.lease = timedelta(seconds=lease_seconds)
        self.session_life = timedelta(days=session_days)
        self.revision = upgrade(self.engine)
        self._session = session_factory(self.engine, self.url)  # serialized for SQLite (engine.py)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def journal_mode(self) -> str:
        with self.engine.connect() as conn:
            return str(conn.exec_driver_sql("PRAGMA journal_mode").scalar())


# The tables are exported too: collect.py counts rows with them, migrations/env.py reads Base.metadata.
__all__ = ["Annotator", "AnnotatorInfo", "Assignment", "Base", "ConflictError", "FeedbackStore",
           "ForbiddenError", "Guideline", "Judgement", "JudgementRevision", "NotFoundError", "Project",
           "ProjectInfo", "ProjectMember", "Prompt", "Response", "SessionToken", "Skip", "StoreError",
           "Task", "TaskResponse", "TaskView", "displayed_order", "head_revision", "resolve_url", "upgrade"]
