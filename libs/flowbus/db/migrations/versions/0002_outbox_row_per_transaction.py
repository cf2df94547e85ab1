"""outbox: one row per transaction, its messages packed in one column

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 03:00:00

Rows waiting at upgrade time are kept: each becomes a row of one message.
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Both shapes' columns, for moving rows between them (``created`` passes through untouched).
_OUTBOX = sa.table(
    "outbox",
    sa.column("id", sa.Integer),
    sa.column("owner", sa.String),
    sa.column("created"),
    sa.column("subject", sa.String),
    sa.column("msg_id", sa.String),
    sa.column("payload", sa.LargeBinary),
    sa.column("messages", sa.LargeBinary),
)


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("messages", sa.LargeBinary(), nullable=True))
    outbox = _OUTBOX
    conn = op.get_bind()
    for row_id, subject, msg_id, payload in conn.execute(
        sa.select(outbox.c.id, outbox.c.subject, outbox.c.msg_id, outbox.c.payload)
    ).all():
        packed = json.dumps([[subject, msg_id, bytes(payload).decode()]]).encode()
        conn.execute(outbox.update().where(outbox.c.id == row_id).values(messages=packed))
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.alter_column("messages", existing_type=sa.LargeBinary(), nullable=False)
        batch_op.drop_column("subject")
        batch_op.drop_column("msg_id")
        batch_op.drop_column("payload")


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subject", sa.String(length=1024), nullable=True))
        batch_op.add_column(sa.Column("msg_id", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("payload", sa.LargeBinary(), nullable=True))
    outbox = _OUTBOX
    conn = op.get_bind()
    for row_id, owner, created, packed in conn.execute(
        sa.select(outbox.c.id, outbox.c.owner, outbox.c.created, outbox.c.messages)
    ).all():
        conn.execute(outbox.delete().where(outbox.c.id == row_id))
        for subject, msg_id, payload in json.loads(bytes(packed)):
            conn.execute(
                outbox.insert().values(
                    owner=owner,
                    created=created,
                    subject=subject,
                    msg_id=msg_id,
                    payload=payload.encode(),
                    messages=b"[]",  # the column goes below; until then it may not be NULL
                )
            )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("messages")
        batch_op.alter_column("subject", existing_type=sa.String(length=1024), nullable=False)
        batch_op.alter_column("msg_id", existing_type=sa.String(length=255), nullable=False)
        batch_op.alter_column("payload", existing_type=sa.LargeBinary(), nullable=False)
