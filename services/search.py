"""Search: the query policy, the viewer's region, the active-model check, filters, modes, pages and composed queries.

One flow for every entry point (the API's routes, `withsense search`, the pages): every text part of a query is
checked by the content policy first (a query that leads to children gets the disclaimer in restricted regions),
a photo a query starts from must be one the viewer may see (the minors law first), the query is embedded by this
process's model only if that model is the one the index is searched with, and one SQL function,
search_photos_filtered(), applies every photo filter (status, visibility, moderation, the minors law, the
caller's filters) inside the nearest-neighbour and keyword queries, fuses them, applies the floor, orders and
pages. Nothing is filtered afterwards in Python.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from sqlalchemy.orm import Session

from core.images import load_rgb, make_derivative
from core.metadata import ORIENTATIONS, normalise_tag
from core.moderation import get_moderator
from core.policy import DISCLAIMER, PolicyDecision, check_query, model_child_score, with_model_opinion
from core.runtime import runtime
from core.settings import Settings, get_settings
from db import photos as photo_sql
from db import search as search_sql
from db.api_keys import Principal
from db.engine import has_replicas, read_session, session_scope
from db.moderation import photo_visibility
from db.policy import region_is_restricted
from db.search import FoundPhoto
from services import cursors
from services.errors import Conflict, InvalidRequest, NotFound, Unavailable
from services.model_loader import query_embedder
from services.photos import load_visible
from services.query_cache import normalise, query_cache
from services.shared_state import shared_redis
from services.text_models import ensure_text_model

log = logging.getLogger(__name__)

Mode = Literal["hybrid", "semantic", "keyword"]
Sort = Literal["relevance", "newest"]
MODES: tuple[str, ...] = get_args(Mode)
SORTS: tuple[str, ...] = get_args(Sort)

MAX_K = 100
# Pages reach this deep into a ranking (search_photos_filtered() ranks at most this many results).
MAX_DEPTH = 1000
MAX_FILTER_VALUES = 50
MAX_NEGATIVES = 10
MAX_TEXT = 1000
MAX_WEIGHT = 10.0

# Free text may hold tabs and line breaks (a pasted query), as api/validation.py allows; nothing else of C0/C1.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class ModelMismatch(Unavailable):
    """This process's model is not the one the index is searched with: its query vectors would not match."""


@dataclass(frozen=True)
class SearchFilters:
    """Which photos a search may return, besides what the viewer may see. Empty: no filter.

    `photographer`, `camera` and `orientation` match any of their values, `tag` all of them; dates are aware
    (UTC when given without a zone); `*_after` is inclusive, `*_before` exclusive.
    """

    photographer: tuple[str, ...] = ()
    tag: tuple[str, ...] = ()
    camera: tuple[str, ...] = ()
    orientation: tuple[str, ...] = ()
    taken_after: datetime | None = None
    taken_before: datetime | None = None
    uploaded_after: datetime | None = None
    uploaded_before: datetime | None = None
    min_width: int | None = None
    min_height: int | None = None

    @classmethod
    def parse(
        cls,
        *,
        photographer: Sequence[str] | None = None,
        tag: Sequence[str] | None = None,
        camera: Sequence[str] | None = None,
        orientation: Sequence[str] | None = None,
        taken_after: str | date | None = None,
        taken_before: str | date | None = None,
        uploaded_after: str | date | None = None,
        uploaded_before: str | date | None = None,
        min_width: int | None = None,
        min_height: int | None = None,
    ) -> SearchFilters:
        """Filters from what a client sent; `InvalidRequest` naming the filter for any value that cannot be one."""
        tags = tuple(_tag(value) for value in _texts("tag", tag))
        orientations = tuple(value.lower() for value in _texts("orientation", orientation))
        unknown = sorted(set(orientations) - set(ORIENTATIONS))
        if unknown:
            raise InvalidRequest(f"`orientation` must be landscape, portrait or square, not {unknown[0]!r}")
        filters = cls(
            photographer=_texts("photographer", photographer),
            tag=tuple(dict.fromkeys(tags)),
            camera=_texts("camera", camera),
            orientation=tuple(dict.fromkeys(orientations)),
            taken_after=_moment("taken_after", taken_after),
            taken_before=_moment("taken_before", taken_before),
            uploaded_after=_moment("uploaded_after", uploaded_after),
            uploaded_before=_moment("uploaded_before", uploaded_before),
            min_width=_pixels("min_width", min_width),
            min_height=_pixels("min_height", min_height),
        )
        # A range whose start is not before its end is no mistake of form: it matches no photo, as in SQL (and a
        # schema cannot relate two fields, so refusing it would refuse a request the OpenAPI document allows).
        return filters

    def as_sql(self) -> dict[str, object]:
        """The `filters` argument of search_photos_filtered()."""
        found: dict[str, object] = {}
        for name in ("photographer", "tag", "camera", "orientation"):
            if getattr(self, name):
                found[name] = list(getattr(self, name))
        for name in ("taken_after", "taken_before", "uploaded_after", "uploaded_before"):
            if getattr(self, name) is not None:
                found[name] = getattr(self, name).isoformat()
        for name in ("min_width", "min_height"):
            if getattr(self, name) is not None:
                found[name] = getattr(self, name)
        return found


