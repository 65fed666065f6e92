"""Labelling-content changes (conversations, judgement revisions, opaque response ids).

Placeholder revision that changes nothing yet; the schema changes of that work go here.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
