"""The SQL surface as code: every view and function of the database, one folder each, one file per version.

Layout::

    db/sql/<object>/<revision>.sql   the complete text of <object> as of Alembic revision <revision>:
                                     its CREATE OR REPLACE statement and the GRANTs that go with it
    db/sql/SHA256SUMS                the hash of every file: a released version never changes

The newest file of a folder is the object's current definition; what the service relies on is there and
nowhere else. A migration applies a definition by revision: ``op.execute(sql.statement("search_photos",
at=revision))`` runs the newest version that is not newer than ``at``; a downgrade runs the same call with
``at=down_revision`` and gets the text the previous revision left. Revisions 0001-0006 predate this folder
and carry their SQL inline; the files named after them hold the state they left (``pg_get_functiondef`` of a
database migrated to 0006), so that 0007's downgrade restores it exactly.

Why versioned files and not alembic_utils' replaceable entities (``PGFunction``/``PGView``), which keep
the current text in code and let ``alembic revision --autogenerate`` write migrations that embed it
(tried with Alembic 1.20 here, alembic_utils 0.8.8):

- a migration must replay identically on a fresh database forever. Here that holds by construction: a
  migration names a revision, and the files up to that revision are frozen (``SHA256SUMS``, checked on
  every load and by the tests). A change is a new file, so ``git log db/sql/search_photos/`` is the object's
  history and ``python -m db.sql diff search_photos`` shows the last change;
- ``PGView`` cannot express ``WITH (security_barrier)`` (its parser takes ``searchable_photos WITH`` for
  the view's name), and its replace falls back to DROP VIEW + CREATE VIEW on any error, which silently drops
  the reader role's grant. Grants on functions are no entity at all there, and the reader role's EXECUTE
  grants (and the REVOKE from PUBLIC) are part of this surface's contract: here they sit in the same file;
- autogenerate needs a live database at head and wants every trigger and table grant registered, or it
  proposes to drop them; the project writes its migrations by hand, and the files are plain SQL that psql
  runs as they are.

Adding a search filter (or any change to a view or function): copy the newest file to the next revision
(``python -m db.sql new search_photos 0008``), edit it, run ``python -m db.sql freeze``, and write migration
0008 that applies it with ``at=revision`` and restores it with ``at=down_revision``. A change to the
visibility rule itself is a change to ``photo_is_visible`` alone.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from sqlalchemy import TextClause, text

SQL_DIR = Path(__file__).resolve().parent
MANIFEST = SQL_DIR / "SHA256SUMS"
_REVISION = re.compile(r"^\d{4}$")


class DefinitionError(RuntimeError):
    """A definition is missing, or its file is not the one the migrations were written against."""


def names() -> list[str]:
    """Every object with definitions, in name order."""
    return sorted(p.name for p in SQL_DIR.iterdir() if p.is_dir() and any(p.glob("*.sql")))


def versions(name: str) -> list[str]:
    """The revisions that define `name`, oldest first."""
    folder = SQL_DIR / name
    found = sorted(p.stem for p in folder.glob("*.sql") if _REVISION.match(p.stem))
    if not found:
        raise DefinitionError(f"no definition of {name!r} in {SQL_DIR}")
    return found


def path(name: str, at: str) -> Path:
    """The file of `name` as of revision `at`: its newest version that is not newer than `at`."""
    if not _REVISION.match(at):
        raise DefinitionError(f"revision must be four digits, got {at!r}")
    eligible = [v for v in versions(name) if v <= at]
    if not eligible:
        raise DefinitionError(f"{name!r} has no definition as of revision {at} (its first is {versions(name)[0]})")
    return SQL_DIR / name / f"{eligible[-1]}.sql"


def definition(name: str, at: str) -> str:
    """The SQL text of `name` as of revision `at`, checked against SHA256SUMS."""
    file = path(name, at)
    data = file.read_bytes()
    key = _key(file)
    expected = read_manifest().get(key)
    if expected is None:
        raise DefinitionError(f"{key} is not in {MANIFEST.name}: once its text is final, run `python -m db.sql freeze`")
    if hashlib.sha256(data).hexdigest() != expected:
        raise DefinitionError(
            f"{key} changed after it was frozen: migrations must replay identically, so a released definition "
            f"never changes. Put the new text in a new version (`python -m db.sql new {name} <revision>`) and a "
            "migration that applies it."
        )
    return data.decode("utf-8")


def statement(name: str, at: str) -> TextClause:
    """The definition as a statement for ``op.execute``; colons are escaped so that no ``:word`` is a bind."""
    return text(definition(name, at).replace(":", "\\:"))


def current(name: str) -> tuple[str, str]:
    """The newest revision of `name` and its text."""
    newest = versions(name)[-1]
    return newest, definition(name, newest)


def read_manifest() -> dict[str, str]:
    """SHA256SUMS as {relative path: sha256}."""
    if not MANIFEST.exists():
        return {}
    entries: dict[str, str] = {}
    for line in MANIFEST.read_text().splitlines():
        if line.strip():
            digest, _, key = line.partition("  ")
            entries[key.strip()] = digest.strip()
    return entries


def problems() -> list[str]:
    """Files that differ from SHA256SUMS, are missing from it, or are listed but gone (empty: all frozen)."""
    manifest = read_manifest()
    found = {_key(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in _files()}
    issues = [f"{key}: not frozen yet (run `python -m db.sql freeze`)" for key in sorted(found.keys() - manifest)]
    issues += [f"{key}: listed in {MANIFEST.name} but missing" for key in sorted(manifest.keys() - found)]
    issues += [
        f"{key}: changed after it was frozen (a released definition never changes: add a new version)"
        for key in sorted(found.keys() & manifest.keys())
        if found[key] != manifest[key]
    ]
    return issues


def freeze(rehash: frozenset[str] = frozenset()) -> list[str]:
    """Add every new file to SHA256SUMS and return the keys added or rehashed.

    A listed file whose text differs is refused unless it is named in `rehash` (a version that no database
    has applied yet: one still being written on a branch).
    """
    manifest = read_manifest()
    changed: list[str] = []
    refused: list[str] = []
    for file in _files():
        key = _key(file)
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        if manifest.get(key) == digest:
            continue
        if key in manifest and key not in rehash:
            refused.append(key)
            continue
        manifest[key] = digest
        changed.append(key)
    if refused:
        raise DefinitionError(
            "changed after they were frozen (add a new version instead; --rehash only for a version no database "
            "has applied): " + ", ".join(refused)
        )
    MANIFEST.write_text("".join(f"{manifest[key]}  {key}\n" for key in sorted(manifest)))
    return changed


def _files() -> list[Path]:
    return sorted(p for p in SQL_DIR.glob("*/*.sql") if _REVISION.match(p.stem))


def _key(file: Path) -> str:
    return file.relative_to(SQL_DIR).as_posix()
