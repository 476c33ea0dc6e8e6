"""The viewer's region, from the `region` query parameter or the `X-Region` header."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Query

RegionParam = Annotated[
    str | None, Query(max_length=16, description="ISO country code of the viewer (the minors law applies per region)")
]
RegionHeader = Annotated[str | None, Header(alias="X-Region", max_length=16, description="same as `region`")]


def resolve_region(query_region: str | None, header_region: str | None) -> str | None:
    region = (query_region or header_region or "").strip().upper()
    return region or None
