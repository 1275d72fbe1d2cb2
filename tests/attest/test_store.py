"""The store's schema comes from the Alembic migrations and matches the ORM models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from ultraviolet.attest.store import Base, Store, database_url, upgrade


def test_migrations_create_exactly_the_orm_schema_and_rerun_cleanly(store: Store) -> None:
    upgrade(store.engine)  # a second worker starting: nothing to do, no error
    with store.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        version = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    assert differences == []
    assert version == "0001"
    tables = set(inspect(store.engine).get_table_names())
    assert {"nodes", "nonces", "evidence", "alert_outbox", "releases", "enrolments"} <= tables


def test_database_argument_is_a_path_or_url() -> None:
    assert database_url("verifier.db").startswith("sqlite:////")
    assert database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert database_url("sqlite:///x.db") == "sqlite:///x.db"
