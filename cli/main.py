"""`withsense`: the operator's command line."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from tqdm import tqdm
from typer.core import TyperGroup

if TYPE_CHECKING:
    from typer._click.core import Context as ClickContext  # the Context class TyperGroup.invoke is typed with

    from core.settings import Settings
    from db.photos import ModelCoverage
    from services.photos import StatusReport


class StackDown(RuntimeError):
    """Postgres or Redis cannot be reached: the command says so in one line and exits 1."""


def _why_unreachable(exc: BaseException) -> str | None:
    """The one-line reason when `exc` (or what caused it) means Postgres or Redis cannot be reached, else None."""
    import psycopg
    import redis.exceptions
    import sqlalchemy.exc
    from kombu.exceptions import OperationalError as BrokerError

    from core.embedding import ModelUnavailableError
    from db.engine import DatabaseNotConfigured
    from services.queue import QueueUnavailable

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ModelUnavailableError):  # its message says how to point at a local copy
            return f"model: unavailable \u2014 {seen}"
        first_line = (str(seen).strip().splitlines() or [type(seen).__name__])[0]
        if isinstance(seen, StackDown | DatabaseNotConfigured | QueueUnavailable):
            return first_line
        if isinstance(seen, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            orig = seen.orig if seen.orig is not None else seen
            return f"Postgres cannot be reached: {(str(orig).strip().splitlines() or [type(orig).__name__])[0]}"
        if isinstance(seen, psycopg.OperationalError):
            return f"Postgres cannot be reached: {first_line}"
        if isinstance(seen, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | BrokerError):
            return f"Redis cannot be reached: {first_line}"
        seen = seen.__cause__ or seen.__context__
    return None


class _OneLineWhenStackIsDown(TyperGroup):
    """Runs every command (and sub-command): Postgres or Redis unreachable (or the model not loadable) is one line
    on stderr and exit code 1, never a traceback, whichever command met it and wherever (a query, a queued task,
    the engine's set-up). Any other exception is a bug and keeps its traceback."""

    def invoke(self, ctx: ClickContext) -> object:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):  # the command's own answer (usage errors too)
            raise
        except Exception as exc:
            reason = _why_unreachable(exc)
            if reason is None:
                raise
            hint = (
                ""
                if "withsense up" in reason or reason.startswith("model:")
                else " (is the stack running? start it with `withsense up`, or set WITHSENSE_DATABASE_URL and "
                "WITHSENSE_BROKER_URL)"
            )
            typer.echo(f"error: {reason}{hint}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_OneLineWhenStackIsDown,
    help="With Sense photo search: run the stack, ingest photos, search, evaluate.",
    no_args_is_help=True,
)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp"}


@app.callback()
def _use_running_stack(ctx: typer.Context) -> None:
    """Before any command but `up`: fill unset URLs from the running `withsense up` (WITHSENSE_HOME/stack.env).

    This runs before a command imports anything that reads settings at import time (the Celery app reads the
    broker URL when it is created), so every command talks to the same Postgres and Redis as the stack.
    """
    if ctx.invoked_subcommand == "up":
        return
    from cli.stack import load_env_file
    from core.settings import get_settings, reload_settings

    settings = get_settings()
    if not (settings.database_url and settings.broker_url) and load_env_file(settings.home):
        reload_settings()


def _settings() -> Settings:
    from core.settings import Settings, get_settings

    settings = get_settings()
    assert isinstance(settings, Settings)
    return settings


