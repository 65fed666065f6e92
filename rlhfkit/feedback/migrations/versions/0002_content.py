"""Labelling content: conversational prompts, opaque response handles, judgement revisions.

- ``prompts.messages``: the chat history of a conversational prompt (NULL: a plain string prompt).
- ``task_responses.handle``: the random id annotators see instead of the sequential response id;
  existing rows get one here, unique per task.
- ``judgements.revision`` and ``judgement_revisions``: an annotator may revise their last judgement;
  the superseded answers are kept, the judgement row is always the latest.

Plain ALTER TABLE ADD COLUMN and CREATE INDEX/TABLE, never Alembic's batch mode (on SQLite it copies
and drops the table). That is why ``handle`` stays nullable in the database: SQLite cannot add a
NOT NULL column without a default in place; the store always sets it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("prompts", sa.Column("messages", sa.JSON, nullable=True))
    op.add_column("task_responses", sa.Column("handle", sa.String(32), nullable=True))
    conn = op.get_bind()
    tr = sa.table("task_responses", sa.column("task_id", sa.Integer), sa.column("position", sa.Integer),
                  sa.column("handle", sa.String))
    for task_id, position in conn.execute(sa.select(tr.c.task_id, tr.c.position)).all():
        conn.execute(tr.update().where(tr.c.task_id == task_id, tr.c.position == position)
                     .values(handle=secrets.token_hex(8)))
    op.create_index("uq_task_response_handle", "task_responses", ["task_id", "handle"], unique=True)
    op.add_column("judgements", sa.Column("revision", sa.Integer, nullable=False, server_default="1"))
    op.create_table(
        "judgement_revisions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("judgement_id", sa.Integer, sa.ForeignKey("judgements.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("choice", sa.String(16), nullable=True),
        sa.Column("winner_response_id", sa.Integer, sa.ForeignKey("responses.id"), nullable=True),
        sa.Column("tie", sa.String(16), nullable=True),
        sa.Column("ranking", sa.JSON, nullable=True),
        sa.Column("strength", sa.Integer, nullable=True),
        sa.Column("rationale", sa.Text, nullable=True),
        sa.Column("displayed_order", sa.JSON, nullable=False),
        sa.Column("position_chosen", sa.Integer, nullable=True),
        sa.Column("seconds", sa.Float, nullable=True),
        sa.Column("guideline_version", sa.Integer, nullable=False),
        sa.Column("made_at", sa.DateTime, nullable=False),
        sa.Column("replaced_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("judgement_id", "revision", name="uq_judgement_revision"),
    )
    op.create_index("ix_judgement_revisions_judgement_id", "judgement_revisions", ["judgement_id"])


def downgrade() -> None:
    op.drop_index("ix_judgement_revisions_judgement_id", table_name="judgement_revisions")
    op.drop_table("judgement_revisions")
    op.drop_column("judgements", "revision")
    op.drop_index("uq_task_response_handle", table_name="task_responses")
    op.drop_column("task_responses", "handle")
    op.drop_column("prompts", "messages")
