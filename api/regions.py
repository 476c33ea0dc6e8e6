"""The viewer's region, from the `region` query parameter or the `X-Region` header, resolved once for every route."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Query

from api.validation import LINE_PATTERN, refuse_control_characters
from services.errors import InvalidRequest

# What the schema promises about a region value (the same rule resolve_region applies): up to 16 characters of one
# line, no control characters; blank means no region.
REGION_PATTERN = LINE_PATTERN
REGION_MAX_LENGTH = 16

RegionParam = Annotated[
    str | None,
    Query(
        max_length=REGION_MAX_LENGTH,
        json_schema_extra={"pattern": REGION_PATTERN},
        description="ISO country code of the viewer (the minors law applies per region)",
    ),
]
RegionHeader = Annotated[
    str | None,
    Header(
        alias="X-Region",
        max_length=REGION_MAX_LENGTH,
        json_schema_extra={"pattern": REGION_PATTERN},
        description="same as `region`",
    ),
]


def resolve_region(query_region: str | None, header_region: str | None) -> str | None:
    """The region as SQL reads it (the query parameter wins over the header); None when neither is given.

    ValueError for a value that is not a region code.
    """
    raw = query_region or header_region or ""
    refuse_control_characters(raw)
    region = raw.strip().upper()
    return region or None


def viewer_region(region: RegionParam = None, x_region: RegionHeader = None) -> str | None:
    """The dependency every route that shows photos takes: 422 for a value that is not a region code."""
    try:
        return resolve_region(region, x_region)
    except ValueError as exc:
        raise InvalidRequest(f"region: {exc}") from None


ViewerRegion = Annotated[str | None, Depends(viewer_region)]