@app.command()
def up(
    workers: Annotated[int, typer.Option(help="worker processes (each loads the model)")] = 1,
    flower: Annotated[bool, typer.Option(help="start Flower on 127.0.0.1:5555")] = True,
) -> None:
    """Run the whole local stack in the foreground: Postgres, Redis, migrations, worker, beat, API, Flower.

    Every process is supervised: one that exits is restarted with backoff; one that keeps exiting stops the stack.
    """
    from cli.stack import FLOWER_USER, LocalStack
    from core.settings import get_settings

    received: list[int] = []

    def _terminate(signum: int, _frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt  # SIGTERM while starting: stop what already runs, as Ctrl-C does

    def _stop_after(message: str) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second one must not cut the clean-up short
            signal.signal(signum, signal.SIG_IGN)
        typer.echo(message, err=True)
        stack.stop(echo=typer.echo)

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)  # a closed terminal: the children (own sessions) do not get it
    stack = LocalStack(get_settings(), worker_concurrency=workers, with_flower=flower)
    model_problem = _model_problem(stack.settings)
    if model_problem:  # said at once, and again in the summary: the stack still starts (uploads wait)
        typer.echo(model_problem)
    try:
        stack.start(echo=typer.echo)
        settings = stack.settings
        home = settings.home.resolve()
        typer.echo("")
        typer.echo(f"  API      {stack.api_url}  (docs: {stack.api_url}/docs)")
        if flower:
            typer.echo(
                f"  Flower   http://{settings.api_host}:{settings.flower_port}  user {FLOWER_USER}, password "
                f"(also in {home / 'flower.password'}):"
            )
            typer.echo(f"    {stack.flower_password}")
        typer.echo(f"  Postgres {_without_password(stack.env['WITHSENSE_DATABASE_URL'])}")
        if stack.reader_url:
            typer.echo(f"           reader role: {_without_password(stack.reader_url)}")
            typer.echo(f"           passwords in {home / 'pg.password'} and {home / 'pg-reader.password'}")
        typer.echo(f"  Redis    {stack.env['WITHSENSE_BROKER_URL']}")
        typer.echo(f"  Data     {home}  (URLs with passwords for other shells: {home / 'stack.env'})")
        typer.echo(f"  Admin API key (also in {home / 'admin.key'}):")
        typer.echo(f"    {stack.admin_key}")
        if model_problem:
            typer.echo(f"  {model_problem}")
            typer.echo(
                "Up without a model: uploads are accepted and wait as pending, searches answer 503. "
                "Press Ctrl-C to stop."
            )
        else:
            typer.echo(f"  Model    {settings.model}" + (f" + {settings.text_model}" if settings.text_model else ""))
            typer.echo("Ready. Press Ctrl-C to stop.")
    except KeyboardInterrupt:
        _stop_after("interrupted while starting; stopping what was started ...")
        raise typer.Exit(128 + (received[-1] if received else signal.SIGINT)) from None  # 143 SIGTERM, 130 Ctrl-C
    except Exception as exc:
        _stop_after(f"error: the stack did not start: {exc}")
        raise typer.Exit(1) from exc
    raise typer.Exit(stack.run_forever(echo=typer.echo))


def _model_problem(settings: Settings) -> str | None:
    """One line when the configured model cannot be loaded (checked without loading it), else None."""
    from core.embedding import model_unavailable_reason

    cache = str(settings.model_cache_dir) if settings.model_cache_dir else None
    for setting, name, revision in (
        ("WITHSENSE_MODEL", settings.model, settings.model_revision),
        ("WITHSENSE_TEXT_MODEL", settings.text_model, None),
    ):
        reason = model_unavailable_reason(name, cache, revision) if name else None
        if reason:
            return f"model: unavailable \u2014 {reason}; set {setting}=/path/to/model"
    return None


