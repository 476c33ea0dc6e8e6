"""Text to vector, for services that search in their own SQL with `search_photos(vector, k, region)`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from api.auth import SearchPrincipal
from api.deps import SessionDep
from api.schemas import ErrorOut
from api.validation import FreeText
from services import search as search_service

router = APIRouter(prefix="/v1/embeddings", tags=["embeddings"])


class TextEmbeddingIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    texts: list[Annotated[FreeText, Field(min_length=1, max_length=1000)]] = Field(
        min_length=1,
        max_length=64,
        description="1 to 64 texts of 1 to 1000 characters, not blank, no control characters but tabs and line breaks",
    )


class TextEmbedding(BaseModel):
    text: str
    embedding: list[float]
    describes_minor: bool = Field(description="true when the query policy would block this text in restricted regions")
    truncated: bool = Field(description="true when the text was longer than the model reads (CLIP: 77 tokens) and cut")


class TextEmbeddingOut(BaseModel):
    model: str
    revision: str
    dimension: int
    data: list[TextEmbedding]


@router.post(
    "/text",
    response_model=TextEmbeddingOut,
    responses={
        503: {"model": ErrorOut, "description": "the model is not loaded (with the reason) or not the active one"}
    },
)
async def embed_text(body: TextEmbeddingIn, session: SessionDep, _principal: SearchPrincipal) -> TextEmbeddingOut:
    """L2-normalised embeddings in the space of the indexed photos (pass them to `search_photos`).

    503 when this API's model is not the active one: such vectors would not match the index.
    """
    result = await run_in_threadpool(search_service.embed_texts, session, body.texts)
    return TextEmbeddingOut(
        model=result.model,
        revision=result.revision,
        dimension=result.dimension,
        data=[
            TextEmbedding(text=t, embedding=[round(float(x), 7) for x in v], describes_minor=minor, truncated=cut)
            for t, v, minor, cut in zip(
                body.texts, result.vectors, result.describes_minor, result.truncated, strict=True
            )
        ],
    )
