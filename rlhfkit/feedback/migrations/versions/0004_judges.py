"""AI judges as annotators (`rlhf label judge`).

- ``annotators.spec``: a judge's spec as JSON (kind, model or function, prompt template, labels, and
  the hash its answers are journaled under); NULL for people. Judges have role ``judge`` (a plain
  string column, so no change there) and never log in.

Existing rows get NULL: every account so far is a person. Plain ALTER TABLE ADD / DROP COLUMN, never
Alembic's batch mode, for the reason given in 0003: on SQLite batch mode copies and drops
``annotators``, and with foreign keys on that would cascade to every session and judgement.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("annotators", sa.Column("spec", sa.JSON, nullable=True))


def downgrade() -> None:
    op.drop_column("annotators", "spec")
