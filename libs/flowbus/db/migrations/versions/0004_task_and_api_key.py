"""task rows of their own (backfilled from flow.tasks), the gateway's api_key table, task-run indexes

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 08:00:00
"""

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from flowbus.db.tables import UTCDateTime, new_id

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    task = op.create_table(
        "task",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("flow_id", sa.String(36), sa.ForeignKey("flow.id", ondelete="CASCADE"), nullable=False),
        sa.Column("slug", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        sa.Column("retry_delay_seconds", sa.Float(), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("created", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("flow_id", "slug", name="uq_task_flow_slug"),
    )
    op.create_table(
        "api_key",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created", UTCDateTime(), nullable=False),
        sa.Column("last_used", UTCDateTime(), nullable=True),
    )
    # A task run's states and logs (partial: flow runs' own rows are not indexed).
    for table in ("state_history", "log"):
        op.create_index(
            f"ix_{table}_task_run_id",
            table,
            ["task_run_id"],
            sqlite_where=sa.text("task_run_id IS NOT NULL"),
            postgresql_where=sa.text("task_run_id IS NOT NULL"),
        )
    # Flows registered before this revision get their task rows now.
    conn = op.get_bind()
    now = datetime.now(UTC)
    rows = []
    for flow_id, tasks, created in conn.execute(sa.text("SELECT id, tasks, created FROM flow")):
        specs = json.loads(tasks) if isinstance(tasks, str) else (tasks or [])
        for spec in specs:
            rows.append(
                {
                    "id": new_id(),
                    "flow_id": flow_id,
                    "slug": spec["slug"],
                    "name": spec.get("name", spec["slug"]),
                    "type": spec.get("type", ""),
                    "max_retries": spec.get("max_retries", 0),
                    "retry_delay_seconds": spec.get("retry_delay_seconds"),
                    "tags": spec.get("tags", []),
                    "created": _aware(created) or now,
                }
            )
    if rows:
        op.bulk_insert(task, rows)


def _aware(value: object) -> datetime | None:
    """A raw ``created`` read back: SQLite gives text without an offset (UTC), PostgreSQL a datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value
    return None


def downgrade() -> None:
    for table in ("state_history", "log"):
        op.drop_index(f"ix_{table}_task_run_id", table_name=table)
    op.drop_table("api_key")
    op.drop_table("task")
