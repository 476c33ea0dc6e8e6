"""The OpenAPI document, made true: every status each route can answer, with the bodies it really sends.

FastAPI documents the routes' own responses; what the app adds around them is written here once:
- 422 is `{"detail": "<sentence>", "errors": [...]}` (api/errors.py), not FastAPI's default array;
- routes behind a key answer 401 and 403, and the rate-limited ones 429 with Retry-After (api/auth.py);
- a body that cannot be parsed (JSON or multipart) is 400;
- every /v1 route answers 503 with Retry-After while Postgres is away, and any route 500 with a request id;
- a search vector has exactly the dimension of this API's model, once the model is loaded.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel

from api.schemas import ErrorOut, InternalErrorOut, ValidationErrorOut

JSON = "application/json"
_ERROR_MODELS: tuple[type[BaseModel], ...] = (ErrorOut, ValidationErrorOut, InternalErrorOut)
_FASTAPI_DEFAULTS = ("HTTPValidationError", "ValidationError")

_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "string"}}}
_REQUEST_ID = {
    "X-Request-ID": {"description": "the id under which the server logged the error", "schema": {"type": "string"}}
}


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _response(description: str, model: type[BaseModel], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {JSON: {"schema": _ref(model)}}}
    if headers:
        response["headers"] = headers
    return response


def api_routes(app: FastAPI) -> list[tuple[str, APIRoute]]:
    """(full path, route) of every API route, through included routers (FastAPI >= 0.160 keeps them nested)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI flattens included routers into app.routes
        return [(route.path_format, route) for route in app.routes if isinstance(route, APIRoute)]
    found = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute) and context.path_format:
            found.append((context.path_format, route))
    return found


def _route_scopes(app: FastAPI) -> dict[tuple[str, str], tuple[str, ...]]:
    """(path, METHOD) -> the scopes a route accepts, read from its `require_scope` dependency."""
    found: dict[tuple[str, str], tuple[str, ...]] = {}
    for path, route in api_routes(app):
        pending = list(route.dependant.dependencies)
        while pending:
            dependency = pending.pop()
            scopes = getattr(dependency.call, "accepted_scopes", None)
            if scopes:
                for method in route.methods or ():
                    found[(path, method.upper())] = tuple(scopes)
            pending.extend(dependency.dependencies)
    return found


def _not_nullable(parameter: dict[str, Any]) -> None:
    """A query parameter or header is left out, never null: FastAPI's `anyOf [..., null]` for an optional one would
    have clients (and fuzzers) send the text `null`, which is not a region, a cursor or a status."""
    schema = parameter.get("schema", {})
    branches = schema.get("anyOf")
    if not isinstance(branches, list):
        return
    kept = [branch for branch in branches if branch.get("type") != "null"]
    if len(kept) == 1 and len(kept) < len(branches):
        schema.pop("anyOf")
        parameter["schema"] = {**kept[0], **schema}


def _amend(schema: dict[str, Any], scopes_of: dict[tuple[str, str], tuple[str, ...]], dimension: int | None) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in _ERROR_MODELS:
        definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, nested in definition.pop("$defs", {}).items():
            components[name] = nested
        components[model.__name__] = definition
    for name in _FASTAPI_DEFAULTS:
        components.pop(name, None)

    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                _not_nullable(parameter)
            responses: dict[str, Any] = operation.setdefault("responses", {})
            scopes = scopes_of.get((path, method.upper()))
            if "422" in responses or operation.get("parameters") or operation.get("requestBody"):
                responses["422"] = _response(
                    "the request does not fit the schema, or a rule refuses a value", ValidationErrorOut
                )
            if operation.get("requestBody"):
                responses.setdefault(
                    "400", _response("the body cannot be parsed (malformed JSON or multipart)", ErrorOut)
                )
            if scopes:
                needed = " or ".join(f"`{scope}`" for scope in scopes)
                operation["description"] = (
                    f"{operation.get('description', '').rstrip()}\n\nNeeds a key with the {needed} scope (or admin)."
                ).lstrip()
                responses.setdefault(
                    "401",
                    _response(
                        "no key, or a wrong or revoked one",
                        ErrorOut,
                        {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
                    ),
                )
                responses.setdefault("403", _response(f"the key lacks the {needed} scope", ErrorOut))
                if any(scope in ("search", "upload") for scope in scopes):
                    responses.setdefault(
                        "429",
                        _response(
                            "over the key's rate limit (per client address without a key)", ErrorOut, _RETRY_AFTER
                        ),
                    )
            if path.startswith("/v1/"):
                existing = responses.get("503")
                responses["503"] = _response(
                    (existing or {}).get("description") or "a dependency (the database) is unavailable; retry later",
                    ErrorOut,
                    _RETRY_AFTER,
                )
            responses.setdefault(
                "500", _response("an unexpected error, logged with the request id", InternalErrorOut, _REQUEST_ID)
            )
            for response in responses.values():  # FastAPI's own 422 and any leftover refer to the defaults
                for content in response.get("content", {}).values():
                    if content.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                        content["schema"] = _ref(ValidationErrorOut)

    vector = components.get("VectorSearchIn", {}).get("properties", {}).get("embedding")
    if vector is not None and dimension is not None:
        vector["minItems"] = vector["maxItems"] = dimension
        vector["description"] = f"a query vector from /v1/embeddings/text: {dimension} finite numbers, not all zero"


def install(app: FastAPI, dimension: Callable[[], int | None]) -> None:
    """Serve the amended document at /openapi.json (and to /docs); rebuilt when the model's dimension is known."""
    cache: dict[int | None, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        size = dimension()
        if size not in cache:
            base = copy.deepcopy(FastAPI.openapi(app))
            _amend(base, _route_scopes(app), size)
            cache.clear()
            cache[size] = base
        return cache[size]

    app.openapi = openapi  # type: ignore[method-assign]
