"""`python -m db.sql`: list the SQL surface, start a new version of a definition, freeze, diff two versions."""

from __future__ import annotations

import argparse
import difflib
import shutil
import sys

from db import sql


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m db.sql", description=sql.__doc__.splitlines()[0] if sql.__doc__ else ""
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="every object and its versions")
    new = commands.add_parser("new", help="copy the newest version of an object to a new revision, to edit")
    new.add_argument("name")
    new.add_argument("revision", help="the revision of the migration that will apply it, e.g. 0008")
    freeze = commands.add_parser("freeze", help="record the hash of every new version in SHA256SUMS")
    freeze.add_argument("--rehash", action="append", default=[], metavar="NAME/REVISION.sql")
    diff = commands.add_parser("diff", help="what changed between two versions (default: the last two)")
    diff.add_argument("name")
    diff.add_argument("old", nargs="?")
    diff.add_argument("new", nargs="?")
    args = parser.parse_args(argv)

    try:
        if args.command == "list":
            for name in sql.names():
                print(f"{name}: {' '.join(sql.versions(name))}")
        elif args.command == "new":
            sql.path(args.name, args.revision)  # the revision is four digits and the object exists
            target = sql.SQL_DIR / args.name / f"{args.revision}.sql"
            newest = sql.versions(args.name)[-1]
            if args.revision <= newest:
                raise sql.DefinitionError(f"{args.name} already has version {newest}; a new one must be later")
            shutil.copyfile(sql.SQL_DIR / args.name / f"{newest}.sql", target)
            print(f"{target.relative_to(sql.SQL_DIR.parents[1])}: edit it, then `python -m db.sql freeze`")
        elif args.command == "freeze":
            for key in sql.freeze(frozenset(args.rehash)):
                print(f"frozen {key}")
        else:
            found = sql.versions(args.name)
            old = args.old or (found[-2] if len(found) > 1 else found[-1])
            new_version = args.new or found[-1]
            before = (sql.SQL_DIR / args.name / f"{old}.sql").read_text().splitlines(keepends=True)
            after = (sql.SQL_DIR / args.name / f"{new_version}.sql").read_text().splitlines(keepends=True)
            sys.stdout.writelines(
                difflib.unified_diff(before, after, f"{args.name}/{old}.sql", f"{args.name}/{new_version}.sql")
            )
    except (sql.DefinitionError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
