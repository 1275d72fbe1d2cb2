"""Alembic migrations of the verifier's store (run by store.upgrade, never by hand)."""