def _without_password(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@app.command()
def migrate(revision: Annotated[str, typer.Argument(help="target revision")] = "head") -> None:
    """Apply the database migrations (Alembic) up to `revision`."""
    from migrations.apply import upgrade

    settings = _settings()
    if not settings.database_url:
        typer.echo("error: WITHSENSE_DATABASE_URL is not set (or run `withsense up`)", err=True)
        raise typer.Exit(2)
    upgrade(settings.database_url, revision)
    typer.echo(f"database migrated to {revision}")
    from services.photos import prepare_storage

    typer.echo(f"photo store ready ({prepare_storage()})")


@app.command()
def ingest(
    directory: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="folder to scan recursively")],
    photographer: Annotated[str | None, typer.Option(help="photographer recorded on every photo")] = None,
    wait: Annotated[bool, typer.Option(help="wait until every photo is indexed or failed")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait with --wait")] = 3600.0,
    depicts_minor: Annotated[
        bool | None,
        typer.Option(
            "--depicts-minor/--no-minor", help="the photographer's declaration for every photo: shows a child (or not)"
        ),
    ] = None,
    parental_consent: Annotated[
        bool | None,
        typer.Option("--parental-consent/--no-parental-consent", help="the parents consented to publication"),
    ] = None,
) -> None:
    """Register every image under DIRECTORY and queue it for indexing. Running it twice adds nothing twice."""
    from core.images import ImageRejected
    from services.health import broker_problem, database_problem
    from services.intake import register_photo
    from services.queue import QueueUnavailable, enqueue_ingest_batch

    settings = _settings()
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        typer.echo(f"no images under {directory} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        raise typer.Exit(0)
    for problem in (database_problem(), broker_problem()):  # before the progress bar: one line, nothing registered
        if problem:
            raise StackDown(problem)
    counts = {"queued": 0, "duplicate": 0, "rejected": 0}
    queued: list[uuid.UUID] = []
    batch: list[uuid.UUID] = []

    def flush() -> None:
        # Photos go to the workers in batches: one forward pass per batch.
        try:
            enqueue_ingest_batch(batch)
        except QueueUnavailable as exc:
            typer.echo(
                f"error: {exc}; {len(batch)} registered photos stay pending (the reconciler will queue them)", err=True
            )
            raise typer.Exit(1) from exc
        batch.clear()

    spool = settings.home / "tmp"
    spool.mkdir(parents=True, exist_ok=True)
    with tqdm(files, desc="registering", unit="photo") as bar:
        for path in bar:
            fd, tmp_name = tempfile.mkstemp(dir=spool, prefix=".ingest-")
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                shutil.copyfile(path, tmp)
                data_hash = hashlib.sha256(tmp.read_bytes()).hexdigest()
                result = register_photo(
                    settings,
                    tmp,
                    sha256=data_hash,
                    size=tmp.stat().st_size,
                    original_name=path.name,
                    photographer=photographer,
                    enqueue=False,
                    depicts_minor=depicts_minor,
                    parental_consent=parental_consent,
                    actor="cli:ingest",
                )
            except ImageRejected as exc:
                counts["rejected"] += 1
                tqdm.write(f"skipped {path}: {exc.reason}")
                continue
            finally:
                tmp.unlink(missing_ok=True)
            if result.created:
                counts["queued"] += 1
                queued.append(result.photo.id)
                batch.append(result.photo.id)
                if len(batch) >= settings.ingest_batch_size:
                    flush()
            else:
                counts["duplicate"] += 1
            bar.set_postfix(counts)
    if batch:
        flush()
    typer.echo(f"{counts['queued']} queued, {counts['duplicate']} already known, {counts['rejected']} rejected")
    if wait and queued:
        _wait_for_indexing(queued, timeout)


def _wait_for_indexing(photo_ids: list[uuid.UUID], timeout: float) -> None:
    """Follow these photos until each is indexed or failed, saying why those that wait or failed do (the reason
    stored on them: the model cannot be loaded, a file cannot be decoded, ...) as soon as one appears."""
    from services.photos import status_report

    deadline = time.monotonic() + timeout
    shown: set[tuple[str, str]] = set()
    with tqdm(total=len(photo_ids), desc="indexing", unit="photo") as bar:
        while True:
            report = status_report(photo_ids)
            counts = report.counts
            done = counts.get("indexed", 0) + counts.get("failed", 0)
            bar.update(done - bar.n)
            bar.set_postfix(indexed=counts.get("indexed", 0), failed=counts.get("failed", 0))
            for group in report.reasons:
                if group.status != "failed" and (group.status, group.reason) not in shown:
                    shown.add((group.status, group.reason))
                    tqdm.write(f"{group.count} {group.status}: {_short(group.reason)}")
            if done >= len(photo_ids):
                break
            if time.monotonic() > deadline:
                bar.close()
                typer.echo(f"gave up waiting: {len(photo_ids) - done} photos not indexed yet", err=True)
                _print_report(report, err=True)
                typer.echo("once the cause is fixed: `withsense redrive --pending` queues them again", err=True)
                raise typer.Exit(1)
            time.sleep(1.0)
    _print_report(report)


def _short(reason: str, width: int = 300) -> str:
    line = (reason.strip().splitlines() or [""])[0]
    return line if len(line) <= width else line[: width - 1] + "\u2026"


def _print_report(report: StatusReport, *, err: bool = False) -> None:
    """Photos by status, then each stored reason with how many photos in which status carry it."""
    counts = report.counts
    typer.echo(
        "photos: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("pending", "processing", "indexed", "failed")),
        err=err,
    )
    for group in report.reasons:
        typer.echo(f"  {group.count} {group.status}: {_short(group.reason)}", err=err)
    if report.other_reasons:
        typer.echo(f"  {report.other_reasons} more with other reasons (`GET /v1/photos/{{id}}` shows each)", err=err)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="what the photo should show")],
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="results per page")] = 10,
    region: Annotated[str | None, typer.Option(help="viewer region (ISO code)")] = None,
    photographer: Annotated[
        list[str] | None, typer.Option("--photographer", help="only this photographer's photos (repeat: any)")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="only photos with this tag (repeat: all)")] = None,
    after: Annotated[str | None, typer.Option("--after", help="taken at or after (ISO date or time)")] = None,
    before: Annotated[str | None, typer.Option("--before", help="taken before (ISO date or time)")] = None,
    camera: Annotated[list[str] | None, typer.Option("--camera", help="only this camera (repeat: any)")] = None,
    orientation: Annotated[
        list[str] | None, typer.Option("--orientation", help="landscape, portrait or square (repeat: any)")
    ] = None,
    mode: Annotated[str, typer.Option("--mode", help="hybrid, semantic or keyword")] = "hybrid",
    min_score: Annotated[
        float | None, typer.Option("--min-score", min=-1, max=1, help="drop results below this cosine similarity")
    ] = None,
    sort: Annotated[str, typer.Option("--sort", help="relevance or newest")] = "relevance",
    negative: Annotated[list[str] | None, typer.Option("--not", help="steer away from this (repeat)")] = None,
    page: Annotated[int, typer.Option("--page", min=1, help="which page of k results")] = 1,
) -> None:
    """Print the photos that best match QUERY: the API's search (policy, region, model check, filters, pages)."""
    from services import search as search_service
    from services.errors import ServiceError
    from services.health import database_problem
    from services.photos import display_names

    _settings()
    viewer = region.strip().upper() if region else None
    problem = database_problem()  # before loading the model (seconds) only to find the database down
    if problem:
        raise StackDown(problem)
    _no_progress_bars()
    try:
        options = search_service.SearchOptions(
            filters=search_service.SearchFilters.parse(
                photographer=photographer,
                tag=tag,
                camera=camera,
                orientation=orientation,
                taken_after=after,
                taken_before=before,
            ),
            mode=mode,  # type: ignore[arg-type] # checked by SearchOptions
            min_score=min_score,
            sort=sort,  # type: ignore[arg-type]
        )
        query_parts = search_service.ComposedQuery(text=query, negative=tuple(negative or ()))
        with search_service.search_session() as session:  # a read replica when one is configured and healthy
            outcome = search_service.search_composed(session, query_parts, k, viewer, options)
            reached = 1
            while reached < page and not outcome.blocked and outcome.next_cursor is not None:
                # Later pages follow the cursors, as an API client does.
                options = dataclasses.replace(options, cursor=outcome.next_cursor)
                outcome = search_service.search_composed(session, query_parts, k, viewer, options)
                reached += 1
    except ServiceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if outcome.blocked:
        typer.echo(outcome.disclaimer)
        return
    if reached < page:
        typer.echo(f"no results on page {page}: the results end on page {reached}")
        return
    if not outcome.hits:
        typer.echo("no results (is anything indexed yet? see `withsense ingest`)")
        return
    names = display_names([hit.photo_id for hit in outcome.hits])
    typer.echo(f"{'rank':>4}  {'score':>6}  {'match':8}  {'photo id':36}  title / file name")
    for hit in outcome.hits:
        score = f"{hit.score:6.3f}" if hit.score is not None else "     -"
        title = names.get(hit.photo_id) or hit.title or ""
        typer.echo(f"{hit.rank:>4}  {score}  {hit.matched:8}  {hit.photo_id}  {title}")
    if outcome.next_cursor:
        typer.echo(f"(more: --page {page + 1})")


