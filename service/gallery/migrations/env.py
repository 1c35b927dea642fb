"""Alembic environment for the gallery store.

`service.gallery.store` runs the upgrade itself, inside a transaction on a connection of its own engine
(so SQLite gets its pragmas and PostgreSQL its advisory lock), and hands that connection over
in `config.attributes["connection"]`. There is no alembic.ini and no offline (SQL script) mode.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run the gallery migrations through service.gallery.store.Store.open (service.gallery.database.Database.migrate)"
    )

context.configure(connection=connection)
with context.begin_transaction():
    context.run_migrations()
