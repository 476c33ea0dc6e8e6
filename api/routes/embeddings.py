"""Text to vector, for services that search in their own SQL with `search_photos(vector, k, region)`."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api.auth import SearchPrincipal
from api.deps import SessionDep, ensure_query_model
from core.embedding import get_embedder
from core.policy import check_query

router = APIRouter(prefix="/v1/embeddings", tags=["embeddings"])


class TextEmbeddingIn(BaseModel):
    texts: list[str] = Field(min_length=1, max_length=64, description="1 to 64 texts of up to 1000 characters")


class TextEmbedding(BaseModel):
    text: str
    embedding: list[float]
    describes_minor: bool = Field(description="true when the query policy would block this text in restricted regions")


class TextEmbeddingOut(BaseModel):
    model: str
    revision: str
    dimension: int
    data: list[TextEmbedding]


@router.post("/text", response_model=TextEmbeddingOut)
async def embed_text(body: TextEmbeddingIn, session: SessionDep, _principal: SearchPrincipal) -> TextEmbeddingOut:
    """L2-normalised embeddings in the space of the indexed photos (pass them to `search_photos`).

    503 when this API's model is not the active one: such vectors would not match the index.
    """
    for text in body.texts:
        if not text.strip() or len(text) > 1000:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, "every text must be 1 to 1000 characters, not blank"
            )
    await run_in_threadpool(ensure_query_model, session)
    embedder = get_embedder()
    vectors = await run_in_threadpool(embedder.embed_texts, body.texts)
    return TextEmbeddingOut(
        model=embedder.model_name,
        revision=embedder.revision,
        dimension=embedder.dimension,
        data=[
            TextEmbedding(text=t, embedding=[round(float(x), 7) for x in v], describes_minor=check_query(t).blocked)
            for t, v in zip(body.texts, vectors, strict=True)
        ],
    )