def _no_progress_bars() -> None:
    """Loading the model must not draw progress bars over a command's output (transformers' and the hub's)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


@app.command()
def redrive(
    photo_ids: Annotated[list[str] | None, typer.Argument(help="photo ids; none means every failed photo")] = None,
    pending: Annotated[
        bool,
        typer.Option(
            "--pending",
            help="queue again the photos left pending instead (e.g. once the model loads): attempts are kept",
        ),
    ] = False,
) -> None:
    """Send failed photos through indexing again, with a fresh attempt budget (or, with --pending, the pending)."""
    from services.photos import redrive as redrive_photos
    from services.photos import redrive_pending
    from services.queue import QueueUnavailable

    settings = _settings()
    try:
        wanted = [uuid.UUID(p) for p in photo_ids] if photo_ids else None
    except ValueError as exc:
        typer.echo(f"error: not a photo id: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        reset = redrive_pending(settings, wanted) if pending else redrive_photos(settings, wanted)
    except QueueUnavailable as exc:
        typer.echo(f"warning: {exc}; the reconciler will enqueue them (they are pending)", err=True)
        raise typer.Exit(1) from None
    if pending:
        typer.echo(f"{len(reset)} pending photos queued again")
    else:
        typer.echo(f"{len(reset)} failed photos sent back to indexing")


@app.command()
def reconcile(
    older_than: Annotated[int, typer.Option(help="seconds a photo may stay pending/processing")] = 900,
) -> None:
    """Re-enqueue photos whose task was lost (beat runs this every minute; this runs it now)."""
    from services.indexing import reconcile_stale_photos

    _settings()
    typer.echo(f"{reconcile_stale_photos(older_than)} stale photos re-enqueued")


@app.command()
def status() -> None:
    """Photos by indexing status, why those not indexed wait or failed, and which models cover the index."""
    from services import models as model_service
    from services.photos import status_report

    _settings()
    _print_report(status_report())
    _print_models(model_service.coverage())


def _print_models(models: list[ModelCoverage]) -> None:
    if not models:
        typer.echo("models: none registered yet (a worker registers its model when it indexes the first photo)")
    for m in models:
        state = "active" if m.active else "inactive"
        text = ", ".join(f"{t.label} (margin {t.margin:.2f})" for t in m.text_models) if m.text_models else "own tower"
        typer.echo(
            f"{state:8}  {m.name}@{m.revision}  {m.dimension}-d  covers {m.embedded}/{m.indexed} indexed photos  "
            f"text model: {text}"
        )


models_app = typer.Typer(
    help="Embedding models: which one serves search, and switching to a new one.", no_args_is_help=True
)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list() -> None:
    """Registered models, the active one, and how many indexed photos each has a vector for."""
    from services import models as model_service

    _settings()
    _print_models(model_service.coverage())


@models_app.command("activate")
def models_activate(
    name: Annotated[str, typer.Argument(help="the model's name as `withsense models list` shows it")],
    revision: Annotated[str | None, typer.Option(help="its revision (default: the newest registered)")] = None,
    force: Annotated[bool, typer.Option(help="activate although some indexed photos have no vector from it")] = False,
) -> None:
    """Switch search to another registered model, at once for every query (after `withsense reindex`)."""
    from services import models as model_service
    from services.errors import Conflict, NotFound

    _settings()
    try:
        label = model_service.activate(name, revision, force=force)
    except NotFound as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except Conflict as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(
        f"{label} is now the active model. Point every API and worker at it (WITHSENSE_MODEL), "
        "then restart them: an API on another model answers search with 503 until then."
    )
    active = next((m for m in model_service.coverage() if m.active), None)
    if active is not None and active.text_models:
        typer.echo(f"text models recorded for it: {', '.join(t.label for t in active.text_models)}")
    elif active is not None:
        typer.echo(
            "no text model is recorded for it yet: an API or worker with WITHSENSE_TEXT_MODEL checks its text "
            "model against it at start and records it when it agrees; one from another space refuses text search."
        )


@models_app.command("floor")
def models_floor(
    model: Annotated[str, typer.Argument(help="model name or folder, as `withsense models list` shows it")],
    value: Annotated[str, typer.Argument(help="cosine floor from -1 to 1 (`withsense eval` suggests one), or none")],
    revision: Annotated[str | None, typer.Option(help="the revision, when several are registered")] = None,
) -> None:
    """Set a model's default relevance floor: searches drop semantic matches below it unless they give min_score."""
    from services.errors import ServiceError
    from services.models import set_floor

    _settings()
    try:
        floor = None if value.strip().lower() in {"none", "off", ""} else float(value)
        label = set_floor(model, revision, floor)
    except ValueError:
        typer.echo(f"error: the floor must be a number from -1 to 1, or none; got {value!r}", err=True)
        raise typer.Exit(2) from None
    except ServiceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{label}: default floor {'none' if floor is None else f'{floor:g}'}")