@dataclass(frozen=True)
class SearchOptions:
    """How to search, besides what: filters, mode, relevance floor, order and the page (a previous `next_cursor`).

    `min_score` None is the active model's default floor (embedding_models.min_score), which drops semantic
    matches below it and keeps keyword matches; a given `min_score` drops every result whose cosine is below it.
    """

    filters: SearchFilters = field(default_factory=SearchFilters)
    mode: Mode = "hybrid"
    min_score: float | None = None
    sort: Sort = "relevance"
    cursor: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidRequest(f"`mode` must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.sort not in SORTS:
            raise InvalidRequest(f"`sort` must be one of {', '.join(SORTS)}, not {self.sort!r}")
        if self.min_score is not None and not (-1.0 <= self.min_score <= 1.0):
            raise InvalidRequest("`min_score` is a cosine similarity: from -1 to 1")
        if self.cursor is not None and not self.cursor.strip():
            raise InvalidRequest("`cursor` is empty: leave it out for the first page")

    @classmethod
    def from_fields(cls, fields: Mapping[str, object]) -> SearchOptions:
        """The options from a form's or a body's fields named as the API names them (other fields ignored):
        every entry point that takes filters builds them here, so they read them alike."""
        filters = SearchFilters.parse(**{name: fields.get(name) for name in FILTER_FIELDS})  # type: ignore[arg-type]
        return cls(
            filters=filters,
            mode=fields.get("mode", "hybrid"),  # type: ignore[arg-type]  # checked in __post_init__
            min_score=fields.get("min_score"),  # type: ignore[arg-type]
            sort=fields.get("sort", "relevance"),  # type: ignore[arg-type]
            cursor=fields.get("cursor"),  # type: ignore[arg-type]
        )


# The filters' names, as SearchFilters.parse, the API's parameters and the pages' form fields spell them.
FILTER_FIELDS = (
    "photographer",
    "tag",
    "camera",
    "orientation",
    "taken_after",
    "taken_before",
    "uploaded_after",
    "uploaded_before",
    "min_width",
    "min_height",
)


@dataclass(frozen=True)
class QueryWeights:
    """Weights of a composed query's parts; each part's embedding is normalised, the sum is normalised again.

    `negative` is each negative text's weight (subtracted).
    """

    text: float = 1.0
    like_photo: float = 1.0
    image: float = 1.0
    negative: float = 0.5

    def __post_init__(self) -> None:
        for name in ("text", "like_photo", "image", "negative"):
            value = getattr(self, name)
            if not (np.isfinite(value) and 0.0 <= value <= MAX_WEIGHT):
                raise InvalidRequest(f"weight `{name}` must be from 0 to {MAX_WEIGHT:g}, not {value!r}")


@dataclass(frozen=True)
class ComposedQuery:
    """What to look for: words (`text`), an indexed photo to look like, texts to steer away from, their weights.

    An image (POST /v1/search/image) is given beside it, to `search_image`.
    """

    text: str | None = None
    negative: tuple[str, ...] = ()
    like_photo: uuid.UUID | None = None
    weights: QueryWeights = field(default_factory=QueryWeights)


@dataclass(frozen=True)
class SearchOutcome:
    """A search's answer: the hits best first (or in the order asked for), or `blocked` with the disclaimer."""

    hits: list[FoundPhoto] = field(default_factory=list)
    blocked: bool = False
    query: str | None = None
    region: str | None = None
    next_cursor: str | None = None
    options: SearchOptions = field(default_factory=SearchOptions)
    truncated: bool = False  # a text part was longer than the model reads and was cut to its context

    @property
    def disclaimer(self) -> str | None:
        return DISCLAIMER if self.blocked else None


def model_mismatch(session: Session) -> str | None:
    """Why this process's query vectors would not match the index (another model is active), or None."""
    embedder = query_embedder()  # loaded, or ModelUnavailable (503) at once: never a wait on the hub
    active = photo_sql.cached_active_model(session)
    if active is None or active.revision == embedder.revision:  # the revision names the weights, whatever the path
        return None
    return (
        f"search is unavailable: this process embeds queries with {embedder.model_name}@{embedder.revision}, but "
        f"the index is searched with {active.name}@{active.revision} (the active model). Point WITHSENSE_MODEL (and "
        "WITHSENSE_MODEL_REVISION) at the active model, or finish `withsense reindex` and run "
        "`withsense models activate`."
    )


def ensure_query_model(session: Session) -> None:
    """`ModelMismatch` rather than quietly wrong rankings when this process's model is not the active one."""
    problem = model_mismatch(session)
    if problem:
        raise ModelMismatch(problem)


def text_is_blocked(session: Session, text: str, region: str | None) -> bool:
    """Whether the query policy blocks `text` for a viewer in `region` (the disclaimer instead of results)."""
    return check_query(text).blocked and region_is_restricted(session, region)


def with_second_opinion(decision: PolicyDecision, vector: np.ndarray) -> PolicyDecision:
    """The rules' decision with the model's opinion added when `policy_model_check` is on (it never unblocks)."""
    settings = get_settings()
    if not settings.policy_model_check or decision.blocked:
        return decision
    return with_model_opinion(decision, model_child_score(vector, get_moderator()), settings.policy_model_threshold)


def _log_blocked(decision: PolicyDecision, region: str | None) -> None:
    # The decision's record: which rules version and which terms (or the model's score) blocked it, and where.
    log.info(
        "text query blocked in region %s by query policy %s: %s",
        region or "*",
        decision.rules_version,
        ", ".join(decision.matched_terms),
    )


def query_model_id() -> str:
    """What a query vector depends on besides its words: the model and its revision, and the text tower."""
    embedder = query_embedder()
    text = f"{embedder.text_model_name}@{embedder.text_model_revision}" if embedder.text_model_name else ""
    return f"{embedder.model_name}@{embedder.revision}|text={text}|encoder={embedder.text_encoder}"


def embed_query_text(text: str) -> np.ndarray:
    """The query's vector: from the query-embedding cache when this model has embedded the same text recently,
    else from the text tower (and then cached). `text` is already normalised."""
    return embed_query_texts([text])[0]


def embed_query_texts(texts: list[str]) -> list[np.ndarray]:
    """The vectors of a query's texts (its words and its negatives), in order: each from the query-embedding cache
    when this model embedded the same text recently, the others from the text tower in one batch (then cached)."""
    embedder = query_embedder()
    ensure_text_model(embedder)  # before the cache: a refused text model answers nothing
    cache = query_cache()
    model_id = query_model_id()
    found: dict[str, np.ndarray] = {}
    for text in dict.fromkeys(texts):
        cached = cache.get(model_id, text, embedder.dimension)
        if cached is not None:
            found[text] = cached
    missing = [text for text in dict.fromkeys(texts) if text not in found]
    if missing:
        for text, vector in zip(missing, embedder.embed_texts(missing), strict=True):
            found[text] = np.asarray(vector, dtype=np.float32)
            cache.put(model_id, text, found[text])
    return [found[text] for text in texts]


# --- the searches -------------------------------------------------------------------------------------------------


def search_text(
    session: Session, query: str, k: int, region: str | None, options: SearchOptions | None = None
) -> SearchOutcome:
    """Photos that best match a text description: by what they show and by their words (`options.mode`)."""
    return search_composed(session, ComposedQuery(text=query), k, region, options)


def search_composed(
    session: Session,
    query: ComposedQuery,
    k: int,
    region: str | None,
    options: SearchOptions | None = None,
    principal: Principal | None = None,
) -> SearchOutcome:
    """A composed query: the weighted sum of the normalised embeddings of its words and of `like_photo`, minus its
    negatives. `like_photo` must be a photo `principal` may see (`NotFound` otherwise, as on every route)."""
    return _composed(session, query, k, region, options or SearchOptions(), principal, image=None)


def embed_image_file(settings: Settings, path: Path) -> np.ndarray:
    """A query image's embedding, decoded under the same rules as uploads (raises core.images.ImageRejected)."""
    image = load_rgb(
        path,
        allowed_formats=settings.allowed_formats,
        max_pixels=settings.max_image_pixels,
        draft_size=settings.derivative_size,
    )
    vectors: np.ndarray = query_embedder().embed_images([make_derivative(image, settings.derivative_size)])
    return np.asarray(vectors[0], dtype=np.float32)


def search_image(
    session: Session,
    vector: np.ndarray,
    k: int,
    region: str | None,
    options: SearchOptions | None = None,
    query: ComposedQuery | None = None,
    principal: Principal | None = None,
    image_digest: str | None = None,
) -> SearchOutcome:
    """Photos that look like a query image (its embedding from `embed_image_file`), with the parts of a composed
    query beside it (words, like_photo, negatives). `image_digest` (the file's sha256) binds page cursors to it.

    A query image that the classifier sees as a child leads to such content: the disclaimer, as for a text query.
    """
    digest = image_digest or hashlib.sha256(np.asarray(vector, dtype=np.float32).tobytes()).hexdigest()
    return _composed(
        session, query or ComposedQuery(), k, region, options or SearchOptions(), principal, image=(vector, digest)
    )


def search_similar(
    session: Session,
    photo_id: uuid.UUID,
    principal: Principal,
    k: int,
    region: str | None,
    options: SearchOptions | None = None,
) -> SearchOutcome:
    """Photos that look like an indexed photo (itself excluded), under the filters of `options` (semantic only).

    A photo the caller may not see is `NotFound` (as on every route); a photo of a minor that the law hides from
    the viewer's region gets the disclaimer. Its uploader and moderators learn when it is not indexed yet.
    """
    options = options or SearchOptions(mode="semantic")
    if options.mode == "keyword":
        raise InvalidRequest("similar photos are found by what they show: `mode` keyword needs words (use /v1/search)")
    options = replace(options, mode="semantic")
    source = _like_photo(session, photo_id, principal, region)
    if source is None:
        return SearchOutcome(blocked=True, region=region, options=options)
    parts = {"kind": "similar", "photo": str(photo_id)}
    return _run(session, source, None, k, region, options, parts, exclude=[photo_id])


def search_vector(
    session: Session,
    vector: np.ndarray,
    k: int,
    region: str | None,
    options: SearchOptions | None = None,
    query_text: str | None = None,
) -> SearchOutcome:
    """Nearest photos to a caller's query vector of the active model (for services that embed their own queries),
    with the query's words too when given (keyword and hybrid modes; the words go through the query policy).

    A vector carries no words, so the query policy cannot apply to it: `embed_texts` says which texts describe
    a minor, and a service that searches on its own shows the disclaimer for those.
    """
    options = options or SearchOptions(mode="semantic")
    array = unit_vector(vector)
    words = _clean_text("text", query_text) if query_text is not None else None
    if words is not None and text_is_blocked(session, words, region):
        return SearchOutcome(blocked=True, query=words, region=region, options=options)
    if options.mode == "keyword" and words is None:
        raise InvalidRequest("`mode` keyword needs the query's words in `text`")
    parts = {"kind": "vector", "vector": hashlib.sha256(array.tobytes()).hexdigest(), "text": words}
    return _run(session, array, words, k, region, options, parts, for_query=False)


def unit_vector(vector: np.ndarray | list[float]) -> np.ndarray:
    """A caller's vector scaled to length 1 (float32); `InvalidRequest` unless it is finite and not all zero.

    Scaled by its largest component first, so neither 1e-300 nor 1e300 components under- or overflow on the way.
    """
    array = np.asarray(vector, dtype=np.float64)
    if array.ndim != 1 or not array.size or not np.all(np.isfinite(array)):
        raise InvalidRequest("the embedding must be a list of finite numbers")
    largest = float(np.max(np.abs(array)))
    if largest == 0.0:
        raise InvalidRequest("the embedding must not be all zeros: a zero vector points nowhere")
    scaled = array / largest
    return (scaled / np.linalg.norm(scaled)).astype(np.float32)


@dataclass(frozen=True)
class TextEmbeddings:
    model: str
    revision: str
    dimension: int
    vectors: list[np.ndarray]
    describes_minor: list[bool]
    truncated: list[bool]


def embed_texts(session: Session, texts: list[str]) -> TextEmbeddings:
    """Query vectors in the space of the indexed photos, and whether the policy sees a minor in each text."""
    for text in texts:
        if not text.strip():
            raise InvalidRequest("every text must have at least one non-blank character")
    ensure_query_model(session)
    embedder = query_embedder()
    ensure_text_model(embedder)
    vectors = embedder.embed_texts(texts)
    return TextEmbeddings(
        model=embedder.model_name,
        revision=embedder.revision,
        dimension=embedder.dimension,
        vectors=list(vectors),
        describes_minor=[
            with_second_opinion(check_query(text), vector).blocked for text, vector in zip(texts, vectors, strict=True)
        ],
        truncated=embedder.truncated_texts(texts),
    )


# Where searches read ---------------------------------------------------------------------------------------------

WRITE_MARK_PREFIX = "withsense:wrote:"
_recent_writes = runtime.slot("recent-writes", dict[int, float])
_recent_writes_lock = threading.Lock()


def read_your_writes_window_s() -> float:
    """How long a key's searches stay on the primary after its own write: a replica serves only while its lag,
    measured at most WITHSENSE_REPLICA_CHECK_EVERY_S ago, is under WITHSENSE_REPLICA_MAX_LAG_S, so after this
    window every replica that may serve has replayed that write."""
    settings = get_settings()
    return settings.replica_max_lag_s + settings.replica_check_every_s + 1.0


def note_write(principal: Principal | None) -> None:
    """Record that this key just changed something (upload, edit, deletion, moderation): its next searches read
    the primary, here and in the other API processes (a mark with a TTL in Redis; this process's own memory
    when Redis does not answer)."""
    if principal is None or not principal.key_id or not has_replicas():
        return
    window = read_your_writes_window_s()
    with _recent_writes_lock:
        marks = _recent_writes.get()
        now = time.monotonic()
        for key_id in [k for k, until in marks.items() if until < now]:  # keep the map small
            del marks[key_id]
        marks[principal.key_id] = now + window
    shared_redis().run(lambda r: r.set(f"{WRITE_MARK_PREFIX}{principal.key_id}", 1, px=int(window * 1000)))


def wrote_recently(principal: Principal | None) -> bool:
    """Whether this key wrote within the read-your-writes window (in any API process that could tell Redis)."""
    if principal is None or not principal.key_id:
        return False
    with _recent_writes_lock:
        if _recent_writes.get().get(principal.key_id, 0.0) > time.monotonic():
            return True
    return bool(shared_redis().run(lambda r: r.exists(f"{WRITE_MARK_PREFIX}{principal.key_id}")))


@contextmanager
def search_session(principal: Principal | None = None) -> Iterator[Session]:
    """The session a search reads from: a healthy read replica (WITHSENSE_DATABASE_REPLICA_URLS), or the primary
    when there is none, none is healthy and caught up, or this key has just written (read your own writes)."""
    if not has_replicas() or wrote_recently(principal):
        with session_scope() as session:
            session.info["replica"] = None
            yield session
        return
    with read_session() as session:
        yield session


# --- the flow -----------------------------------------------------------------------------------------------------


def _composed(
    session: Session,
    query: ComposedQuery,
    k: int,
    region: str | None,
    options: SearchOptions,
    principal: Principal | None,
    image: tuple[np.ndarray, str] | None,
) -> SearchOutcome:
    # The texts in the form that is checked, embedded and cached (NFC, one space between words).
    text = normalise(_clean_text("q", query.text)) if query.text is not None else None
    if len(query.negative) > MAX_NEGATIVES:
        raise InvalidRequest(f"at most {MAX_NEGATIVES} negative texts")
    negatives = tuple(normalise(_clean_text("negative", value)) for value in query.negative)
    if text is None and query.like_photo is None and image is None:
        raise InvalidRequest("give the query's words (`q`), a photo to look like (`like_photo`), or an image")
    if options.mode == "keyword" and text is None:
        raise InvalidRequest("`mode` keyword needs the query's words (`q`)")

    # The law first: any part that leads to children answers the disclaimer in restricted regions. The rules
    # decide before anything is embedded.
    restricted = region_is_restricted(session, region)
    decisions = {part: check_query(part) for part in (text, *negatives) if part is not None}
    for decision in decisions.values():
        if decision.blocked and restricted:
            _log_blocked(decision, region)
            return SearchOutcome(blocked=True, query=text, region=region, options=options)
    if image is not None and restricted and get_moderator().score(image[0]).depicts_minor:
        return SearchOutcome(blocked=True, query=text, region=region, options=options)
    like_vector: np.ndarray | None = None
    if query.like_photo is not None:
        like_vector = _like_photo(session, query.like_photo, principal, region)
        if like_vector is None:
            return SearchOutcome(blocked=True, query=text, region=region, options=options)

    ensure_query_model(session)
    embedder = query_embedder()
    texts = list(decisions)
    embedded = dict(zip(texts, embed_query_texts(texts), strict=True)) if texts else {}
    if restricted:  # with `policy_model_check` on, the model's opinion of each text may block what the rules let by
        for part, decision in decisions.items():
            opinion = with_second_opinion(decision, embedded[part])
            if opinion.blocked:
                _log_blocked(opinion, region)
                return SearchOutcome(blocked=True, query=text, region=region, options=options)
    truncated = any(embedder.truncated_texts(texts)) if texts else False
    weights = query.weights
    parts: list[tuple[float, np.ndarray]] = []
    if text is not None:
        parts.append((weights.text, embedded[text]))
    if like_vector is not None:
        parts.append((weights.like_photo, like_vector))
    if image is not None:
        parts.append((weights.image, image[0]))
    parts.extend((-weights.negative, embedded[value]) for value in negatives)
    vector = _weighted_sum(parts)

    fingerprint = {
        "kind": "image" if image is not None else "text",
        "q": text,
        "negative": list(negatives),
        "like_photo": str(query.like_photo) if query.like_photo else None,
        "image": image[1] if image is not None else None,
        "weights": [weights.text, weights.like_photo, weights.image, weights.negative],
    }
    exclude = [query.like_photo] if query.like_photo is not None else []
    outcome = _run(
        session, vector, text, k, region, options, fingerprint, exclude=exclude, negative_text=" ".join(negatives)
    )
    return replace(outcome, truncated=truncated)


def _weighted_sum(parts: list[tuple[float, np.ndarray]]) -> np.ndarray:
    total = np.zeros_like(np.asarray(parts[0][1], dtype=np.float32))
    for weight, vector in parts:
        array = np.asarray(vector, dtype=np.float32)
        total += weight * array / max(float(np.linalg.norm(array)), 1e-12)
    norm = float(np.linalg.norm(total))
    if not np.isfinite(norm) or norm < 1e-6:
        raise InvalidRequest("the query's parts cancel out (the weights leave nothing to search for)")
    normalised: np.ndarray = total / norm
    return normalised


def _like_photo(
    session: Session, photo_id: uuid.UUID, principal: Principal | None, region: str | None
) -> np.ndarray | None:
    """The vector of a photo a search starts from; None when the minors law hides it from the viewer's region.

    Whoever asks: a search that starts from a hidden child leads to such content. A photo the caller may not see
    otherwise is `NotFound`, as on every route; one not indexed yet is a `Conflict` for those who may follow it.
    """
    if photo_visibility(session, photo_id, region) == "restricted":
        return None
    if principal is None:  # no caller who could manage it: only what the viewer may see
        if photo_visibility(session, photo_id, region) != "visible":
            raise NotFound(f"photo {photo_id} does not exist")
    else:
        photo = load_visible(session, photo_id, principal, region)
        # Its uploader and moderators may start from a photo nobody else sees yet (in review, private), but
        # not from a child without consent where the law applies: the results would lead to such content.
        if photo.depicts_minor and not photo.parental_consent and region_is_restricted(session, region):
            return None
        if photo.status != "indexed":
            raise Conflict(f"photo {photo_id} is not indexed yet (status {photo.status})")
    vector = search_sql.photo_embedding(session, photo_id)
    if vector is None:
        raise Conflict(f"photo {photo_id} has no vector of the active model yet (`withsense reindex`)")
    return vector


def _run(
    session: Session,
    vector: np.ndarray,
    text: str | None,
    k: int,
    region: str | None,
    options: SearchOptions,
    parts: Mapping[str, object],
    *,
    exclude: list[uuid.UUID] | None = None,
    negative_text: str = "",
    for_query: bool = True,
) -> SearchOutcome:
    if not (1 <= k <= MAX_K):
        raise InvalidRequest(f"k must be from 1 to {MAX_K}")
    filters = options.filters.as_sql()
    fingerprint = cursors.fingerprint(
        {
            **parts,
            "region": (region or "").upper(),
            "filters": filters,
            "mode": options.mode,
            "min_score": options.min_score,
            "sort": options.sort,
        }
    )
    offset = cursors.decode(options.cursor, fingerprint) if options.cursor else 0
    sql_options: dict[str, object] = {"mode": options.mode, "sort": options.sort, "offset": offset}
    if options.min_score is not None:
        sql_options["min_score"] = options.min_score
    if exclude:
        sql_options["exclude"] = [str(photo_id) for photo_id in exclude]
    if negative_text.strip():
        sql_options["negative_text"] = negative_text
    # One more row than the page: whether there is a next page, without counting the rest.
    wanted = min(k + 1, MAX_DEPTH - offset)
    try:
        rows = search_sql.search_filtered(
            session,
            vector,
            text if options.mode != "semantic" else None,
            wanted,
            region,
            filters,
            sql_options,
            exact_below=get_settings().search_exact_below,
            ef_search=get_settings().hnsw_ef_search,
            binary_rerank=get_settings().binary_rerank,
        )
    except search_sql.NoActiveModel:
        rows = []  # nothing indexed yet: an empty result, not an error
    except search_sql.DimensionMismatch as exc:
        if for_query:  # our own model's vector: the active model changed between the check and the query
            raise ModelMismatch(f"search is unavailable: {exc}") from None
        raise InvalidRequest(str(exc)) from None  # a caller's vector of another dimension
    except search_sql.InvalidSearch as exc:
        raise InvalidRequest(str(exc).removeprefix("ERROR:").strip()) from None
    hits = rows[:k]
    more = len(rows) > k and offset + k < MAX_DEPTH
    next_cursor = cursors.encode(offset + k, fingerprint) if more else None
    return SearchOutcome(hits, query=text, region=region, next_cursor=next_cursor, options=options)


# --- input rules --------------------------------------------------------------------------------------------------


def _clean_text(name: str, value: str | None) -> str:
    text = (value or "").strip()
    if not text:
        raise InvalidRequest(f"`{name}` is empty")
    if _CONTROL.search(text):
        raise InvalidRequest(f"`{name}` contains control characters")
    if len(text) > MAX_TEXT:
        raise InvalidRequest(f"`{name}` is longer than {MAX_TEXT} characters")
    return text


def _texts(name: str, values: Sequence[str] | None) -> tuple[str, ...]:
    if not values:
        return ()
    if isinstance(values, str):  # one value, not its characters
        values = [values]
    if len(values) > MAX_FILTER_VALUES:
        raise InvalidRequest(f"`{name}` takes at most {MAX_FILTER_VALUES} values")
    return tuple(dict.fromkeys(_clean_text(name, value) for value in values))


def _tag(value: str) -> str:
    tag = normalise_tag(value)
    if tag is None:
        raise InvalidRequest(f"`tag` {value!r} is not a tag")
    return tag


def _moment(name: str, value: str | date | None) -> datetime | None:
    """An ISO date (midnight UTC) or date and time (UTC unless it names its zone)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    else:
        text = value.strip()
        try:
            moment = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequest(
                f"`{name}` must be an ISO date (2024-05-31) or date and time (2024-05-31T18:00:00+02:00), "
                f"not {text[:40]!r}"
            ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if not (1800 <= moment.year <= 9999):
        raise InvalidRequest(f"`{name}` is out of range: {moment.date()}")
    return moment


def _pixels(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not (0 <= value <= 2**31 - 1):
        raise InvalidRequest(f"`{name}` must be a whole number of pixels from 0")
    return value


def default_floor(session: Session) -> float | None:
    """The active model's relevance floor (embedding_models.min_score), None when it has none."""
    model = photo_sql.active_model(session)
    return model.min_score if model is not None else None
