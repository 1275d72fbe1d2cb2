"""The private PostgreSQL cluster now lives in ultraviolet.testbed.pgserver (the benchmarks use
it too); re-exported here for the tests that import it from beside them."""

from ultraviolet.testbed.pgserver import PostgresServer, postgres_bindir

__all__ = ["PostgresServer", "postgres_bindir"]