metadata_app = typer.Typer(help="Photo metadata read from the files (capture time, camera, captions, keywords).")
app.add_typer(metadata_app, name="metadata")


@metadata_app.command("backfill")
def metadata_backfill(
    batch_size: Annotated[int, typer.Option(min=1, max=5000, help="photos per transaction")] = 200,
) -> None:
    """Read the metadata of photos indexed before the worker read it; what the uploader set is kept."""
    from services.metadata import backfill

    settings = _settings()
    with tqdm(desc="metadata", unit="photo") as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = backfill(settings, batch_size=batch_size, progress=progress)
    typer.echo(
        f"{result.read} photos read: {result.filled} gained metadata, {result.unreadable} files could not be read"
    )


embeddings_app = typer.Typer(
    help="The vectors' table: its partitions (the way to Citus) and its index kind (SCALING.md)."
)
app.add_typer(embeddings_app, name="embeddings")


@embeddings_app.command("partition")
def embeddings_partition(
    partitions: Annotated[
        int | None,
        typer.Option(min=1, max=256, help="hash partitions of photo id (default WITHSENSE_EMBEDDING_PARTITIONS)"),
    ] = None,
) -> None:
    """Rebuild photo_embeddings as hash partitions of photo id, each with its own HNSW index (1: one table).

    One transaction: searches and vector writes wait until it ends (about one HNSW build per model).
    """
    from services import partitions as partition_service

    settings = _settings()
    wanted = partitions if partitions is not None else settings.embedding_partitions
    result = partition_service.repartition(wanted)
    if result.before == result.after:
        typer.echo(f"photo_embeddings already has {result.after} partition(s)")
    else:
        typer.echo(f"photo_embeddings: {result.before} -> {result.after} partition(s), HNSW indexes rebuilt")


