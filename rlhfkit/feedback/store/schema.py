"""The feedback store's tables as SQLAlchemy 2 declarative models.

Alembic owns the schema: revision 0001 (``migrations/versions``) creates exactly these tables, and
``migrations/env.py`` compares against ``Base.metadata``. A change here needs a new revision.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def _now() -> datetime:
    # Naive UTC everywhere: SQLite drops tzinfo anyway, and mixing aware/naive breaks comparisons.
    return datetime.now(UTC).replace(tzinfo=None)


def _iso(dt: datetime) -> str:
    # Stored datetimes are naive UTC (see _now); say so explicitly when handing them out.
    return dt.replace(tzinfo=UTC).isoformat()


def _text_hash(text: str) -> str:
    # Uniqueness on a hash, not on the text: PostgreSQL btree indices cap entries at ~2.7 kB.
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    annotators_per_task: Mapped[int] = mapped_column(Integer, default=1)
    # Off: every annotator may label the project; on: only its ProjectMember rows (admins always may).
    members_only: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_now)


class Guideline(Base):
    __tablename__ = "guidelines"
    __table_args__ = (UniqueConstraint("project_id", "version", name="uq_guideline_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    markdown: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_now)


class Prompt(Base):
    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("project_id", "text_hash", name="uq_prompt_text"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(Text)  # for a conversation: a plain transcript (admin pages, logs)
    text_hash: Mapped[str] = mapped_column(String(64))
    meta: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # A conversational prompt: the chat so far, [{"role", "content"}, ...]; its responses are the next
    # assistant turn. None: a plain string prompt (``text``).
    messages: Mapped[list | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_now)


class Response(Base):
    __tablename__ = "responses"
    __table_args__ = (UniqueConstraint("prompt_id", "text_hash", "model_id", name="uq_response"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(Text)
    text_hash: Mapped[str] = mapped_column(String(64))
    model_id: Mapped[str] = mapped_column(String(500))
    sampling: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_now)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (Index("ix_tasks_queue", "project_id", "calibration", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "pair" | "ranking"
    annotators_needed: Mapped[int] = mapped_column(Integer)
    calibration: Mapped[bool] = mapped_column(Boolean, default=False)
    # A gold question's known answer, canonical like a judgement: {"choice": "A"|"B"|tie, "ranking":
    # groups best first}. None: an ordinary task. Gold tasks go to every annotator, mixed into the
    # queue unannounced, and score them (store.people). none_as_null: SQL NULL, so "IS NULL" finds them.
    gold_answer: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_now)


class TaskResponse(Base):
    __tablename__ = "task_responses"
    __table_args__ = (UniqueConstraint("task_id", "response_id", name="uq_task_response"),
                      Index("uq_task_response_handle", "task_id", "handle", unique=True))
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)  # canonical order
    response_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"))
    # What annotators see instead of response_id: random per (task, response). Response ids are
    # sequential in import order, so showing them would tell annotators which model wrote what.
    # Nullable only because SQLite cannot add a NOT NULL column without copying the table (migration
    # 0002 fills it for old rows); the store always sets it.
    handle: Mapped[str | None] = mapped_column(String(32), nullable=True)


class Annotator(Base):
    __tablename__ = "annotators"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="annotator")
    password_hash: Mapped[str] = mapped_column(String(200))
    salt: Mapped[str] = mapped_column(String(64))
    # A deactivated account cannot log in, and its sessions and reservations are gone; its judgements stay.
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # Set for invited accounts and by an admin's password reset: the password someone else saw must be
    # replaced before anything else.
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # An AI judge's spec (role "judge", `rlhf label judge`): its kind, model or function and prompt, and
    # the hash its answers are journaled under; None for people. Never a secret (API keys stay in env).
    spec: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_now)


class ProjectMember(Base):
    """Who may label a ``members_only`` project."""

    __tablename__ = "project_members"
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id", ondelete="CASCADE"),
                                              primary_key=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_now)


class SessionToken(Base):
    __tablename__ = "sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_now)
    expires_at: Mapped[datetime] = mapped_column(DateTime)


class Assignment(Base):
    """A reserved slot: annotator X is working on task T until ``expires_at`` (see design note 2)."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("task_id", "annotator_id", name="uq_assignment"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_now)
    expires_at: Mapped[datetime] = mapped_column(DateTime)


class Judgement(Base):
    __tablename__ = "judgements"
    __table_args__ = (UniqueConstraint("task_id", "annotator_id", name="uq_judgement"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id", ondelete="CASCADE"), index=True)
    choice: Mapped[str | None] = mapped_column(String(16), nullable=True)  # canonical; None for rankings
    winner_response_id: Mapped[int | None] = mapped_column(ForeignKey("responses.id"), nullable=True)
    tie: Mapped[str | None] = mapped_column(String(16), nullable=True)  # "tie_good" | "tie_bad"
    ranking: Mapped[list | None] = mapped_column(JSON, nullable=True)  # groups of ids, best first
    strength: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rationale: Mapped[str | None] = mapped_column(Text, nullable=True)
    displayed_order: Mapped[list] = mapped_column(JSON)
    position_chosen: Mapped[int | None] = mapped_column(Integer, nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    guideline_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=_now)
    # 1 for the first answer; each revision by its annotator moves the previous answer to
    # judgement_revisions and counts up. This row is always the latest (what export reads).
    revision: Mapped[int] = mapped_column(Integer, default=1, server_default="1")


class JudgementRevision(Base):
    """A superseded answer of a judgement, kept when its annotator revised it (``U`` in the UI)."""

    __tablename__ = "judgement_revisions"
    __table_args__ = (UniqueConstraint("judgement_id", "revision", name="uq_judgement_revision"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    judgement_id: Mapped[int] = mapped_column(ForeignKey("judgements.id", ondelete="CASCADE"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    choice: Mapped[str | None] = mapped_column(String(16), nullable=True)
    winner_response_id: Mapped[int | None] = mapped_column(ForeignKey("responses.id"), nullable=True)
    tie: Mapped[str | None] = mapped_column(String(16), nullable=True)
    ranking: Mapped[list | None] = mapped_column(JSON, nullable=True)
    strength: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rationale: Mapped[str | None] = mapped_column(Text, nullable=True)
    displayed_order: Mapped[list] = mapped_column(JSON)
    position_chosen: Mapped[int | None] = mapped_column(Integer, nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    guideline_version: Mapped[int] = mapped_column(Integer)
    made_at: Mapped[datetime] = mapped_column(DateTime)  # when this answer was given
    replaced_at: Mapped[datetime] = mapped_column(DateTime, default=_now)


class Skip(Base):
    __tablename__ = "skips"
    __table_args__ = (UniqueConstraint("task_id", "annotator_id", name="uq_skip"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_now)
