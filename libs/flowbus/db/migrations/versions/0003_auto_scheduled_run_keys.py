"""flow_run: a unique key per group for auto-scheduled runs, and their start-time index

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 05:00:00

Both indexes are partial (``WHERE auto_scheduled``): ad-hoc runs keep their
per-flow idempotency keys and pay nothing for the scheduler's.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WHERE = {"sqlite_where": sa.text("auto_scheduled = 1"), "postgresql_where": sa.text("auto_scheduled")}


def upgrade() -> None:
    op.create_index("uq_flow_run_auto_key", "flow_run", ["flow_group_id", "idempotency_key"], unique=True, **_WHERE)
    op.create_index("ix_flow_run_auto_start", "flow_run", ["flow_group_id", "scheduled_start_time"], **_WHERE)


def downgrade() -> None:
    op.drop_index("ix_flow_run_auto_start", table_name="flow_run")
    op.drop_index("uq_flow_run_auto_key", table_name="flow_run")
