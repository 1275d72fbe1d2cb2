"""The verifier's store: SQLAlchemy 2 ORM tables and the engine, SQLite or PostgreSQL.

Every worker is stateless; all that must survive a restart lives here: nodes, pending
enrolments, nonces, evidence records with their findings, accepted releases and the alert
outbox. Times are stored as naive UTC and read back as aware UTC (SQLite keeps no zone).
The schema is created and upgraded by Alembic (migrations/), never by `create_all`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Boolean,
    Connection,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.pool import QueuePool
from sqlalchemy.types import TypeDecorator

from ultraviolet.errors import AttestationError

MIGRATIONS = Path(__file__).with_name("migrations")
# Any fixed number: PostgreSQL advisory lock key that serialises schema upgrades of workers.
_MIGRATION_LOCK = 0x75766174


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, naive UTC in the database."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC)


class Base(DeclarativeBase):
    pass


class Node(Base):
    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    ek_public: Mapped[bytes] = mapped_column(LargeBinary)  # TPM2B_PUBLIC
    ek_fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    ak_public: Mapped[bytes] = mapped_column(LargeBinary)  # TPM2B_PUBLIC
    ak_name: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(16), index=True)
    release: Mapped[str | None] = mapped_column(String(256))
    enrolled_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    state_changed_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    last_evidence_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    last_evidence_id: Mapped[int | None] = mapped_column(Integer)


class ApprovedEk(Base):
    """EKs an administrator approved for enrolment (SHA-256 of the EK's SubjectPublicKeyInfo)."""

    __tablename__ = "approved_eks"

    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    approved_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class Enrolment(Base):
    """A credential challenge sent to a node's TPM; activated once with the right secret."""

    __tablename__ = "enrolments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(128), index=True)
    ek_public: Mapped[bytes] = mapped_column(LargeBinary)
    ek_certificate: Mapped[bytes | None] = mapped_column(LargeBinary)
    ek_fingerprint: Mapped[str] = mapped_column(String(64))
    ak_public: Mapped[bytes] = mapped_column(LargeBinary)
    ak_name: Mapped[bytes] = mapped_column(LargeBinary)
    secret_sha256: Mapped[bytes] = mapped_column(LargeBinary)  # never the secret itself
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    status: Mapped[str] = mapped_column(String(16))  # pending, activated, failed


class Nonce(Base):
    __tablename__ = "nonces"

    value: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(128), index=True)
    issued_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, index=True)
    used_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)


class EvidenceRecord(Base):
    """One evidence submission as received (raw JSON) with the appraisal's findings."""

    __tablename__ = "evidence"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), index=True)
    received_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(16))
    release: Mapped[str | None] = mapped_column(String(256))
    findings: Mapped[str] = mapped_column(Text)  # JSON list of Finding.to_json()


class Release(Base):
    """An accepted release: the reference.json its build wrote."""

    __tablename__ = "releases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(128), primary_key=True)
    document: Mapped[bytes] = mapped_column(LargeBinary)
    uploaded_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class AlertState(Base):
    """Whether the alert of one (node, check) is firing: alerts are sent on changes only."""

    __tablename__ = "alert_state"

    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(128), index=True)
    check: Mapped[str] = mapped_column(String(64))
    firing: Mapped[bool] = mapped_column(Boolean)
    severity: Mapped[str] = mapped_column(String(16))  # as it fired; resolving keeps it
    starts_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    changed_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class OutboxAlert(Base):
    """One alert to deliver to one sink; written in the transaction that caused it."""

    __tablename__ = "alert_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    sink: Mapped[str] = mapped_column(String(16))  # webhook, alertmanager
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)  # JSON of the alert (see alerts.py)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, index=True)
    lease_until: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, index=True)
    last_error: Mapped[str | None] = mapped_column(Text)


def table(model: type[Base]) -> Table:
    """The Core table of a model, for the hot paths' prebuilt statements."""
    return Base.metadata.tables[model.__tablename__]


def database_url(database: str) -> str:
    """A SQLAlchemy URL, or a file path meaning SQLite."""
    if "://" in database:
        if database.startswith("postgresql://"):
            return "postgresql+psycopg://" + database.removeprefix("postgresql://")
        return database
    return f"sqlite:///{Path(database).resolve()}"


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    # WAL lets readers run beside the writer; the busy timeout makes writers queue, not fail.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _begin_immediate(connection: Connection) -> None:
    # Straight to the driver: this runs for every transaction, and exec_driver_sql's events,
    # result object and cursor bookkeeping cost more than the statement itself.
    driver = connection.connection.driver_connection
    assert driver is not None
    driver.execute("BEGIN IMMEDIATE").close()


def open_engine(database: str) -> Engine:
    url = database_url(database)
    if url.startswith("sqlite"):
        # SQLite has one writer at a time, and every transaction here takes the write lock:
        # one pooled connection makes threads queue in order instead of sleep-polling the
        # database lock (whose busy handler backs off up to 100 ms: long tail latencies).
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=QueuePool,
            pool_size=1,
            max_overflow=0,
            pool_timeout=60,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        # Python's sqlite3 opens transactions lazily; BEGIN IMMEDIATE takes the write lock at
        # the start, so the single-use nonce update cannot interleave with another writer.
        event.listen(engine, "begin", _begin_immediate)
        event.listen(
            engine,
            "connect",
            lambda dbapi_connection, record: setattr(dbapi_connection, "isolation_level", None),
        )
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (several workers may call this at once)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK}
                )
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except Exception as exc:
        raise AttestationError(f"cannot upgrade the database schema: {exc}") from exc


class Store:
    """The engine and a session factory; sessions are short and one per request."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.session = sessionmaker(engine, expire_on_commit=False)
        # For work that is one statement, or reads needing no snapshot across statements: on
        # PostgreSQL without the BEGIN and COMMIT round trips (each statement commits, durably,
        # before it returns). SQLite keeps its transactions: its driver connection is in manual
        # mode with BEGIN IMMEDIATE (open_engine), which resetting AUTOCOMMIT would undo.
        self.autocommit = engine
        if engine.dialect.name == "postgresql":
            self.autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    @classmethod
    def open(cls, database: str, *, migrate: bool = True) -> Store:
        engine = open_engine(database)
        if migrate:
            upgrade(engine)
        return cls(engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()
