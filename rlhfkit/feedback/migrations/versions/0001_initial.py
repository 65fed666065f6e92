"""Initial feedback-store schema: projects, guidelines, prompts, responses, tasks, annotators,
sessions, assignments, judgements, skips.

Written out in full rather than imported from the models, so this revision keeps creating the
schema of its time when the models move on.

Revision ID: 0001
Revises:
Create Date: 2025-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _fk(target: str, **kw):
    return sa.ForeignKey(target, **kw)


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("annotators_per_task", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "guidelines",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("project_id", sa.Integer, _fk("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("markdown", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("project_id", "version", name="uq_guideline_version"),
    )
    op.create_table(
        "prompts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("project_id", sa.Integer, _fk("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("text_hash", sa.String(64), nullable=False),
        sa.Column("meta", sa.JSON, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("project_id", "text_hash", name="uq_prompt_text"),
    )
    op.create_index("ix_prompts_project_id", "prompts", ["project_id"])
    op.create_table(
        "responses",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("prompt_id", sa.Integer, _fk("prompts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("text_hash", sa.String(64), nullable=False),
        sa.Column("model_id", sa.String(500), nullable=False),
        sa.Column("sampling", sa.JSON, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("prompt_id", "text_hash", "model_id", name="uq_response"),
    )
    op.create_index("ix_responses_prompt_id", "responses", ["prompt_id"])
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("project_id", sa.Integer, _fk("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("prompt_id", sa.Integer, _fk("prompts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("annotators_needed", sa.Integer, nullable=False),
        sa.Column("calibration", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_tasks_queue", "tasks", ["project_id", "calibration", "id"])
    op.create_index("ix_tasks_prompt_id", "tasks", ["prompt_id"])
    op.create_table(
        "task_responses",
        sa.Column("task_id", sa.Integer, _fk("tasks.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("response_id", sa.Integer, _fk("responses.id", ondelete="CASCADE"), nullable=False),
        sa.UniqueConstraint("task_id", "response_id", name="uq_task_response"),
    )
    op.create_table(
        "annotators",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("salt", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "sessions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("annotator_id", sa.Integer, _fk("annotators.id", ondelete="CASCADE"), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_sessions_annotator_id", "sessions", ["annotator_id"])
    op.create_table(
        "assignments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("task_id", sa.Integer, _fk("tasks.id", ondelete="CASCADE"), nullable=False),
        sa.Column("annotator_id", sa.Integer, _fk("annotators.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("task_id", "annotator_id", name="uq_assignment"),
    )
    op.create_index("ix_assignments_task_id", "assignments", ["task_id"])
    op.create_index("ix_assignments_annotator_id", "assignments", ["annotator_id"])
    op.create_table(
        "judgements",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("task_id", sa.Integer, _fk("tasks.id", ondelete="CASCADE"), nullable=False),
        sa.Column("annotator_id", sa.Integer, _fk("annotators.id", ondelete="CASCADE"), nullable=False),
        sa.Column("choice", sa.String(16), nullable=True),
        sa.Column("winner_response_id", sa.Integer, _fk("responses.id"), nullable=True),
        sa.Column("tie", sa.String(16), nullable=True),
        sa.Column("ranking", sa.JSON, nullable=True),
        sa.Column("strength", sa.Integer, nullable=True),
        sa.Column("rationale", sa.Text, nullable=True),
        sa.Column("displayed_order", sa.JSON, nullable=False),
        sa.Column("position_chosen", sa.Integer, nullable=True),
        sa.Column("seconds", sa.Float, nullable=True),
        sa.Column("guideline_version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("task_id", "annotator_id", name="uq_judgement"),
    )
    op.create_index("ix_judgements_task_id", "judgements", ["task_id"])
    op.create_index("ix_judgements_annotator_id", "judgements", ["annotator_id"])
    op.create_table(
        "skips",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("task_id", sa.Integer, _fk("tasks.id", ondelete="CASCADE"), nullable=False),
        sa.Column("annotator_id", sa.Integer, _fk("annotators.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("task_id", "annotator_id", name="uq_skip"),
    )
    op.create_index("ix_skips_task_id", "skips", ["task_id"])
    op.create_index("ix_skips_annotator_id", "skips", ["annotator_id"])


def downgrade() -> None:
    for table in ("skips", "judgements", "assignments", "sessions", "annotators", "task_responses", "tasks",
                  "responses", "prompts", "guidelines", "projects"):
        op.drop_table(table)
