"""Deleting a waiting run races an agent's claim: the claim wins.

On PostgreSQL the clean-up's read takes no lock, so a run read as Scheduled
may be claimed before the delete; the delete is conditional on the version
it read (flowbus_services/state/cleanup.py).
"""

from __future__ import annotations

from sqlmodel import select

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.db.engine import Database
from flowbus.db.tables import FlowRun
from flowbus.runtime.outbox import OutboxRelay
from flowbus.settings import Settings
from flowbus.states import StateType
from flowbus_services.state.cleanup import delete_as_read
from tests.helpers import register, unique


async def test_a_run_claimed_after_the_read_is_not_deleted(stack: Settings, client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f")
    claimed_id, waiting_id = await client.create_flow_run(flow.id), await client.create_flow_run(flow.id)
    db = Database(stack.resolved_database_url())
    # Its events stay in the outbox: the running state service's sweep publishes them.
    OutboxRelay(subjects.Service.STATE, db)
    try:
        async with db.read_session() as session:
            read = {r.id: r for r in (await session.exec(select(FlowRun))).all()}
        await client.set_flow_run_state(claimed_id, 1, StateType.SUBMITTED, agent_id="a1")
        async with db.write_session() as session:
            assert not await delete_as_read(session, read[claimed_id], "test")
            assert await delete_as_read(session, read[waiting_id], "test")
    finally:
        await db.dispose()
    claimed = await client.get_flow_run(claimed_id)
    assert (claimed.run.state.type, claimed.run.version) == (StateType.SUBMITTED, 2)
    assert {r.id for r in await client.get_flow_runs(flow_id=flow.id)} == {claimed_id}
