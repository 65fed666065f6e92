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
    text: Mapped[str] = mapped_column(Text)
    text_hash: Mapped[str] = mapped_column(String(64))
    meta: Mapped[dict | None] = mapped_column(JSON, nullable=True)
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
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_now)


class TaskResponse(Base):
    __tablename__ = "task_responses"
    __table_args__ = (UniqueConstraint("task_id", "response_id", name="uq_task_response"),)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)  # canonical order
    response_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"))


class Annotator(Base):
    __tablename__ = "annotators"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="annotator")
    password_hash: Mapped[str] = mapped_column(String(200))
    salt: Mapped[str] = mapped_column(String(64))
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


class Skip(Base):
    __tablename__ = "skips"
    __table_args__ = (UniqueConstraint("task_id", "annotator_id", name="uq_skip"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_now)
