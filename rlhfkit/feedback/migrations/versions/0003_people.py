"""Annotator management and quality control (active flag, forced password change, project
membership, gold questions).

- ``annotators.active``: a deactivated account cannot log in (its judgements stay).
- ``annotators.must_change_password``: invited accounts and admin resets must choose a password first.
- ``projects.members_only`` and ``project_members``: restrict a project to some annotators.
- ``tasks.gold_answer``: the known answer of a gold question (NULL: an ordinary task).

Existing rows get the defaults that keep them working as before: active, no forced change, open
projects, no gold. Plain ALTER TABLE ADD / DROP COLUMN, never Alembic's batch mode: on SQLite that
copies and drops the table, and dropping ``annotators`` with foreign keys on would cascade to every
session and judgement (SQLite >= 3.35 drops a plain column in place).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("annotators", sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()))
    op.add_column("annotators", sa.Column("must_change_password", sa.Boolean, nullable=False,
                                          server_default=sa.false()))
    op.add_column("projects", sa.Column("members_only", sa.Boolean, nullable=False,
                                        server_default=sa.false()))
    op.add_column("tasks", sa.Column("gold_answer", sa.JSON, nullable=True))
    op.create_table(
        "project_members",
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_project_members_annotator_id", "project_members", ["annotator_id"])


def downgrade() -> None:
    op.drop_index("ix_project_members_annotator_id", table_name="project_members")
    op.drop_table("project_members")
    op.drop_column("tasks", "gold_answer")
    op.drop_column("projects", "members_only")
    op.drop_column("annotators", "must_change_password")
    op.drop_column("annotators", "active")