@embeddings_app.command("index")
def embeddings_index(
    kind: Annotated[
        str | None,
        typer.Option(help="halfvec or binary (re-ranked on the halfvec vectors); default WITHSENSE_VECTOR_INDEX"),
    ] = None,
    model: Annotated[int | None, typer.Option(help="one model's id (default: every model)")] = None,
) -> None:
    """Switch the vectors' HNSW index: build the new kind, switch searches to it, drop the old one.

    Searches go on throughout (writes of vectors wait for each build); with hash partitions every partition
    gets its own.
    """
    from services import vector_index as index_service
    from services.errors import ServiceError

    settings = _settings()
    wanted = kind if kind is not None else settings.vector_index
    try:
        results = index_service.switch(wanted.strip().lower(), model, progress=typer.echo)
    except ServiceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if not results:
        typer.echo("no embedding models yet: new ones get the index kind of WITHSENSE_VECTOR_INDEX")
    for r in results:
        change = "already" if r.before == r.after and not r.built else f"{r.before} ->"
        typer.echo(f"model {r.model_id} ({r.name}): {change} {r.after}")


@models_app.command("adopt")
def models_adopt(
    folder: Annotated[str, typer.Argument(help="a `withsense finetune` output folder (text tower only)")],
) -> None:
    """Register a text-only fine-tune sharing its base model's stored image vectors: no re-embedding."""
    from services import models as model_service
    from services.errors import Conflict, InvalidRequest, NotFound

    _settings()
    try:
        adopted = model_service.adopt_finetuned(folder)
    except (InvalidRequest, NotFound) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except Conflict as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(
        f"{adopted.label} registered beside {adopted.base_label}, sharing its {adopted.shared} image vectors. "
        f"Activate it with `withsense models activate {folder}`."
    )


@app.command()
def reindex(
    batch_size: Annotated[int, typer.Option(min=1, max=4096, help="photos per task")] = 128,
) -> None:
    """Queue every indexed photo for a worker on the new model (`celery worker -Q reindex`) to embed.

    Photos that already have a vector from that worker's model are skipped, so running it again is cheap.
    """
    from services import models as model_service
    from services.queue import QueueUnavailable

    _settings()
    queued = 0
    with tqdm(total=model_service.indexed_count(), desc="queueing for reindex", unit="photo") as bar:
        try:
            for count in model_service.queue_reindex(batch_size):
                queued += count
                bar.update(count)
        except QueueUnavailable as exc:
            typer.echo(f"error: {exc}; {queued} photos were queued, run the command again", err=True)
            raise typer.Exit(1) from exc
    typer.echo(
        f"{queued} indexed photos queued on `reindex`; a worker started with `-Q reindex` and the new "
        "WITHSENSE_MODEL embeds them. Watch `withsense models list`, then `withsense models activate`."
    )


