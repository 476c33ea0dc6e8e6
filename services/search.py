"""Search: the query policy, the viewer's region, the active-model check, and the nearest-neighbour queries.

One flow for every entry point (the API's routes, `withsense search`, the pages): the query's words are checked
by the content policy first (a query that leads to children gets the disclaimer in restricted regions), the query
is embedded by this process's model only if that model is the one the index is searched with, and the SQL
functions apply every photo filter (status, visibility, moderation, the minors law) inside the nearest-neighbour
scan, so nothing is filtered afterwards in Python.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from core.images import load_rgb, make_derivative
from core.moderation import get_moderator
from core.policy import DISCLAIMER, PolicyDecision, check_query, model_child_score, with_model_opinion
from core.settings import Settings, get_settings
from db import photos as photo_sql
from db import search as search_sql
from db.api_keys import Principal
from db.moderation import photo_visibility
from db.policy import region_is_restricted
from db.search import SearchHit
from services.errors import Conflict, InvalidRequest, Unavailable
from services.model_loader import query_embedder
from services.photos import load_visible

log = logging.getLogger(__name__)


class ModelMismatch(Unavailable):
    """This process's model is not the one the index is searched with: its query vectors would not match."""


@dataclass(frozen=True)
class SearchOutcome:
    """A search's answer: the hits best first, or `blocked` with the disclaimer (the minors law)."""

    hits: list[SearchHit] = field(default_factory=list)
    blocked: bool = False
    query: str | None = None
    region: str | None = None
    truncated: bool = False  # the query was longer than the model reads and was cut to its context

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


def _nearest(session: Session, vector: np.ndarray, k: int, region: str | None, *, for_query: bool) -> list[SearchHit]:
    try:
        return search_sql.search_by_vector(session, vector, k, region, ef_search=get_settings().hnsw_ef_search)
    except search_sql.NoActiveModel:
        return []  # nothing indexed yet: an empty result, not an error
    except search_sql.DimensionMismatch as exc:
        if for_query:  # our own model's vector: the active model changed between the check and the query
            raise ModelMismatch(f"search is unavailable: {exc}") from None
        raise InvalidRequest(str(exc)) from None  # a caller's vector of another dimension


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


def search_text(session: Session, query: str, k: int, region: str | None) -> SearchOutcome:
    """Photos that best match a text description, best first, scored by cosine similarity.

    The rules decide first, before anything is embedded; with `policy_model_check` on, the query's embedding is
    also scored against the zero-shot child prompts and may block what the rules let through.
    """
    text = query.strip()
    if not text:
        raise InvalidRequest("the query is empty")
    decision = check_query(text)
    if decision.blocked and region_is_restricted(session, region):
        _log_blocked(decision, region)
        return SearchOutcome(blocked=True, query=text, region=region)
    ensure_query_model(session)
    embedder = query_embedder()
    vector = embedder.embed_texts([text])[0]
    opinion = with_second_opinion(decision, vector)
    if opinion.blocked and not decision.blocked and region_is_restricted(session, region):
        _log_blocked(opinion, region)
        return SearchOutcome(blocked=True, query=text, region=region)
    truncated = embedder.truncated_texts([text])[0]
    hits = _nearest(session, vector, k, region, for_query=True)
    return SearchOutcome(hits, query=text, region=region, truncated=truncated)


def embed_image_file(settings: Settings, path: Path) -> np.ndarray:
    """A query image's embedding, decoded under the same rules as uploads (raises core.images.ImageRejected)."""
    image = load_rgb(
        path,
        allowed_formats=settings.allowed_formats,
        max_pixels=settings.max_image_pixels,
        draft_size=settings.derivative_size,
    )
    vectors = query_embedder().embed_images([make_derivative(image, settings.derivative_size)])
    return np.asarray(vectors[0], dtype=np.float32)


def search_image(session: Session, vector: np.ndarray, k: int, region: str | None) -> SearchOutcome:
    """Photos that look like a query image (its embedding from `embed_image_file`).

    A query image that the classifier sees as a child leads to such content: the disclaimer, as for a text query.
    """
    if get_moderator().score(vector).depicts_minor and region_is_restricted(session, region):
        return SearchOutcome(blocked=True, region=region)
    ensure_query_model(session)
    return SearchOutcome(_nearest(session, vector, k, region, for_query=True), region=region)


def search_similar(
    session: Session, photo_id: uuid.UUID, principal: Principal, k: int, region: str | None
) -> SearchOutcome:
    """Photos that look like an indexed photo (itself excluded).

    A photo the caller may not see is `NotFound` (as on every route); a photo of a minor that the law hides from
    the viewer's region gets the disclaimer. Its uploader and moderators learn when it is not indexed yet.
    """
    # The law first, whoever asks: a search that starts from a hidden child leads to such content.
    if photo_visibility(session, photo_id, region) == "restricted":
        return SearchOutcome(blocked=True, region=region)
    photo = load_visible(session, photo_id, principal, region)  # NotFound unless visible or the caller's to manage
    if photo.status != "indexed":
        raise Conflict(f"photo {photo_id} is not indexed yet (status {photo.status})")
    hits = search_sql.similar_to_photo(session, photo_id, k, region, ef_search=get_settings().hnsw_ef_search)
    return SearchOutcome(hits, region=region)


def search_vector(session: Session, vector: np.ndarray, k: int, region: str | None) -> SearchOutcome:
    """Nearest photos to a caller's query vector of the active model (for services that embed their own queries).

    Such a vector carries no words, so the query policy cannot apply: `embed_texts` says which texts describe
    a minor, and a service that searches on its own shows the disclaimer for those.
    """
    return SearchOutcome(_nearest(session, unit_vector(vector), k, region, for_query=False), region=region)


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
