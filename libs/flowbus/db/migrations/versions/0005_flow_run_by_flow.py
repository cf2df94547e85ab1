"""an index on flow_run (flow_id, created): a flow's runs, newest first

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 10:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_flow_run_flow_created", "flow_run", ["flow_id", "created"])


def downgrade() -> None:
    op.drop_index("ix_flow_run_flow_created", table_name="flow_run")
