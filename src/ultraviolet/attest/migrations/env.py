"""Alembic environment: migrations run on the connection store.upgrade hands over."""

from __future__ import annotations

from alembic import context

from ultraviolet.attest.store import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through ultraviolet.attest.store.upgrade")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
