"""flow_run.traceparent: the W3C trace context of the span that created the run

The run's trace (docs/operations.md, "A run's trace"): the services that
act on a run later (the scheduler releasing it, the state service queueing
it again, the heartbeat service's Zombie Killer and Lazarus) put their
spans under it. Null for runs created before, which start no trace.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("flow_run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("traceparent", sa.String(length=55), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("flow_run", schema=None) as batch_op:
        batch_op.drop_column("traceparent")
