"""Text that clients send, checked once for every route: no NUL or control characters, never blank where a value is
needed. Each check is a pydantic validator with a clear message (422) and a JSON Schema `pattern` that says the
same thing, so the OpenAPI document describes exactly what the API accepts.

Free text (a query, texts to embed, a moderator's reason) may hold tabs and line breaks; one-line values (a title,
a photographer's name, a region, a cursor) may not. Nothing else of Unicode's control characters (C0, DEL, C1) is
accepted anywhere: Postgres cannot store NUL, and the rest only hides what a text says.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

# The same sets as JSON Schema character classes (escapes that Python's re and ECMA regexes both read).
_CONTROL = r"\u0000-\u001f\u007f-\u009f"
_CONTROL_BUT_WHITESPACE = r"\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f"
# One line, no control character.
LINE_PATTERN = f"^[^{_CONTROL}]*$"
# Free text with at least one character that is not whitespace.
FREE_TEXT_PATTERN = f"^[^{_CONTROL_BUT_WHITESPACE}]*[^\\s{_CONTROL}][^{_CONTROL_BUT_WHITESPACE}]*$"
# One line with at least one character that is not whitespace.
NON_BLANK_LINE_PATTERN = f"^[^{_CONTROL}]*[^\\s{_CONTROL}][^{_CONTROL}]*$"

_LINE_BREAKS_AND_TABS = frozenset("\t\n\r")


def refuse_control_characters(value: str, *, allow_whitespace_controls: bool = False) -> str:
    """`value` unchanged, or ValueError naming the first control character (or lone surrogate) and where it is."""
    for position, char in enumerate(value):
        category = unicodedata.category(char)
        if category == "Cc" and not (allow_whitespace_controls and char in _LINE_BREAKS_AND_TABS):
            raise ValueError(f"must not contain control characters (U+{ord(char):04X} at position {position})")
        if category == "Cs":
            raise ValueError(f"must be valid Unicode text (a lone surrogate U+{ord(char):04X} at position {position})")
    return value


def _line(value: str) -> str:
    return refuse_control_characters(value)


def _free_text(value: str) -> str:
    return refuse_control_characters(value, allow_whitespace_controls=True)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


# Annotated types for query parameters and body fields. The validators run before any rule sees the value.
LineText = Annotated[str, AfterValidator(_line), Field(json_schema_extra={"pattern": LINE_PATTERN})]
NonBlankLine = Annotated[
    str, AfterValidator(_line), AfterValidator(_not_blank), Field(json_schema_extra={"pattern": NON_BLANK_LINE_PATTERN})
]
FreeText = Annotated[
    str,
    AfterValidator(_free_text),
    AfterValidator(_not_blank),
    Field(json_schema_extra={"pattern": FREE_TEXT_PATTERN}),
]


def check_line_field(name: str, value: str) -> str:
    """A one-line text field outside pydantic (multipart): ValueError with the field's name."""
    try:
        return refuse_control_characters(value)
    except ValueError as exc:
        raise ValueError(f"`{name}` {exc}") from None


def unset_means_unchanged(*names: str, at_least_one: tuple[str, ...] = ()) -> Callable[[dict[str, Any]], None]:
    """A model's `json_schema_extra` for fields that may be left out but not sent as null: their `default: null`
    is left out of the schema (a null would be refused), and `at_least_one` of the fields must be sent."""

    def amend(schema: dict[str, Any]) -> None:
        for name in names:
            schema.get("properties", {}).get(name, {}).pop("default", None)
        if at_least_one:
            schema["anyOf"] = [{"required": [name]} for name in at_least_one]

    return amend


def _whole_number(value: object) -> object:
    # JSON Schema's "integer" includes 25.0; strict bodies still refuse "25", true and 25.5.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


JsonInteger = Annotated[int, BeforeValidator(_whole_number)]
