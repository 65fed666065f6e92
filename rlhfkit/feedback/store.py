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
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import random
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text,
                        UniqueConstraint, create_engine, delete, event, func, select)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from rlhfkit.errors import DataError

CHOICES = ("A", "B", "tie_good", "tie_bad")
TIES = ("tie_good", "tie_bad")
ROLES = ("admin", "annotator")
STRENGTHS = (1, 2, 3, 4)  # 1 = slightly better ... 4 = much better
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


# ---------------------------------------------------------------------------------------------
# errors


class StoreError(DataError, ValueError):
    """Invalid input to the store (a 400 in the web UI); ``field`` names the offending field."""

    def __init__(self, reason: str, *, field: str | None = None):
        super().__init__(reason, source="feedback store", field=field)


class NotFoundError(StoreError):
    """An unknown project, task, annotator or response (a 404)."""


class ConflictError(StoreError):
    """The request clashes with what is stored: already judged differently, name taken, task
    full (a 409)."""


# ---------------------------------------------------------------------------------------------
# public views


@dataclass(frozen=True)
class ProjectInfo:
    id: int
    name: str
    guidelines: str
    guideline_version: int
    annotators_per_task: int


@dataclass(frozen=True)
class AnnotatorInfo:
    id: int
    name: str
    role: str  # "admin" | "annotator"


@dataclass(frozen=True)
class TaskView:
    id: int
    project: str
    prompt: str
    responses: list[tuple[int, str]]  # (response_id, text) in the order SHOWN to this annotator
    calibration: bool
    guideline_version: int
    kind: str  # "pair" | "ranking"


# ---------------------------------------------------------------------------------------------
# schema (the Alembic revision 0001 creates exactly these tables)


def _now() -> datetime:
    # Naive UTC everywhere: SQLite drops tzinfo anyway, and mixing aware/naive breaks comparisons.
    return datetime.now(UTC).replace(tzinfo=None)


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


# ---------------------------------------------------------------------------------------------
# engine setup and migrations


def resolve_url(url: str | os.PathLike) -> str:
    """A SQLAlchemy URL as is; anything else is a file path for a SQLite database."""
    text = str(url)
    if "://" in text:
        try:
            make_url(text)
        except ArgumentError as e:
            raise StoreError(f"not a valid database URL: {e}", field="store") from None
        return text
    path = Path(text).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    # The pysqlite driver's own transaction handling defers BEGIN and never takes the write lock up
    # front; disable it and issue BEGIN IMMEDIATE ourselves, so a read-then-write transaction
    # (next_task: count slots, then reserve one) holds the write lock from its first read and two
    # of them serialise instead of both seeing the same free slot.
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60.0})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if ":memory:" not in url and url not in ("sqlite://", "sqlite:///"):
            cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            # WAL + NORMAL: a commit survives a process crash; only a power cut can lose the last
            # transactions (never corrupt the file), and each write skips a full disk sync (~9 ms).
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")  # SQLite ignores REFERENCES without it
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


_MIGRATE_LOCK = threading.Lock()


