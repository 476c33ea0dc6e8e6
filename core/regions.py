"""The viewer's region, read one way everywhere: the API, the CLI and SQL's region_is_restricted().

The rule: trim ASCII spaces, upper-case ASCII letters; a blank value is no region (the default rule '*'
applies). What is left must be an ISO 3166-1 alpha-2 or alpha-3 country code (DE, DEU) or an ISO 3166-2
subdivision of an alpha-2 country (US-CA, GB-ENG, FR-75), which follows its country's rule unless it has one
of its own. SQL applies the same rule (normalise_region() in db/sql/normalise_region/); where this module
refuses a value, SQL reads it as an unknown region and answers "restricted", whatever the default rule says.
So a caller that passes a raw value to SQL never gets a laxer answer than the API gives.
"""

from __future__ import annotations

import re
import unicodedata

# Mirrored in db/sql/region_is_restricted/: tests/test_sql_surface.py runs the same inputs through both.
REGION_CODE = re.compile(r"[A-Z]{2,3}|[A-Z]{2}-[A-Z0-9]{1,3}")
DEFAULT_RULE = "*"
EXAMPLES = "an ISO 3166-1 country code such as DE or DEU, or a subdivision such as US-CA"


class InvalidRegion(ValueError):
    """A region value that is not a region code, or that SQL would read differently than the API."""


def normalise_region(value: str | None) -> str | None:
    """The viewer's region as the minors law reads it, or None for no region. Raises InvalidRegion."""
    code = _normalise(value)
    if code == DEFAULT_RULE:
        raise InvalidRegion("'*' names the default rule, not a viewer's region: send " + EXAMPLES)
    return code


def normalise_rule_region(value: str) -> str:
    """The region of a rule in region_rules: a country code as above, or '*' (the default for unlisted regions).

    Rules are set per country: a subdivision follows its country's rule, so one is refused here.
    """
    code = _normalise(value)
    if code is None:
        raise InvalidRegion(f"a region rule needs a region: {EXAMPLES}, or '*' for the default")
    if "-" in code:
        raise InvalidRegion(
            f"region rules are set per country (or '*'); {code} follows the rule of {code.split('-')[0]}"
        )
    return code


def _normalise(value: str | None) -> str | None:
    if value is None:
        return None
    if any(unicodedata.category(char) in ("Cc", "Cf") for char in value):
        raise InvalidRegion(f"region must not contain control or format characters, got {_shown(value)}")
    if not value.isascii():
        raise InvalidRegion(f"region must be written in ASCII letters ({EXAMPLES}), got {_shown(value)}")
    code = value.strip(" ").upper()
    if not code:
        return None
    if code != DEFAULT_RULE and not REGION_CODE.fullmatch(code):
        raise InvalidRegion(f"region must be {EXAMPLES}, got {_shown(value)}")
    return code


def _shown(value: str) -> str:
    # The value goes back to the client in the error: escaped, and short.
    return repr(value) if len(value) <= 32 else repr(value[:32]) + "..."