keys_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    scope: Annotated[list[str], typer.Option("--scope", "-s", help="search, upload, moderate or admin (repeatable)")],
    name: Annotated[str, typer.Option(help="who or what uses the key")] = "cli",
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    from services.access import create_key
    from services.errors import InvalidRequest

    _settings()
    try:
        key_id, secret = create_key(name, scope)
    except InvalidRequest as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"key {key_id} ({name}, scopes {', '.join(sorted(set(scope)))}):")
    typer.echo(secret)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (never their secrets)."""
    from services.access import list_keys

    _settings()
    for key in list_keys():
        state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
        typer.echo(f"{key.id:>4}  {key.name:20}  {','.join(key.scopes):28}  {state}")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(help="the key's number from `withsense keys list`")]) -> None:
    """Revoke a key: it is refused from the next request on."""
    from services.access import revoke_key
    from services.errors import NotFound

    _settings()
    try:
        revoke_key(key_id)
    except NotFound as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"key {key_id} revoked")


policy_app = typer.Typer(
    help="The query content policy: check a text, rescreen photos after a rules change.", no_args_is_help=True
)
app.add_typer(policy_app, name="policy")


@policy_app.command("check")
def policy_check(text: Annotated[str, typer.Argument(help="a query or a title")]) -> None:
    """Print what the policy in force decides about TEXT, with the terms that decided it."""
    from core.policy import get_query_policy

    policy = get_query_policy()
    decision = policy.check(text)
    verdict = "blocked where the minors law applies" if decision.blocked else "allowed"
    typer.echo(f"{verdict} (rules {decision.rules_version})")
    typer.echo(f"read as: {' '.join(policy.normalized_words(text))}")
    if decision.matched_terms:
        typer.echo(f"matched: {', '.join(decision.matched_terms)}")


@policy_app.command("rescreen")
def policy_rescreen(
    apply: Annotated[bool, typer.Option("--apply", help="mark the photos found (default: only list them)")] = False,
    page_size: Annotated[int, typer.Option(min=1, max=10000, help="photos read per transaction")] = 500,
) -> None:
    """Find photos whose title or file name the rules in force mark as describing a child; --apply marks them."""
    from services.rescreen import RescreenHit, rescreen_photos

    def show(hit: RescreenHit) -> None:
        typer.echo(f"{hit.photo_id}  {hit.field}: {hit.text!r}  ({', '.join(hit.matched_terms)})")

    report = rescreen_photos(apply=apply, page_size=page_size, on_hit=show)
    if apply:
        typer.echo(
            f"marked {len(report.hits)} of {report.scanned} photos as showing a minor (rules {report.rules_version})"
        )
    else:
        typer.echo(
            f"{len(report.hits)} of {report.scanned} photos would be marked (rules {report.rules_version}); "
            "dry run, nothing changed: run with --apply to mark them"
        )


regions_app = typer.Typer(help="Where the minors law applies (the default '*' is restricted).", no_args_is_help=True)
app.add_typer(regions_app, name="regions")


@regions_app.command("list")
def regions_list() -> None:
    """Show the region rules."""
    from services.regions import rules

    _settings()
    for region, restricted, note in rules():
        typer.echo(f"{region:8}  {'restricted' if restricted else 'unrestricted':12}  {note or ''}")


@regions_app.command("set")
def regions_set(
    region: Annotated[str, typer.Argument(help="ISO code such as RU or DE, or '*' for every unlisted region")],
    restricted: Annotated[bool, typer.Option("--restricted/--unrestricted", help="does the minors law apply")] = True,
    note: Annotated[str | None, typer.Option(help="why (e.g. the law's reference)")] = None,
) -> None:
    """Declare whether the minors law applies in REGION; search obeys it at once."""
    from core.regions import normalise_rule_region
    from services.errors import ServiceError
    from services.regions import set_rule

    _settings()
    try:
        set_rule(region, restricted=restricted, note=note)
    except (ServiceError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"{normalise_rule_region(region)}: {'restricted' if restricted else 'unrestricted'}")


def _register_eval() -> None:
    # Imported lazily inside the command so `withsense --help` stays fast.
    from evaluation.cli import eval_command

    app.command("eval", help="Evaluate models on a dataset in the seed format (or --demo) and write a report.")(
        eval_command
    )


_register_eval()


def _register_finetune() -> None:
    from evaluation.finetune import finetune_command

    app.command(
        "finetune", help="Train a new model version on (image, text) pairs: the catalogue's titles or a seed dataset."
    )(finetune_command)


_register_finetune()


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(app())