def upgrade(engine: Engine) -> str:
    """Bring the schema to Alembic ``head`` (a no-op when already there); returns the revision.

    The script location is this package's ``migrations`` directory, set programmatically, so it
    works from an installed wheel without an ``alembic.ini``.
    """
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

    alembic_log = logging.getLogger("alembic")
    if alembic_log.level == logging.NOTSET:  # it narrates every plugin at INFO; say only what goes wrong
        alembic_log.setLevel(logging.WARNING)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with _MIGRATE_LOCK, engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    """The newest revision shipped with this package."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()


# ---------------------------------------------------------------------------------------------
# passwords and tokens

_SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}
MIN_PASSWORD = 8  # for passwords people choose (change_password); invited ones are 16 random characters


def _hash_password(password: str, salt: bytes) -> str:
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, dklen=32, maxmem=64 * 2 ** 20, **_SCRYPT)
    return f"scrypt:{_SCRYPT['n']}:{_SCRYPT['r']}:{_SCRYPT['p']}${digest.hex()}"


def _check_password(password: str, stored: str, salt_hex: str) -> bool:
    params, _, digest_hex = stored.partition("$")
    _, n, r, p = params.split(":")
    digest = hashlib.scrypt(password.encode("utf-8"), salt=bytes.fromhex(salt_hex), dklen=32,
                            maxmem=64 * 2 ** 20, n=int(n), r=int(r), p=int(p))
    return hmac.compare_digest(digest.hex(), digest_hex)


def _token_hash(token: str) -> str:
    # A 256-bit random token needs no slow hash: brute force is hopeless either way.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


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


# ---------------------------------------------------------------------------------------------
# the store


class FeedbackStore:
    """All reads and writes of human feedback; every public method is one transaction.

    ``url``: a SQLAlchemy URL or a plain file path (SQLite, WAL mode, foreign keys on).
    ``lease_seconds``: how long a slot reserved by :meth:`next_task` stays reserved.
    ``session_days``: lifetime of a login session token.
    """

    def __init__(self, url: str | os.PathLike, *, lease_seconds: float = 1800.0, session_days: float = 14.0):
        self.url = resolve_url(url)
        self.engine = _make_engine(self.url)
        self.lease = timedelta(seconds=lease_seconds)
        self.session_life = timedelta(days=session_days)
        self.revision = upgrade(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def journal_mode(self) -> str:
        with self.engine.connect() as conn:
            return str(conn.exec_driver_sql("PRAGMA journal_mode").scalar())

    # ------------------------------------------------------------------ projects and guidelines

    def _project(self, s: Session, name: str) -> Project:
        p = s.scalar(select(Project).where(Project.name == name))
        if p is None:
            raise NotFoundError(f"unknown project '{name}'", field="project")
        return p

    def _info(self, s: Session, p: Project) -> ProjectInfo:
        g = s.scalar(select(Guideline).where(Guideline.project_id == p.id).order_by(Guideline.version.desc()))
        return ProjectInfo(id=p.id, name=p.name, guidelines=g.markdown if g else "",
                           guideline_version=g.version if g else 0, annotators_per_task=p.annotators_per_task)

    def create_project(self, name: str, guidelines: str = "", annotators_per_task: int = 1) -> ProjectInfo:
        if not isinstance(name, str) or not name.strip():
            raise StoreError("a project needs a non-blank name", field="name")
        if not isinstance(annotators_per_task, int) or annotators_per_task < 1:
            raise StoreError(f"must be an integer >= 1, got {annotators_per_task!r}", field="annotators_per_task")
        with self._session.begin() as s:
            if s.scalar(select(Project.id).where(Project.name == name)) is not None:
                raise ConflictError(f"project '{name}' already exists", field="name")
            p = Project(name=name, annotators_per_task=annotators_per_task)
            s.add(p)
            s.flush()
            s.add(Guideline(project_id=p.id, version=1, markdown=guidelines or ""))
            s.flush()
            return self._info(s, p)

    def get_project(self, name: str) -> ProjectInfo:
        with self._session.begin() as s:
            return self._info(s, self._project(s, name))

    def list_projects(self) -> list[ProjectInfo]:
        with self._session.begin() as s:
            return [self._info(s, p) for p in s.scalars(select(Project).order_by(Project.id))]

    def update_guidelines(self, project: str, markdown: str) -> int:
        with self._session.begin() as s:
            p = self._project(s, project)
            last = s.scalar(select(func.max(Guideline.version)).where(Guideline.project_id == p.id)) or 0
            s.add(Guideline(project_id=p.id, version=last + 1, markdown=markdown))
            return last + 1

    def guideline_history(self, project: str) -> list[dict]:
        """Every guideline version of a project, oldest first."""
        with self._session.begin() as s:
            p = self._project(s, project)
            rows = s.scalars(select(Guideline).where(Guideline.project_id == p.id).order_by(Guideline.version))
            return [{"version": g.version, "markdown": g.markdown, "created_at": _iso(g.created_at)} for g in rows]

    # ------------------------------------------------------------------ annotators and sessions

    def add_annotator(self, name: str, password: str, role: str = "annotator") -> AnnotatorInfo:
        if not isinstance(name, str) or not name.strip():
            raise StoreError("an annotator needs a non-blank name", field="name")
        if role not in ROLES:
            raise StoreError(f"role must be one of {ROLES}, got {role!r}", field="role")
        if not isinstance(password, str) or not password:
            raise StoreError("a password is required", field="password")
        salt = secrets.token_bytes(16)
        digest = _hash_password(password, salt)  # outside the transaction: scrypt is slow on purpose
        with self._session.begin() as s:
            if s.scalar(select(Annotator.id).where(Annotator.name == name)) is not None:
                raise ConflictError(f"annotator '{name}' already exists", field="name")
            a = Annotator(name=name, role=role, password_hash=digest, salt=salt.hex())
            s.add(a)
            s.flush()
            return AnnotatorInfo(id=a.id, name=a.name, role=a.role)

    def get_annotator(self, name: str) -> AnnotatorInfo | None:
        with self._session.begin() as s:
            a = s.scalar(select(Annotator).where(Annotator.name == name))
            return AnnotatorInfo(id=a.id, name=a.name, role=a.role) if a else None

    def list_annotators(self) -> list[AnnotatorInfo]:
        with self._session.begin() as s:
            return [AnnotatorInfo(id=a.id, name=a.name, role=a.role)
                    for a in s.scalars(select(Annotator).order_by(Annotator.id))]

    def authenticate(self, name: str, password: str) -> AnnotatorInfo | None:
        with self._session.begin() as s:
            a = s.scalar(select(Annotator).where(Annotator.name == name))
            info = AnnotatorInfo(id=a.id, name=a.name, role=a.role) if a else None
            stored, salt = (a.password_hash, a.salt) if a else (None, None)
        if stored is None:
            # Hash anyway so an unknown name takes as long as a wrong password (no user enumeration).
            _hash_password(password or "", b"\0" * 16)
            return None
        return info if _check_password(password or "", stored, salt) else None

    def change_password(self, annotator_id: int, current: str, new: str, *,
                        keep_session: str | None = None) -> None:
        """Replace an annotator's password after checking the current one (an invited annotator
        replaces the one the admin saw). Every other session and API token of theirs ends, so a
        leaked old password or token stops working; ``keep_session`` (the caller's) survives."""
        if not isinstance(new, str) or len(new) < MIN_PASSWORD or len(new) > 1000:
            raise StoreError(f"the new password needs {MIN_PASSWORD} to 1000 characters", field="new")
        with self._session.begin() as s:
            a = s.get(Annotator, annotator_id)
            if a is None:
                raise NotFoundError(f"unknown annotator id {annotator_id}", field="annotator_id")
            stored, salt_hex = a.password_hash, a.salt
        if not _check_password(current or "", stored, salt_hex):
            raise StoreError("the current password is wrong", field="current")
        salt = secrets.token_bytes(16)
        digest = _hash_password(new, salt)
        with self._session.begin() as s:
            a = s.get(Annotator, annotator_id)
            a.password_hash, a.salt = digest, salt.hex()
            q = delete(SessionToken).where(SessionToken.annotator_id == annotator_id)
            if keep_session:
                q = q.where(SessionToken.token_hash != _token_hash(keep_session))
            s.execute(q)

    def create_session(self, annotator_id: int) -> str:
        token = secrets.token_urlsafe(32)
        with self._session.begin() as s:
            if s.get(Annotator, annotator_id) is None:
                raise NotFoundError(f"unknown annotator id {annotator_id}", field="annotator_id")
            now = _now()
            s.add(SessionToken(annotator_id=annotator_id, token_hash=_token_hash(token), created_at=now,
                               expires_at=now + self.session_life))
        return token

    def annotator_for_session(self, token: str) -> AnnotatorInfo | None:
        if not token:
            return None
        with self._session.begin() as s:
            st = s.scalar(select(SessionToken).where(SessionToken.token_hash == _token_hash(token)))
            if st is None or st.expires_at <= _now():
                return None
            a = s.get(Annotator, st.annotator_id)
            return AnnotatorInfo(id=a.id, name=a.name, role=a.role)

    def end_session(self, token: str) -> None:
        """Log out: the token stops working."""
        with self._session.begin() as s:
            s.execute(delete(SessionToken).where(SessionToken.token_hash == _token_hash(token)))

    # ------------------------------------------------------------------ prompts, responses, tasks

    def add_prompt(self, project: str, text: str, meta: dict | None = None) -> int:
        """The prompt's id; adding the same text to the same project again returns the same id."""
        if not isinstance(text, str) or not text.strip():
            raise StoreError("a prompt must be a non-blank string", field="prompt")
        with self._session.begin() as s:
            p = self._project(s, project)
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
                row = Response(prompt_id=prompt_id, text=text, text_hash=h, model_id=model_id, sampling=sampling)
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
        if annotators_needed is not None and (not isinstance(annotators_needed, int) or annotators_needed < 1):
            raise StoreError(f"must be an integer >= 1, got {annotators_needed!r}", field="annotators_needed")
        with self._session.begin() as s:
            p = self._project(s, project)
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
                     annotators_needed=annotators_needed or p.annotators_per_task, calibration=bool(calibration))
            s.add(t)
            s.flush()
            for pos, rid in enumerate(ids):
                s.add(TaskResponse(task_id=t.id, position=pos, response_id=rid))
            return t.id

    def _task_ids(self, s: Session, task_id: int) -> list[int]:
        return list(s.scalars(select(TaskResponse.response_id).where(TaskResponse.task_id == task_id)
                              .order_by(TaskResponse.position)))

    # ------------------------------------------------------------------ the queue

    def _slots_used(self, s: Session, task_id: int, now: datetime, exclude_annotator: int | None = None) -> int:
        """Judgements plus live reservations of the task (optionally not counting one annotator's)."""
        j = s.scalar(select(func.count()).select_from(Judgement).where(Judgement.task_id == task_id))
        q = select(func.count()).select_from(Assignment).where(Assignment.task_id == task_id,
                                                               Assignment.expires_at > now)
        if exclude_annotator is not None:
            q = q.where(Assignment.annotator_id != exclude_annotator)
        return j + s.scalar(q)

    def _view(self, s: Session, p: Project, t: Task, annotator_id: int) -> TaskView:
        ids = self._task_ids(s, t.id)
        texts = dict(s.execute(select(Response.id, Response.text).where(Response.id.in_(ids))).all())
        order = displayed_order(t.id, annotator_id, ids)
        version = s.scalar(select(func.max(Guideline.version)).where(Guideline.project_id == p.id)) or 0
        return TaskView(id=t.id, project=p.name, prompt=s.get(Prompt, t.prompt_id).text,
                        responses=[(i, texts[i]) for i in order], calibration=t.calibration,
                        guideline_version=version, kind=t.kind)

    def next_task(self, project: str, annotator_id: int) -> TaskView | None:
        """The next task for this annotator, with a slot reserved for them (see design note 2).

        Order: a task this annotator already holds a live reservation for (a reload shows the same
        task); calibration tasks they have not done; then the oldest task with a free slot that
        they have neither judged nor skipped. ``None`` when nothing is left for them.
        """
        with self._session.begin() as s:
            p = self._project(s, project)
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
                return self._view(s, p, held, annotator_id)
            base = select(Task).where(Task.project_id == p.id, Task.id.not_in(done))
            task = s.scalar(base.where(Task.calibration.is_(True)).order_by(Task.id).limit(1))
            if task is None:
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
                    if self._slots_used(s, cand.id, now, exclude_annotator=annotator_id) < cand.annotators_needed:
                        task = cand
                        break
            if task is None:
                return None
            a = s.scalar(select(Assignment).where(Assignment.task_id == task.id,
                                                  Assignment.annotator_id == annotator_id))
            if a is None:
                s.add(Assignment(task_id=task.id, annotator_id=annotator_id, created_at=now,
                                 expires_at=now + self.lease))
            else:  # an expired reservation of our own: renew it
                a.expires_at = now + self.lease
            return self._view(s, p, task, annotator_id)

    def submit(self, task_id: int, annotator_id: int, *, choice: str | None = None, strength: int | None = None,
               ranking: list[list[int]] | None = None, rationale: str | None = None,
               displayed_order: list[int], seconds: float | None = None) -> int:
        """Store one judgement; see the module docstring (design notes 1-3). Returns its id."""
        with self._session.begin() as s:
            t = s.get(Task, task_id) if isinstance(task_id, int) else None
            if t is None:
                raise NotFoundError(f"unknown task {task_id!r}", field="task_id")
            if s.get(Annotator, annotator_id) is None:
                raise NotFoundError(f"unknown annotator id {annotator_id!r}", field="annotator_id")
            ids = self._task_ids(s, t.id)
            fields = _canonical(t.kind, ids, choice=choice, strength=strength, ranking=ranking,
                                rationale=rationale, shown=displayed_order, seconds=seconds)
            old = s.scalar(select(Judgement).where(Judgement.task_id == t.id, Judgement.annotator_id == annotator_id))
            if old is not None:
                same = all(getattr(old, k) == v for k, v in fields.items() if k not in ("seconds", "rationale"))
                if same:  # a repeated submit (double click, retried request): idempotent
                    return old.id
                raise ConflictError(f"task {t.id} was already judged by this annotator (judgement {old.id})",
                                    field="task_id")
            now = _now()
            if not t.calibration:
                mine = s.scalar(select(Assignment).where(Assignment.task_id == t.id,
                                                         Assignment.annotator_id == annotator_id))
                holds = mine is not None and mine.expires_at > now
                if not holds and self._slots_used(s, t.id, now, exclude_annotator=annotator_id) >= t.annotators_needed:
                    raise ConflictError(f"task {t.id} is not assigned to this annotator and already has its "
                                        f"{t.annotators_needed} annotator(s)", field="task_id")
            version = s.scalar(select(func.max(Guideline.version)).where(Guideline.project_id == t.project_id)) or 0
            j = Judgement(task_id=t.id, annotator_id=annotator_id, guideline_version=version, created_at=now,
                          updated_at=now, **fields)
            s.add(j)
            s.execute(delete(Assignment).where(Assignment.task_id == t.id, Assignment.annotator_id == annotator_id))
            try:
                s.flush()
            except IntegrityError:  # a concurrent identical submit won the race (non-SQLite backends)
                raise ConflictError(f"task {t.id} was already judged by this annotator", field="task_id") from None
            return j.id

    def skip(self, task_id: int, annotator_id: int) -> None:
        """This annotator passes on the task: it is not offered to them again and their slot is freed."""
        with self._session.begin() as s:
            t = s.get(Task, task_id) if isinstance(task_id, int) else None
            if t is None:
                raise NotFoundError(f"unknown task {task_id!r}", field="task_id")
            if s.get(Annotator, annotator_id) is None:
                raise NotFoundError(f"unknown annotator id {annotator_id!r}", field="annotator_id")
            if s.scalar(select(Judgement.id).where(Judgement.task_id == task_id,
                                                   Judgement.annotator_id == annotator_id)) is not None:
                raise ConflictError(f"task {task_id} is already judged; it cannot be skipped", field="task_id")
            s.execute(delete(Assignment).where(Assignment.task_id == task_id, Assignment.annotator_id == annotator_id))
            if s.scalar(select(Skip.id).where(Skip.task_id == task_id, Skip.annotator_id == annotator_id)) is None:
                s.add(Skip(task_id=task_id, annotator_id=annotator_id))

    # ------------------------------------------------------------------ reading back

    def progress(self, project: str) -> dict:
        """Counts for a progress bar and the admin page."""
        with self._session.begin() as s:
            p = self._project(s, project)
            tasks = s.execute(select(Task.id, Task.annotators_needed, Task.calibration)
                              .where(Task.project_id == p.id)).all()
            counts = dict(s.execute(select(Judgement.task_id, func.count()).join(Task, Task.id == Judgement.task_id)
                                    .where(Task.project_id == p.id).group_by(Judgement.task_id)).all())
            per = dict(s.execute(select(Annotator.name, func.count()).join(Judgement, Judgement.annotator_id == Annotator.id)
                                 .join(Task, Task.id == Judgement.task_id).where(Task.project_id == p.id)
                                 .group_by(Annotator.name).order_by(Annotator.name)).all())
            skips = s.scalar(select(func.count()).select_from(Skip).join(Task, Task.id == Skip.task_id)
                             .where(Task.project_id == p.id))
            needed = sum(n for _, n, cal in tasks if not cal)
            got = sum(min(counts.get(i, 0), n) for i, n, cal in tasks if not cal)
            return {
                "tasks": len(tasks),
                "tasks_complete": sum(counts.get(i, 0) >= n for i, n, _ in tasks),
                "calibration_tasks": sum(bool(cal) for _, _, cal in tasks),
                "judgements": sum(counts.values()),
                "judgements_needed": needed,  # non-calibration slots; calibration has no cap
                "judgements_open": needed - got,
                "per_annotator": per,
                "skips": skips,
            }

    def tasks(self, project: str) -> list[dict]:
        """Every task of a project: task_id, prompt, response_ids (canonical order), texts, model_ids,
        kind, calibration, annotators_needed."""
        with self._session.begin() as s:
            p = self._project(s, project)
            rows = s.execute(select(Task, Prompt.text).join(Prompt, Prompt.id == Task.prompt_id)
                             .where(Task.project_id == p.id).order_by(Task.id)).all()
            resp = self._responses_of(s, [t.id for t, _ in rows])
            return [{"task_id": t.id, "prompt": prompt, "response_ids": [r[0] for r in resp[t.id]],
                     "texts": [r[1] for r in resp[t.id]], "model_ids": [r[2] for r in resp[t.id]],
                     "kind": t.kind, "calibration": t.calibration, "annotators_needed": t.annotators_needed}
                    for t, prompt in rows]

    def _responses_of(self, s: Session, task_ids: list[int]) -> dict[int, list[tuple[int, str, str]]]:
        out: dict[int, list[tuple[int, str, str]]] = {i: [] for i in task_ids}
        if not task_ids:
            return out
        q = (select(TaskResponse.task_id, Response.id, Response.text, Response.model_id)
             .join(Response, Response.id == TaskResponse.response_id)
             .where(TaskResponse.task_id.in_(task_ids)).order_by(TaskResponse.task_id, TaskResponse.position))
        for tid, rid, text, model in s.execute(q):
            out[tid].append((rid, text, model))
        return out

    def judgements(self, project: str) -> list[dict]:
        """One dict per judgement of the project, oldest first (fields: see the contract)."""
        with self._session.begin() as s:
            p = self._project(s, project)
            rows = s.execute(select(Judgement, Task, Annotator.name, Prompt.text)
                             .join(Task, Task.id == Judgement.task_id)
                             .join(Annotator, Annotator.id == Judgement.annotator_id)
                             .join(Prompt, Prompt.id == Task.prompt_id)
                             .where(Task.project_id == p.id).order_by(Judgement.id)).all()
            resp = self._responses_of(s, sorted({t.id for _, t, _, _ in rows}))
            out = []
            for j, t, name, prompt in rows:
                r = resp[t.id]
                out.append({
                    "judgement_id": j.id, "task_id": t.id, "annotator": name, "annotator_id": j.annotator_id,
                    "prompt": prompt, "response_ids": [x[0] for x in r], "texts": [x[1] for x in r],
                    "model_ids": [x[2] for x in r], "kind": t.kind, "choice": j.choice,
                    "winner_id": j.winner_response_id, "ranking": j.ranking, "strength": j.strength,
                    "rationale": j.rationale, "displayed_order": j.displayed_order,
                    "position_chosen": j.position_chosen, "seconds": j.seconds,
                    "guideline_version": j.guideline_version, "calibration": t.calibration,
                    "created_at": _iso(j.created_at),
                })
            return out


