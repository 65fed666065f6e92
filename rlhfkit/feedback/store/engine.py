"""Opening the database: URL resolution, engine setup (SQLite pragmas, write locking) and Alembic.

The default is a SQLite file in WAL mode (readers never block the writer, so the web UI stays
responsive while people submit); any SQLAlchemy URL works unchanged. Opening a store runs
``upgrade head``, so an old database file is brought up to date, and opening a current one is a
no-op.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from .errors import StoreError

# rlhfkit/feedback/migrations, beside this package (Alembic's script_location).
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


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


# Connections held at once. SQLAlchemy's default (5 + 10 overflow) is below the web server's worker
# threads (Starlette runs sync routes on 40), so 50 annotators at once queued for a connection and
# timed out after 30 s (tests/test_feedback_concurrency.py). 50 covers those threads and stays inside
# PostgreSQL's default max_connections (100); a SQLite connection is only a file handle.
POOL = {"pool_size": 10, "max_overflow": 40}


def make_engine(url: str) -> Engine:
    """An engine for ``url``; for SQLite, one set up for concurrent readers and one safe writer."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, **POOL)
    # The pysqlite driver's own transaction handling defers BEGIN and never takes the write lock up
    # front; disable it and issue BEGIN IMMEDIATE ourselves, so a read-then-write transaction
    # (next_task: count slots, then reserve one) holds the write lock from its first read and two
    # of them serialise instead of both seeing the same free slot.
    memory = ":memory:" in url or url in ("sqlite://", "sqlite:///")
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60.0},
                           **({} if memory else POOL))

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


class SerializedSessions:
    """A ``sessionmaker`` stand-in for SQLite whose ``begin()`` transactions take turns on a lock of
    this process.

    Every transaction here opens with BEGIN IMMEDIATE (one writer at a time), and SQLite makes the
    others wait by sleeping and retrying until ``busy_timeout``: with 50 threads at once
    (tests/test_feedback_concurrency.py) some lost that lottery for over a minute and failed with
    "database is locked". Waiting on a lock instead queues them without polling and without a time
    limit; other processes on the same file still meet the busy timeout. Reentrant, so a thread
    never blocks on itself."""

    def __init__(self, factory: sessionmaker):
        self._factory = factory
        self._lock = threading.RLock()

    @contextmanager
    def begin(self) -> Iterator[Session]:
        with self._lock, self._factory.begin() as s:
            yield s

    def __call__(self, **kw) -> Session:
        return self._factory(**kw)


def session_factory(engine: Engine, url: str):
    """What the store opens transactions with: a plain sessionmaker, serialized for SQLite."""
    factory = sessionmaker(engine, expire_on_commit=False)
    return SerializedSessions(factory) if url.startswith("sqlite") else factory


# Alembic's ``context`` is a module-level proxy, so two stores opened at once in one process (web
# workers, tests) must not run their migrations at the same time.
_MIGRATE_LOCK = threading.Lock()


def upgrade(engine: Engine) -> str:
    """Bring the schema to Alembic ``head`` (a no-op when already there); returns the revision.

    The script location is ``rlhfkit/feedback/migrations``, set programmatically, so it works from
    an installed wheel without an ``alembic.ini``.
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
    """The newest revision shipped with rlhfkit."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()
