"""Alembic migration environment of the gallery store; `service.store` runs it on open."""
