"""log.created: when a record was stored, indexed, for the log retention

Existing rows get their record's timestamp (now when that lies ahead), so
they age out as if stored then.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-10 09:00:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import flowbus.db.tables

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("created", flowbus.db.tables.UTCDateTime(timezone=True), nullable=True))
    log = sa.table(
        "log",
        sa.column("timestamp", flowbus.db.tables.UTCDateTime(timezone=True)),
        sa.column("created", flowbus.db.tables.UTCDateTime(timezone=True)),
    )
    now = sa.bindparam("now", datetime.now(UTC), type_=flowbus.db.tables.UTCDateTime(timezone=True))
    op.execute(log.update().values(created=sa.case((log.c.timestamp < now, log.c.timestamp), else_=now)))
    with op.batch_alter_table("log", schema=None) as batch_op:
        batch_op.alter_column("created", existing_type=flowbus.db.tables.UTCDateTime(timezone=True), nullable=False)
        batch_op.create_index("ix_log_created", ["created"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("log", schema=None) as batch_op:
        batch_op.drop_index("ix_log_created")
        batch_op.drop_column("created")
