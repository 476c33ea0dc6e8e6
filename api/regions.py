"""The viewer's region, from the `region` query parameter or the `X-Region` header, resolved once for every route."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, HTTPException, Query, status

from core.regions import InvalidRegion, normalise_region

RegionParam = Annotated[
    str | None, Query(max_length=16, description="ISO country code of the viewer (the minors law applies per region)")
]
RegionHeader = Annotated[str | None, Header(alias="X-Region", max_length=16, description="same as `region`")]


def resolve_region(query_region: str | None, header_region: str | None) -> str | None:
    """The region as SQL reads it (core.regions; the query parameter wins over the header); None when neither is
    given; 422 for a value that is not a region code."""
    try:
        return normalise_region(query_region or header_region)
    except InvalidRegion as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None


def viewer_region(region: RegionParam = None, x_region: RegionHeader = None) -> str | None:
    """The dependency every route that shows photos takes: 422 for a value that is not a region code."""
    try:
        return resolve_region(region, x_region)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None


ViewerRegion = Annotated[str | None, Depends(viewer_region)]
