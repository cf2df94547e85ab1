"""flow_run / task_run .state_serialized: the current state as a Prefect 1.x client serialized it; task_run.name

Null for every existing row (and for states flowbus's own clients set):
readers rebuild the serialized form from the state's type and message. A
task run without a name of its own goes by its task's.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("flow_run", "task_run"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("state_serialized", sa.JSON(), nullable=True))
    with op.batch_alter_table("task_run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("task_run", schema=None) as batch_op:
        batch_op.drop_column("name")
    for table in ("flow_run", "task_run"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("state_serialized")
