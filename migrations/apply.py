"""Run the Alembic migrations from code (used by `withsense migrate`, `withsense up` and the tests).

It lives beside the migrations, above ``db``: the migrations import ``db`` (its models, the SQL surface), so
the code that applies them cannot sit inside ``db`` without an import going back up the layers.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic configuration for this folder's migrations, on ``database_url`` (default: the settings')."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if database_url:
        # '%' must be doubled for ConfigParser interpolation.
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    """Apply the migrations up to ``revision``."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str | None = None, revision: str = "base") -> None:
    """Revert the migrations down to ``revision``."""
    command.downgrade(alembic_config(database_url), revision)
