"""Alembic migration environment of the gallery store; `service.gallery.store` runs it on open."""
