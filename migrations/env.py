"""Alembic environment: runs the revisions in migrations/versions against WITHSENSE_DATABASE_URL
(or the URL passed in the Alembic config by `withsense migrate` and the tests)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from core.settings import get_settings
from db.engine import normalise_database_url
from db.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or get_settings().database_url
    if not url:
        raise RuntimeError("no database URL: set WITHSENSE_DATABASE_URL or run `withsense up`")
    return normalise_database_url(url)


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
