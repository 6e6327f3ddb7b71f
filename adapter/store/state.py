"""Small named facts in the store (adapter_state): the mapping version, the EHR's capabilities."""

from sqlalchemy import Connection, select, update

from adapter.store.tables import adapter_state


def read_state(connection: Connection, name: str, share_lock: bool = False) -> str | None:
    """The fact's value; with `share_lock`, its row share-locked until the transaction ends (a
    writer of the fact waits for it)."""
    query = select(adapter_state.c.value).where(adapter_state.c.name == name)
    if share_lock:
        query = query.with_for_update(read=True)
    return connection.execute(query).scalar_one_or_none()


def write_state(connection: Connection, name: str, value: str) -> None:
    updated = connection.execute(
        update(adapter_state).where(adapter_state.c.name == name).values(value=value)
    )
    if not updated.rowcount:
        connection.execute(adapter_state.insert().values(name=name, value=value))


def replace_state(connection: Connection, name: str, old: str, new: str) -> bool:
    """Write the fact's new value if it still holds `old`: False when another process changed
    it first."""
    updated = connection.execute(
        update(adapter_state)
        .where(adapter_state.c.name == name, adapter_state.c.value == old)
        .values(value=new)
    )
    return bool(updated.rowcount)
