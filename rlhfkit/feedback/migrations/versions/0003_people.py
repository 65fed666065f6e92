"""Annotator management and quality control (active flag, forced password change, project
membership, gold questions).

Placeholder revision that changes nothing yet; the schema changes of that work go here.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
