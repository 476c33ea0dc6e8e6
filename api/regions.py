"""The viewer's region, from the `region` query parameter or the `X-Region` header, resolved once for every route."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Query
from pydantic import Field

from core.regions import normalise_region
from services.errors import InvalidRequest

# What the schema promises about a region value: exactly what core.regions.normalise_region reads (ASCII spaces
# around a country code such as DE or DEU, or a subdivision such as US-CA, in any case; blank is no region).
REGION_PATTERN = r"^ *(?:[A-Za-z]{2,3}|[A-Za-z]{2}-[A-Za-z0-9]{1,3})? *$"
# HTTP trims the spaces around a header value, so the header's pattern promises none (the server still reads them).
REGION_HEADER_PATTERN = r"^(?:[A-Za-z]{2,3}|[A-Za-z]{2}-[A-Za-z0-9]{1,3})?$"
REGION_MAX_LENGTH = 16
REGION_DESCRIPTION = (
    "ISO 3166 code of the viewer's country (DE, DEU) or subdivision (US-CA): the minors law applies per region"
)

RegionParam = Annotated[
    str | None,
    Query(max_length=REGION_MAX_LENGTH, json_schema_extra={"pattern": REGION_PATTERN}, description=REGION_DESCRIPTION),
]
RegionHeader = Annotated[
    str | None,
    Header(
        alias="X-Region",
        max_length=REGION_MAX_LENGTH,
        json_schema_extra={"pattern": REGION_HEADER_PATTERN},
        description="same as `region` (the query parameter wins when both are sent; each must be a region)",
    ),
]
# A region in a JSON body (POST /v1/search/vector), read the same way.
RegionField = Annotated[str, Field(max_length=REGION_MAX_LENGTH, json_schema_extra={"pattern": REGION_PATTERN})]


def resolve_region(query_region: str | None, header_region: str | None) -> str | None:
    """The region as SQL reads it (core.regions; the query parameter wins over the header); None when neither is
    given. Raises core.regions.InvalidRegion (a ValueError) for a value that is not a region code, in either place:
    a wrong value is refused even where the other one would win."""
    from_query, from_header = normalise_region(query_region), normalise_region(header_region)
    return from_query or from_header


def region_error(exc: ValueError) -> InvalidRequest:
    """The 422 for a region value that is not one, naming the parameter."""
    message = str(exc)
    return InvalidRequest(message if message.startswith("region") else f"region: {message}")


def viewer_region(region: RegionParam = None, x_region: RegionHeader = None) -> str | None:
    """The dependency every route that shows photos takes: 422 for a value that is not a region code."""
    try:
        return resolve_region(region, x_region)
    except ValueError as exc:
        raise region_error(exc) from None


ViewerRegion = Annotated[str | None, Depends(viewer_region)]