def _iso(dt: datetime) -> str:
    return dt.replace(tzinfo=UTC).isoformat()


def _canonical(kind: str, ids: list[int], *, choice, strength, ranking, rationale, shown, seconds) -> dict[str, Any]:
    """Validate a submission against its task and convert it to the stored (canonical) fields."""
    if not isinstance(shown, (list, tuple)) or sorted(_ints(shown, "displayed_order")) != sorted(ids):
        raise StoreError(f"must list exactly the task's response ids {sorted(ids)} in the order shown, "
                         f"got {shown!r}", field="displayed_order")
    shown = list(shown)
    if strength is not None and (isinstance(strength, bool) or not isinstance(strength, int)
                                 or not 1 <= strength <= 4):
        raise StoreError(f"must be an integer from 1 to 4, got {strength!r}", field="strength")
    if rationale is not None and not isinstance(rationale, str):
        raise StoreError(f"must be text, got {type(rationale).__name__}", field="rationale")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                or not seconds >= 0 or seconds == float("inf")):
        raise StoreError(f"must be a finite number >= 0, got {seconds!r}", field="seconds")
    out: dict[str, Any] = {"strength": strength, "rationale": rationale or None, "displayed_order": shown,
                           "seconds": None if seconds is None else float(seconds)}
    if kind == "pair":
        if ranking is not None:
            raise StoreError("a pair task takes a choice, not a ranking", field="ranking")
        if choice not in CHOICES:
            raise StoreError(f"must be one of {', '.join(CHOICES)} (relative to the order shown), got {choice!r}",
                             field="choice")
        if choice in TIES:
            out.update(choice=choice, tie=choice, winner_response_id=None, position_chosen=None, ranking=[list(ids)])
        else:
            pos = 0 if choice == "A" else 1
            winner = shown[pos]
            loser = shown[1 - pos]
            out.update(choice="A" if winner == ids[0] else "B", tie=None, winner_response_id=winner,
                       position_chosen=pos, ranking=[[winner], [loser]])
        return out
    if choice is not None:
        raise StoreError("a ranking task takes a ranking, not a choice", field="choice")
    if not isinstance(ranking, (list, tuple)) or not ranking:
        raise StoreError("a ranking task needs a ranking: groups of response ids, best first", field="ranking")
    groups = []
    for g in ranking:
        if not isinstance(g, (list, tuple)) or not g:
            raise StoreError(f"each group must be a non-empty list of response ids, got {g!r}", field="ranking")
        groups.append(_ints(g, "ranking"))
    flat = [i for g in groups for i in g]
    if sorted(flat) != sorted(ids):
        raise StoreError(f"must rank each of the task's responses {sorted(ids)} exactly once, got {ranking!r}",
                         field="ranking")
    if len(groups) == 1:
        raise StoreError("a ranking with everything tied says nothing; use at least two groups", field="ranking")
    winner = groups[0][0] if len(groups[0]) == 1 else None
    out.update(choice=None, tie=None, winner_response_id=winner, ranking=groups,
               position_chosen=shown.index(winner) if winner is not None else None)
    return out


def _ints(values, field: str) -> list[int]:
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise StoreError(f"must contain response ids (integers), got {list(values)!r}", field=field)
    return list(values)


def open_store(url: str | os.PathLike) -> FeedbackStore:
    """A store for a CLI stage; the same as ``FeedbackStore(url)``."""
    return FeedbackStore(url)


__all__ = ["AnnotatorInfo", "ConflictError", "FeedbackStore", "NotFoundError", "ProjectInfo", "StoreError",
           "TaskView", "displayed_order", "head_revision", "resolve_url", "upgrade"]
