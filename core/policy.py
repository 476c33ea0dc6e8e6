"""Query content policy: does a text query ask for children?

In some regions the law forbids showing anything that depicts or describes a child (anyone
under 16) without the parents' consent. Before a text query is embedded, the search asks this
module whether the query asks for children; when it does and the viewer's region is restricted
(``db.policy.region_is_restricted``: the regions live in the database, so SQL consumers and the
API agree), the query is answered with :data:`DISCLAIMER` and no results. Photo titles are
screened by the same function.

The decision is a pure function of the text and the rules file (``core/policy_rules.yaml``,
versioned), plus two dictionaries that ship with their libraries (core/lexicon.py): no model, no
network, no database, no region. It works on whole tokens, never substrings ("kid" does not hit
"kidney"). Before matching, the text goes through these steps, in this order:

1. emoji of children (🧒 👦 👧 👶, any skin tone, inside family sequences) read as child words;
2. Unicode compatibility forms (NFKC), invisible characters, dashes, accents; look-alike letters of
   another script inside a word ("мaльчик" with a Latin a);
3. letters split by separators joined again, only where the joined form is a child word and the
   pieces are not ordinary words themselves ("chil dren", "ki ds", "chil.dren", "k i d s");
4. digits and signs read as letters (3 e/е, 0 o/о, 1 i/l, 4 a/ч, @ a/а, ! i, | l/i, $ s);
5. Russian typed in Latin letters (GOST/ISO 9 without diacritics, and the informal spellings:
   "deti", "rebjonok", "shkolnitsa"), and either language typed on the other keyboard layout;
6. slips: a word of five or more letters one edit (Damerau-Levenshtein, via rapidfuzz) from a child
   word reads as that word, unless it is a real word itself (dictionaries, allow-list).

Age expressions ("a 10 year old", "10-летний", "ten yo", "семилетка", "u12", "grade 3 pupils")
are read by the patterns in the rules file, which also name the words that make a number a span of
time instead ("через 5 лет"). Phrases in which a child word names no child ("child process",
"kid goat", "детская площадка без людей") are listed there too.
"""

from __future__ import annotations

import itertools
import math
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rapidfuzz.distance import DamerauLevenshtein

from core.lexicon import Lexicon, get_lexicon

if TYPE_CHECKING:
    import numpy as np

    from core.moderation import ZeroShotModerator

from core.runtime import runtime

__all__ = [
    "CATEGORY_MINORS",
    "DEFAULT_RULES_PATH",
    "DISCLAIMER",
    "MODEL_TERM_PREFIX",
    "POLICY_FILE_ENV",
    "PolicyDecision",
    "PolicyRulesError",
    "QueryPolicy",
    "check_query",
    "get_query_policy",
    "model_child_score",
    "normalize_query",
    "substitute_symbols",
    "swap_keyboard_layout",
    "transliterations",
    "with_model_opinion",
]

DISCLAIMER: Final[str] = "This image is unavailable in your country in compliance with local laws."
CATEGORY_MINORS: Final[str] = "minors"
DEFAULT_RULES_PATH: Final[Path] = Path(__file__).with_name("policy_rules.yaml")
POLICY_FILE_ENV: Final[str] = "WITHSENSE_POLICY_FILE"
# A matched term added by the model's second opinion: "model:0.87".
MODEL_TERM_PREFIX: Final[str] = "model:"


class PolicyRulesError(ValueError):
    """The rules file is missing, is not valid YAML, or does not follow the schema."""


@dataclass(frozen=True)
class PolicyDecision:
    """What the policy decided about one query.

    ``blocked`` means "blocked wherever the law applies": the caller still checks the region.
    ``matched_terms`` lists, in query order, the lemmas ("child" for "children's") and age
    expressions ("age:10 year old") that describe a child, for logs and audits.
    """

    blocked: bool
    matched_terms: tuple[str, ...]
    rules_version: str
    category: str | None  # "minors" when blocked

    @property
    def describes_minor(self) -> bool:
        return bool(self.matched_terms)

    @property
    def disclaimer(self) -> str | None:
        """The sentence to show instead of results, or None when the query is allowed."""
        return DISCLAIMER if self.blocked else None


# --------------------------------------------------------------------------------------------
# Schema of the rules file. Validated strictly so that a typo fails loudly at load time
# instead of silently disabling a rule.


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Combination(_Strict):
    lemma: str
    first: list[str]
    second: list[str]


class _HeadRules(_Strict):
    exact: list[str] = Field(default_factory=list)
    stems: list[str] = Field(default_factory=list)
    stem_max_ending: int = Field(default=3, ge=0, le=6)


class _ChildFreeRules(_Strict):
    """Things made for children, with no child in them: "children's books", "детская площадка без людей"."""

    # A child word right before one of these (or after "for"/"для" right after one) names no
    # child: furniture, books, toys.
    things: _HeadRules = Field(default_factory=_HeadRules)
    # As `things`, but only with a context below in the query: clothes are shown worn, a
    # playground has children on it, unless the query says otherwise.
    things_in_context: _HeadRules = Field(default_factory=_HeadRules)
    contexts: _HeadRules = Field(default_factory=_HeadRules)
    for_words: list[str] = Field(default_factory=list)
    # Words that may stand between a child word and the thing ("детская деревянная кроватка").
    max_words_between: int = Field(default=0, ge=0, le=3)
    between_endings: list[str] = Field(default_factory=list)


class _LanguageRules(_Strict):
    terms: dict[str, list[str]]
    combinations: list[_Combination] = Field(default_factory=list)
    exceptions: list[str] = Field(default_factory=list)
    animal_modifiers: list[str] = Field(default_factory=list)
    # Words before a child word that say it is absent: "no kids", "без детей".
    negations: list[str] = Field(default_factory=list)
    child_free: _ChildFreeRules = Field(default_factory=_ChildFreeRules)
    transliterate: bool = False
    # Add every case form that pymorphy3's dictionary knows for each lemma (Russian).
    dictionary_forms: bool = False


class _FuzzyRules(_Strict):
    enabled: bool = True
    # Words shorter than this are never read as slips: too many short words are one edit apart.
    min_length: int = Field(default=5, ge=3, le=12)
    # Child words shorter than this are no target (a 5-letter word is one insertion from a 4-letter one).
    min_target_length: int = Field(default=4, ge=2, le=12)
    # Latin spellings of Russian words are noisier: only the longer ones are targets.
    min_transliterated_target_length: int = Field(default=6, ge=2, le=12)
    # A word at least this frequent (wordfreq Zipf) is a real word, never a slip.
    real_word_zipf: float = Field(default=3.0, ge=0, le=8)
    # A rarer word is real too when it is listed at all (at least `listed_zipf`) and is no more than
    # `slip_gap` below the child word: slips are far rarer than the word they miss ("childen" 1.5
    # against "children" 5.5), while "sprigs" is commoner than "sprogs".
    listed_zipf: float = Field(default=1.0, ge=0, le=8)
    slip_gap: float = Field(default=2.0, ge=0, le=8)
    # Real words the dictionaries do not know, or rate too rare.
    allow: list[str] = Field(default_factory=list)
    # Lemmas never reached by a slip.
    exclude_lemmas: list[str] = Field(default_factory=list)


class _JoiningRules(_Strict):
    # Pieces this frequent (Zipf, in either language) are words of their own: "min or" is not "minor".
    common_word_zipf: float = Field(default=3.5, ge=0, le=8)
    common_short_word_zipf: float = Field(default=5.0, ge=0, le=8)
    max_pieces: int = Field(default=4, ge=2, le=8)


class _TransliterationRules(_Strict):
    # A Latin spelling of a Russian form that is this common an English word is not added ("doc" for дочь).
    skip_english_zipf: float = Field(default=3.0, ge=0, le=8)
    keyboard_layout: bool = True


class _AgePatternRules(_Strict):
    id: str
    pattern: str
    unit: Literal["years", "infant", "group", "grade"]
    # Names of `age_contexts` lists: a word of one of them right before (not_after) or right
    # after (not_before) the match shows that the number is no age ("через 5 лет", "5 лет назад").
    not_after: list[str] = Field(default_factory=list)
    not_before: list[str] = Field(default_factory=list)
    # Like not_after, but only for a number spelled out: "twenty five years old" is 25, while in
    # "twenty 8 year old" the digits are the age.
    not_after_spelled: list[str] = Field(default_factory=list)


class _Rules(_Strict):
    version: str = Field(min_length=1)
    category: str = CATEGORY_MINORS
    adult_age: int = Field(ge=1, le=30)
    group_age_limit: int = Field(ge=1, le=30)
    grade_limit: int = Field(ge=0, le=13)
    paradigms: dict[str, list[str]] = Field(default_factory=dict)
    languages: dict[str, _LanguageRules]
    emoji: dict[str, str] = Field(default_factory=dict)
    fuzzy: _FuzzyRules = Field(default_factory=_FuzzyRules)
    joining: _JoiningRules = Field(default_factory=_JoiningRules)
    transliteration: _TransliterationRules = Field(default_factory=_TransliterationRules)
    non_person_heads: _HeadRules = Field(default_factory=_HeadRules)
    aged_things: _HeadRules = Field(default_factory=_HeadRules)
    number_words: dict[str, int] = Field(default_factory=dict)
    ordinal_words: dict[str, int] = Field(default_factory=dict)
    age_contexts: dict[str, list[str]] = Field(default_factory=dict)
    age_patterns: list[_AgePatternRules] = Field(default_factory=list)

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: object) -> object:
        # YAML reads an unquoted 2025.11 as a float; the version is an opaque label.
        return str(value) if isinstance(value, (int, float)) else value


# --------------------------------------------------------------------------------------------
# Normalisation.

# Look-alike letters, both ways. Only applied inside a word that mixes scripts: a whole
# Russian word must stay Russian ("тот" would otherwise read as the English "tot").
_LATIN_TO_CYRILLIC: Final[Mapping[str, str]] = MappingProxyType(
    {
        "a": "а",
        "b": "ь",
        "c": "с",
        "e": "е",
        "h": "һ",
        "i": "і",
        "j": "ј",
        "k": "к",
        "o": "о",
        "p": "р",
        "s": "ѕ",
        "x": "х",
        "y": "у",
        "A": "А",
        "B": "В",
        "C": "С",
        "E": "Е",
        "H": "Н",
        "I": "І",
        "J": "Ј",
        "K": "К",
        "M": "М",
        "O": "О",
        "P": "Р",
        "S": "Ѕ",
        "T": "Т",
        "X": "Х",
        "Y": "У",
        # Greek letters that look like Cyrillic ones.
        "α": "а",
        "ο": "о",
        "ε": "е",
        "ρ": "р",
        "κ": "к",
        "χ": "х",
        "Α": "А",
        "Β": "В",
        "Ε": "Е",
        "Η": "Н",
        "Κ": "К",
        "Μ": "М",
        "Ο": "О",
        "Ρ": "Р",
        "Τ": "Т",
        "Χ": "Х",
    }
)
_CYRILLIC_TO_LATIN: Final[Mapping[str, str]] = MappingProxyType(
    {
        "а": "a",
        "в": "b",
        "г": "r",
        "е": "e",
        "ё": "e",
        "һ": "h",
        "і": "i",
        "ј": "j",
        "к": "k",
        "м": "m",
        "н": "h",
        "о": "o",
        "п": "n",
        "р": "p",
        "с": "c",
        "т": "t",
        "ѕ": "s",
        "у": "y",
        "х": "x",
        "ь": "b",
        "ԁ": "d",
        "ԛ": "q",
        "ԝ": "w",
        "А": "A",
        "В": "B",
        "Е": "E",
        "Н": "H",
        "І": "I",
        "Ј": "J",
        "К": "K",
        "М": "M",
        "О": "O",
        "Р": "P",
        "С": "C",
        "Т": "T",
        "Ѕ": "S",
        "У": "Y",
        "Х": "X",
        # Greek letters that look like Latin ones.
        "α": "a",
        "β": "b",
        "ε": "e",
        "ι": "i",
        "κ": "k",
        "ν": "v",
        "ο": "o",
        "ρ": "p",
        "τ": "t",
        "υ": "u",
        "χ": "x",
        "Α": "A",
        "Β": "B",
        "Ε": "E",
        "Ζ": "Z",
        "Η": "H",
        "Ι": "I",
        "Κ": "K",
        "Μ": "M",
        "Ν": "N",
        "Ο": "O",
        "Ρ": "P",
        "Τ": "T",
        "Υ": "Y",
        "Χ": "X",
    }
)
# Digits and signs written for letters ("k1ds", "b@by", "t33n", "k!ds", "chi|d", "$chool"): only
# tried on words that mix letters with them, so plain numbers stay numbers. Where a sign stands for
# two letters, both readings are tried ("1" is "i" in "k1ds" but "l" in "chi1d").
_LATIN_SYMBOLS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "0": ("o",),
        "1": ("i", "l"),
        "3": ("e",),
        "4": ("a",),
        "5": ("s",),
        "7": ("t",),
        "8": ("b",),
        "@": ("a",),
        "$": ("s",),
        "!": ("i",),
        "|": ("l", "i"),
    }
)
# In a Cyrillic word: 3 is е or з, 4 is ч or а ("маль4ик"), 1 и or л, 0 о, 6 б, @ а or е, ! и.
_CYRILLIC_SYMBOLS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "0": ("о",),
        "1": ("и", "л", "і"),
        "3": ("е", "з"),
        "4": ("ч", "а"),
        "6": ("б",),
        "@": ("а", "е"),
        "!": ("и",),
        "|": ("і",),
    }
)
_SIGNS: Final[str] = "@$!|*"
# Readings of one word with signs: enough for three ambiguous signs in one word.
_MAX_SYMBOL_READINGS: Final[int] = 16

# Russian to Latin as people type it: every usual spelling of each letter is tried, the
# transliteration standards (GOST 7.79 / ISO 9, their diacritics dropped as the query's are:
# č -> c, š -> s, ž -> z, û -> u, â -> a) and the informal ones ("zh", "ch", "sh", "ya", "yu").
_TRANSLIT: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "а": ("a",),
        "б": ("b",),
        "в": ("v",),
        "г": ("g",),
        "д": ("d",),
        "е": ("e",),
        "ё": ("e", "yo", "jo", "io"),
        "ж": ("zh", "j", "z"),
        "з": ("z",),
        "и": ("i",),
        "й": ("y", "i", "j", ""),
        "к": ("k",),
        "л": ("l",),
        "м": ("m",),
        "н": ("n",),
        "о": ("o",),
        "п": ("p",),
        "р": ("r",),
        "с": ("s",),
        "т": ("t",),
        "у": ("u",),
        "ф": ("f",),
        "х": ("kh", "h", "x"),
        "ц": ("ts", "c", "tz"),
        "ч": ("ch", "c"),
        "ш": ("sh", "s"),
        "щ": ("shch", "sch", "sh", "s"),
        "ъ": ("",),
        "ы": ("y", "i"),
        "ь": ("",),
        "э": ("e",),
        "ю": ("yu", "ju", "iu", "u"),
        "я": ("ya", "ja", "ia", "a"),
    }
)
# Fewer spellings per word than this: "несовершеннолетний" has a dozen, none has thousands.
_MAX_TRANSLITERATIONS: Final[int] = 512

# The Russian ЙЦУКЕН keyboard against the US QWERTY one: "ltnb" is "дети" typed with the wrong
# layout, "лшвы" is "kids".
_QWERTY: Final[str] = "qwertyuiop[]asdfghjkl;'zxcvbnm,.`"
_JCUKEN: Final[str] = "йцукенгшщзхъфывапролджэячсмитьбюё"
_TO_JCUKEN: Final[dict[int, int]] = str.maketrans(_QWERTY, _JCUKEN)
_TO_QWERTY: Final[dict[int, int]] = str.maketrans(_JCUKEN, _QWERTY)
_LAYOUT_LATIN_RE: Final[re.Pattern[str]] = re.compile(r"[a-z\[\];',.`]+")
_LAYOUT_CYRILLIC_RE: Final[re.Pattern[str]] = re.compile(r"[а-яё]+")

_DASHES: Final[str] = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"
_APOSTROPHES: Final[str] = "\u2019\u2018\u02bc\u02b9\u0060\u00b4\u2032\uff07"
_DASH_TABLE: Final[dict[int, str]] = {ord(ch): "-" for ch in _DASHES} | {ord(ch): "'" for ch in _APOSTROPHES}
_BREVE: Final[str] = "\u0306"
# A word: letters/digits, with signs inside it standing for letters ("k!ds", "chi|d", "@kids",
# "$chool"), parts joined by hyphens or apostrophes. Currency signs are words of their own, so
# that "under $15" is a price, not an age.
_PART: Final[str] = r"(?:[@$](?=[^\W_]))?[^\W_]+(?:[@$!|*]+[^\W_]+)*"
_COMPOUND_RE: Final[re.Pattern[str]] = re.compile(rf"{_PART}(?:[-']{_PART})*|[$€£¥₽₹¢]")
_JOINER_RE: Final[re.Pattern[str]] = re.compile(r"[-']")
_RUN_RE: Final[re.Pattern[str]] = re.compile(r"(.)\1{2,}")
_LETTER_RUN_RE: Final[re.Pattern[str]] = re.compile(r"[^\W\d_]{2,}")
# The longest word looked for among spaced-out letters ("с т а р ш е к л а с с н и к").
_MAX_SPELLED_LETTERS: Final[int] = 20


@lru_cache(maxsize=4096)
def _script(ch: str) -> str | None:
    if not ch.isalpha():
        return None
    name = unicodedata.name(ch, "")
    for script in ("LATIN", "CYRILLIC", "GREEK"):
        if name.startswith(script):
            return script
    return "OTHER"


def _emoji_table(emoji: Mapping[str, str]) -> dict[int, str]:
    """A str.translate table: each child emoji (one code point) becomes its word, with spaces around it."""
    return {ord(symbol): f" {word} " for symbol, word in emoji.items() if len(symbol) == 1}


def _read_emoji(text: str, table: Mapping[int, str], sequences: Sequence[tuple[str, str]]) -> str:
    """Step 1: child emoji read as words ("👧🏽 portrait" -> " girl 🏽 portrait"); other text unchanged."""
    if text.isascii():
        return text
    for sequence, word in sequences:
        if sequence in text:
            text = text.replace(sequence, f" {word} ")
    return text.translate(table)


def _clean(text: str) -> str:
    """Compatibility forms, no invisible characters, one dash and one apostrophe, no accents.

    Accents are dropped so that "bâby" and stress-marked "де́ти" read plainly; the one mark
    kept is the breve of й, which is a letter of its own in Russian.
    """
    text = unicodedata.normalize("NFKC", text)
    if not text.isascii():
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
        text = text.translate(_DASH_TABLE)
        out: list[str] = []
        for ch in unicodedata.normalize("NFD", text):
            if unicodedata.combining(ch):
                if ch == _BREVE and out and out[-1] in "иИ":
                    out.append(ch)
                continue
            out.append(ch)
        text = unicodedata.normalize("NFC", "".join(out))
    return text


def _fold(text: str) -> str:
    return text.casefold().replace("ё", "е")


def normalize_query(text: str) -> str:
    """The query as the policy reads it: cleaned, folded, words separated by single spaces."""
    return " ".join(_fold(part) for _, parts, _ in _compounds(_clean(text)) for part in parts)


def _compounds(text: str) -> Iterator[tuple[str, list[str], int]]:
    """Yield each hyphenated/apostrophised word with its parts ("pre-teen" -> pre, teen) and offset."""
    for match in _COMPOUND_RE.finditer(text):
        compound = match.group()
        if len(compound) == 1 and not compound.isalnum():
            yield compound, [compound], match.start()
            continue
        # Possessives: "children's" is "children", "kids'" never reaches here with its quote.
        if compound.endswith(("'s", "'S")):
            compound = compound[:-2]
        parts = [part for part in _JOINER_RE.split(compound) if part]
        if parts:
            yield compound, parts, match.start()


def _mixes_scripts(word: str) -> bool:
    scripts = {s for s in map(_script, word) if s is not None}
    return len(scripts) > 1


def _squeezed(word: str) -> set[str]:
    """Stretched letters ("kiiiids", "малыыыш") read as one letter and as two."""
    if not _RUN_RE.search(word):
        return set()
    return {_RUN_RE.sub(r"\1", word), _RUN_RE.sub(r"\1\1", word)}


def substitute_symbols(word: str) -> frozenset[str]:
    """Every reading of ``word`` (folded) with its digits and signs read as letters.

    The table follows the word's script: "k1ds" -> kids, kids with l; "д3ти" -> дети, дзти. A
    word without letters, or without digits and signs, has no other reading (empty set).
    """
    if not any(ch.isalpha() for ch in word) or not any(ch.isdigit() or ch in _SIGNS for ch in word):
        return frozenset()
    cyrillic = any(_script(ch) == "CYRILLIC" for ch in word)
    table = _CYRILLIC_SYMBOLS if cyrillic else _LATIN_SYMBOLS
    choices = [table.get(ch, (ch,)) for ch in word]
    readings = {"".join(combo) for combo in itertools.islice(itertools.product(*choices), _MAX_SYMBOL_READINGS)}
    readings.discard(word)
    return frozenset(readings)


def transliterations(word: str) -> frozenset[str]:
    """Latin spellings of a Russian word ("детский" -> detskiy, detskij, detskii, detsky, ...)."""
    choices = [_TRANSLIT.get(ch, (ch,)) for ch in word.casefold()]
    combos = itertools.islice(itertools.product(*choices), _MAX_TRANSLITERATIONS)
    return frozenset("".join(combo) for combo in combos)


def swap_keyboard_layout(word: str) -> str | None:
    """``word`` as typed with the other keyboard layout ("ltnb" -> "дети", "лшвы" -> "kids"), or None."""
    folded = word.casefold()
    if _LAYOUT_LATIN_RE.fullmatch(folded):
        return folded.translate(_TO_JCUKEN)
    if _LAYOUT_CYRILLIC_RE.fullmatch(folded):
        return folded.translate(_TO_QWERTY)
    return None


@lru_cache(maxsize=16384)
def _word_variants(raw: str) -> frozenset[str]:
    """Every reading of one raw word that the term index is asked about."""
    variants = {_fold(raw)}
    if _mixes_scripts(raw):
        variants.add(_fold("".join(_CYRILLIC_TO_LATIN.get(ch, ch) for ch in raw)))
        variants.add(_fold("".join(_LATIN_TO_CYRILLIC.get(ch, ch) for ch in raw)))
    if any(ch.isdigit() or ch in _SIGNS for ch in raw) and any(ch.isalpha() for ch in raw):
        for variant in list(variants):
            variants |= substitute_symbols(variant)
        # "4kids", "kids2", "@kids": the letters on their own, as a reader sees them.
        variants.update(_LETTER_RUN_RE.findall(_fold(raw)))
    for variant in list(variants):
        variants |= _squeezed(variant)
    return frozenset(variants)


@dataclass(frozen=True)
class _Token:
    raw: str
    variants: frozenset[str]
    latin: str  # the word with look-alike letters read as Latin (for age patterns)
    cyrillic: str  # ... and as Cyrillic
    offset: int = 0  # where its compound starts in the cleaned text


@dataclass(frozen=True)
class _Extra:
    """A candidate word spanning several tokens: "pre-teen" as "preteen", "k i d" as "kid"."""

    start: int
    end: int
    variants: frozenset[str]


def _tokenize(text: str) -> tuple[list[_Token], list[_Extra]]:
    """Tokens of an already cleaned text, and the words that span several of them."""
    tokens: list[_Token] = []
    extras: list[_Extra] = []
    for _compound, parts, offset in _compounds(text):
        start = len(tokens)
        for part in parts:
            tokens.append(_make_token(part, offset))
        if len(parts) > 1:
            # Read whole as well: "new-born" as "newborn", "det'mi" as "detmi".
            extras.append(_Extra(start, len(tokens) - 1, _word_variants("".join(parts))))
    # Spaced-out letters ("k i d s", "c.h.i.l.d"): three or more one-letter tokens in a row,
    # read as every word they spell, since one-letter words ("a k i d", "в д е т и") join in.
    run_start = 0
    for index in range(len(tokens) + 1):
        single = index < len(tokens) and len(tokens[index].raw) == 1 and tokens[index].raw.isalpha()
        if single:
            continue
        for first in range(run_start, index - 2):
            # Built letter by letter: a long run of letters must not cost a full analysis per word.
            typed = latin = cyrillic = ""
            scripts: set[str | None] = set()
            for last in range(first, min(index, first + _MAX_SPELLED_LETTERS)):
                letter = tokens[last].raw
                typed += _fold(letter)
                latin += _fold(_CYRILLIC_TO_LATIN.get(letter, letter))
                cyrillic += _fold(_LATIN_TO_CYRILLIC.get(letter, letter))
                scripts.add(_script(letter))
                if last - first >= 2:
                    spelled = {typed, latin, cyrillic} if len(scripts) > 1 else {typed}
                    extras.append(_Extra(first, last, frozenset(spelled)))
        run_start = index + 1
    return tokens, extras


@lru_cache(maxsize=16384)
def _token_readings(raw: str) -> tuple[frozenset[str], str, str]:
    folded = _fold(raw)
    if _mixes_scripts(raw):
        latin = _fold("".join(_CYRILLIC_TO_LATIN.get(ch, ch) for ch in raw))
        cyrillic = _fold("".join(_LATIN_TO_CYRILLIC.get(ch, ch) for ch in raw))
    else:
        latin = cyrillic = folded
    return _word_variants(raw), latin, cyrillic


def _make_token(raw: str, offset: int = 0) -> _Token:
    variants, latin, cyrillic = _token_readings(raw)
    return _Token(raw=raw, variants=variants, latin=latin, cyrillic=cyrillic, offset=offset)


def _deletions(word: str) -> set[str]:
    """The word and every string one letter shorter: keys of the slip index (a deletion neighbourhood)."""
    return {word} | {word[:i] + word[i + 1 :] for i in range(len(word))}


def _is_letters(word: str) -> bool:
    return word.isalpha()


# --------------------------------------------------------------------------------------------
# The policy.

Phrase = tuple[str, ...]


@dataclass(frozen=True)
class _AgePattern:
    id: str
    regex: re.Pattern[str]
    unit: Literal["years", "infant", "group", "grade"]
    not_after: frozenset[str] = frozenset()
    not_before: frozenset[str] = frozenset()
    not_after_spelled: frozenset[str] = frozenset()
    # A pattern with a number matches only where the query has a digit or a number word: skipped otherwise.
    needs_number: bool = True


@dataclass(frozen=True)
class _Hit:
    label: str
    start: int
    end: int
    lemma_key: str | None  # the term's "language:lemma"; None for an age


@dataclass(frozen=True)
class _Heads:
    """Nouns of one kind (animals, things with an age, things for children): English words, phrases, Russian stems."""

    words: frozenset[str]
    phrases: Mapping[str, tuple[Phrase, ...]]
    stems: frozenset[str]
    stem_max_ending: int

    @classmethod
    def compile(cls, rules: _HeadRules) -> _Heads:
        words: set[str] = set()
        phrases: dict[str, list[Phrase]] = {}
        for head in rules.exact:
            folded = tuple(_fold(word) for word in head.split())
            if len(folded) == 1:
                words.add(folded[0])
            elif folded:
                phrases.setdefault(folded[0], []).append(folded)
        return cls(
            words=frozenset(words),
            phrases=MappingProxyType({k: tuple(v) for k, v in phrases.items()}),
            stems=frozenset(_fold(stem) for stem in rules.stems),
            stem_max_ending=rules.stem_max_ending,
        )

    def _is_head_word(self, word: str) -> bool:
        if word in self.words:
            return True
        # A Russian stem plus a short ending: "щенок" is "щен" + "ок".
        if not self.stems:
            return False
        shortest = max(1, len(word) - self.stem_max_ending)
        return any(word[:cut] in self.stems for cut in range(shortest, len(word) + 1))

    def at(self, tokens: Sequence[_Token], index: int) -> bool:
        """Whether one of these nouns ("elephant", "polar bear", "щенок") starts at ``index``."""
        if not 0 <= index < len(tokens):
            return False
        for variant in tokens[index].variants:
            if self._is_head_word(variant):
                return True
            for phrase in self.phrases.get(variant, ()):
                if _phrase_at(tokens, index, phrase):
                    return True
        return False

    def anywhere(self, tokens: Sequence[_Token]) -> bool:
        return any(self.at(tokens, index) for index in range(len(tokens)))


@dataclass(frozen=True)
class _ChildFree:
    """One language's "for children, no child" rules, compiled."""

    things: _Heads
    things_in_context: _Heads
    contexts: _Heads
    for_words: frozenset[str]
    max_words_between: int
    between_endings: tuple[str, ...]

    @classmethod
    def compile(cls, rules: _ChildFreeRules) -> _ChildFree:
        return cls(
            things=_Heads.compile(rules.things),
            things_in_context=_Heads.compile(rules.things_in_context),
            contexts=_Heads.compile(rules.contexts),
            for_words=frozenset(_fold(word) for word in rules.for_words),
            max_words_between=rules.max_words_between,
            between_endings=tuple(_fold(ending) for ending in rules.between_endings),
        )

    def _between(self, token: _Token) -> bool:
        """A word that may stand between a child word and its thing: an adjective, by its ending."""
        word = _fold(token.raw)
        return len(word) > 3 and word.endswith(self.between_endings)

    def _thing_at(self, tokens: Sequence[_Token], index: int) -> Literal["thing", "in_context"] | None:
        if self.things.at(tokens, index):
            return "thing"
        if self.things_in_context.at(tokens, index):
            return "in_context"
        return None

    def names_no_child(self, hit: _Hit, tokens: Sequence[_Token], has_context: bool) -> bool:
        """Whether the child word of ``hit`` only says whom a thing is for ("детская кроватка", "toys for kids")."""
        # The child word in front of the thing, perhaps with adjectives between.
        for gap in range(self.max_words_between + 1):
            head = hit.end + 1 + gap
            if gap and not (head - 1 < len(tokens) and self._between(tokens[head - 1])):
                break
            kind = self._thing_at(tokens, head)
            if kind is not None:
                return kind == "thing" or has_context
        # The thing, then "for"/"для", then the child word (perhaps after adjectives).
        for gap in range(self.max_words_between + 1):
            for_at = hit.start - 1 - gap
            if gap and not (0 <= for_at + 1 < len(tokens) and self._between(tokens[for_at + 1])):
                break
            if for_at >= 1 and not tokens[for_at].variants.isdisjoint(self.for_words):
                kind = self._thing_at(tokens, for_at - 1)
                if kind is not None:
                    return kind == "thing" or has_context
        return False


@dataclass(frozen=True)
class _SlipTarget:
    word: str
    zipf: float  # how common the child word is (wordfreq), to tell a slip from a rare real word


@dataclass(frozen=True)
class QueryPolicy:
    """A loaded, immutable set of rules. Build one with :meth:`QueryPolicy.load`."""

    version: str
    category: str
    adult_age: int
    group_age_limit: int
    grade_limit: int
    source: str
    # Compiled rules; not part of equality or repr (large, and derived from the fields above).
    _single_terms: Mapping[str, tuple[str, str]] = field(repr=False, compare=False)
    _phrase_terms: Mapping[str, tuple[tuple[Phrase, str, str], ...]] = field(repr=False, compare=False)
    _exceptions: Mapping[str, tuple[Phrase, ...]] = field(repr=False, compare=False)
    _animal_modifiers: frozenset[str] = field(repr=False, compare=False)
    _animal_heads: _Heads = field(repr=False, compare=False)
    _thing_heads: _Heads = field(repr=False, compare=False)
    _number_words: Mapping[str, int] = field(repr=False, compare=False)
    _age_patterns: tuple[_AgePattern, ...] = field(repr=False, compare=False)
    _number_trigger: re.Pattern[str] = field(repr=False, compare=False, default=re.compile(r"\d"))
    _emoji_table: Mapping[int, str] = field(repr=False, compare=False, default_factory=dict)
    _emoji_sequences: tuple[tuple[str, str], ...] = field(repr=False, compare=False, default=())
    _negations: Mapping[str, tuple[Phrase, ...]] = field(repr=False, compare=False, default_factory=dict)
    _child_free: Mapping[str, _ChildFree] = field(repr=False, compare=False, default_factory=dict)
    _fuzzy: _FuzzyRules = field(repr=False, compare=False, default_factory=_FuzzyRules)
    _fuzzy_allow: frozenset[str] = field(repr=False, compare=False, default=frozenset())
    _slip_index: Mapping[str, tuple[_SlipTarget, ...]] = field(repr=False, compare=False, default_factory=dict)
    _joining: _JoiningRules = field(repr=False, compare=False, default_factory=_JoiningRules)
    _keyboard_layout: bool = field(repr=False, compare=False, default=True)
    _lexicon: Lexicon | None = field(repr=False, compare=False, default=None)
    # Slips found per word: a query's words repeat across queries; bounded (see _slips).
    _slip_cache: dict[str, frozenset[str]] = field(repr=False, compare=False, default_factory=dict)

    # ---------------------------------------------------------------------------- loading

    @classmethod
    def load(cls, path: Path | None = None) -> QueryPolicy:
        """Read and compile a rules file (the packaged ``policy_rules.yaml`` by default).

        Raises :class:`PolicyRulesError` with the reason when the file cannot be used.
        """
        rules_path = Path(path) if path is not None else DEFAULT_RULES_PATH
        try:
            # The C loader when PyYAML has it: the file is a few thousand nodes.
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            raw = yaml.load(rules_path.read_text(encoding="utf-8"), Loader=loader)
        except OSError as error:
            raise PolicyRulesError(f"cannot read policy rules {rules_path}: {error}") from error
        except yaml.YAMLError as error:
            raise PolicyRulesError(f"policy rules {rules_path} are not valid YAML: {error}") from error
        if not isinstance(raw, dict):
            raise PolicyRulesError(f"policy rules {rules_path} must be a mapping at the top level")
        try:
            rules = _Rules.model_validate(raw)
        except ValidationError as error:
            raise PolicyRulesError(f"policy rules {rules_path} are invalid:\n{error}") from error
        return cls._compile(rules, str(rules_path))

    @classmethod
    def _compile(cls, rules: _Rules, source: str) -> QueryPolicy:
        lexicon = get_lexicon()
        single: dict[str, tuple[str, str]] = {}
        # Latin spellings of Russian forms; only the usual one of each ("rebenok", not "rebjonok") is a slip target.
        transliterated: set[str] = set()
        usual_spellings: set[str] = set()
        phrases: dict[str, list[tuple[Phrase, str, str]]] = {}
        exceptions: dict[str, list[Phrase]] = {}
        modifiers: set[str] = set()
        english_words = {
            _fold(form)
            for lang_rules in rules.languages.values()
            for forms in lang_rules.terms.values()
            for form in forms
            if form.isascii()
        }

        def expand(form: str, where: str) -> list[str]:
            # "stem+paradigm" -> the stem with each ending; anything else is a form as written.
            if "+" not in form:
                return [form]
            stem, _, name = form.partition("+")
            if name not in rules.paradigms:
                raise PolicyRulesError(f"{source}: {where}: unknown paradigm {name!r} in {form!r}")
            return [stem + ending for ending in rules.paradigms[name]]

        def add(form: str, language: str, lemma: str, transliterate: bool) -> None:
            words = tuple(_fold(word) for word in form.split())
            if not words:
                return
            spellings = [words]
            if transliterate and len(words) == 1:
                usual_spellings.add("".join(_TRANSLIT.get(ch, (ch,))[0] for ch in form.strip().casefold()))
                # From the form as written: ё has spellings of its own ("rebyonok").
                for latin in sorted(transliterations(form.strip())):
                    # A spelling that is a common English word ("doc" for дочь) would block that word.
                    if latin in english_words or latin in single:
                        continue
                    if lexicon.zipf(latin, "en") >= rules.transliteration.skip_english_zipf:
                        continue
                    if latin not in single:
                        transliterated.add(latin)
                    single.setdefault(latin, (language, lemma))
            for spelling in spellings:
                if len(spelling) == 1:
                    single.setdefault(spelling[0], (language, lemma))
                    transliterated.discard(spelling[0])
                else:
                    phrases.setdefault(spelling[0], []).append((spelling, language, lemma))

        for language, lang_rules in rules.languages.items():
            for lemma, forms in lang_rules.terms.items():
                if not forms:
                    raise PolicyRulesError(f"{source}: {language}.terms.{lemma} lists no forms")
                expanded_forms = [word for form in forms for word in expand(form, f"{language}.terms.{lemma}")]
                if lang_rules.dictionary_forms:
                    # Every case the dictionary knows, so that a form the file misses still counts.
                    expanded_forms += list(lexicon.russian_lexeme(lemma))
                for expanded in dict.fromkeys(expanded_forms):
                    add(expanded, language, lemma, lang_rules.transliterate)
            for combo in lang_rules.combinations:
                where = f"{language}.combinations.{combo.lemma}"
                firsts = [w for form in combo.first for w in expand(form, where)]
                seconds = [w for form in combo.second for w in expand(form, where)]
                for first, second in itertools.product(firsts, seconds):
                    add(f"{first} {second}", language, combo.lemma, False)
            for phrase in lang_rules.exceptions:
                words = tuple(_fold(word) for word in phrase.split())
                if words:
                    exceptions.setdefault(words[0], []).append(words)
            for lemma in lang_rules.animal_modifiers:
                if lemma not in lang_rules.terms:
                    raise PolicyRulesError(
                        f"{source}: {language}.animal_modifiers names {lemma!r}, which is not a term"
                    )
                modifiers.add(f"{language}:{lemma}")

        for symbol, word in rules.emoji.items():
            if _fold(word) not in single:
                raise PolicyRulesError(f"{source}: emoji {symbol!r} stands for {word!r}, which is not a term")

        fuzzy = rules.fuzzy
        excluded = set(fuzzy.exclude_lemmas)
        slip_index: dict[str, list[_SlipTarget]] = {}
        if fuzzy.enabled:
            for word, (_, lemma) in single.items():
                shortest = fuzzy.min_target_length
                if word in transliterated:
                    if word not in usual_spellings:
                        continue
                    shortest = fuzzy.min_transliterated_target_length
                if lemma in excluded or len(word) < shortest or not _is_letters(word):
                    continue
                # A Latin spelling of a Russian word has no English frequency: any listed word near it is real.
                target = _SlipTarget(word, 0.0 if word in transliterated else lexicon.word_zipf(word))
                for key in _deletions(word):
                    slip_index.setdefault(key, []).append(target)

        numbers = {_fold(word): value for word, value in rules.number_words.items()}
        ordinals = {_fold(word): value for word, value in rules.ordinal_words.items()}
        # Longest first, so that "пятнадцати" is not read as "пяти" + junk.
        num_alt = "|".join(re.escape(w) for w in sorted(numbers, key=len, reverse=True))
        ord_alt = "|".join(re.escape(w) for w in sorted(ordinals, key=len, reverse=True))
        num_re = rf"(?P<num>\d{{1,4}}{'|' + num_alt if num_alt else ''})"
        ord_re = rf"(?P<num>\d{{1,2}} ?(?:st|nd|rd|th){'|' + ord_alt if ord_alt else ''})"
        patterns: list[_AgePattern] = []
        for spec in rules.age_patterns:
            text = spec.pattern.replace("<NUM>", num_re).replace("<ORD>", ord_re)
            try:
                regex = re.compile(text)
            except re.error as error:
                raise PolicyRulesError(f"{source}: age pattern {spec.id!r}: {error}") from error
            # Only an infant pattern ("годовалый") may do without a number: any match is a baby.
            if "num" not in regex.groupindex and spec.unit != "infant":
                raise PolicyRulesError(f"{source}: age pattern {spec.id!r} has no <NUM>, <ORD> or (?P<num>)")
            contexts: list[frozenset[str]] = []
            for names in (spec.not_after, spec.not_before, spec.not_after_spelled):
                unknown = [name for name in names if name not in rules.age_contexts]
                if unknown:
                    raise PolicyRulesError(f"{source}: age pattern {spec.id!r} names unknown age_contexts {unknown}")
                contexts.append(frozenset(_fold(w) for name in names for w in rules.age_contexts[name]))
            patterns.append(
                _AgePattern(spec.id, regex, spec.unit, contexts[0], contexts[1], contexts[2], "num" in regex.groupindex)
            )

        return cls(
            version=rules.version,
            category=rules.category,
            adult_age=rules.adult_age,
            group_age_limit=rules.group_age_limit,
            grade_limit=rules.grade_limit,
            source=source,
            _single_terms=MappingProxyType(single),
            _phrase_terms=MappingProxyType({k: tuple(v) for k, v in phrases.items()}),
            _exceptions=MappingProxyType({k: tuple(v) for k, v in exceptions.items()}),
            _animal_modifiers=frozenset(modifiers),
            _animal_heads=_Heads.compile(rules.non_person_heads),
            _thing_heads=_Heads.compile(rules.aged_things),
            _number_words=MappingProxyType({**numbers, **ordinals}),
            _age_patterns=tuple(patterns),
            _number_trigger=re.compile(
                r"\d" + "".join(f"|\\b{re.escape(w)}" for w in sorted({*numbers, *ordinals}, key=len, reverse=True))
            ),
            _emoji_table=MappingProxyType(_emoji_table(rules.emoji)),
            _emoji_sequences=tuple((seq, word) for seq, word in rules.emoji.items() if len(seq) > 1),
            _negations=MappingProxyType(
                {
                    language: tuple(tuple(_fold(w) for w in phrase.split()) for phrase in lang_rules.negations)
                    for language, lang_rules in rules.languages.items()
                }
            ),
            _child_free=MappingProxyType(
                {language: _ChildFree.compile(lang.child_free) for language, lang in rules.languages.items()}
            ),
            _fuzzy=fuzzy,
            _fuzzy_allow=frozenset(_fold(word) for word in fuzzy.allow),
            _slip_index=MappingProxyType({k: tuple(v) for k, v in slip_index.items()}),
            _joining=rules.joining,
            _keyboard_layout=rules.transliteration.keyboard_layout,
            _lexicon=lexicon,
        )

    # ---------------------------------------------------------------------------- deciding

    def check(self, text: str) -> PolicyDecision:
        """Decide one query: blocked (wherever the law applies) when it asks for children."""
        matched = self.matched_terms(text)
        blocked = bool(matched)
        return PolicyDecision(
            blocked=blocked,
            matched_terms=matched,
            rules_version=self.version,
            category=self.category if blocked else None,
        )

    def describes_minor(self, text: str) -> bool:
        """Whether the text asks for or describes a child (also for captions and titles)."""
        return bool(self.matched_terms(text))

    def matched_terms(self, text: str) -> tuple[str, ...]:
        """The lemmas and age expressions in ``text`` that describe a child, in query order."""
        if not isinstance(text, str):
            raise TypeError(f"query text must be str, not {type(text).__name__}")
        cleaned = _clean(_read_emoji(text, self._emoji_table, self._emoji_sequences))
        tokens, extras = _tokenize(cleaned)
        extras += self._joined_pieces(tokens)
        if self._keyboard_layout:
            extras += self._other_layout(cleaned, tokens)
        tokens = self._with_slips(tokens)
        hits = [*self._term_hits(tokens, extras), *self._age_hits(tokens)]
        hits = self._describing(hits, tokens)
        hits.sort(key=lambda hit: (hit.start, hit.end, hit.label))
        return tuple(dict.fromkeys(hit.label for hit in hits))

    def normalized_words(self, text: str) -> tuple[str, ...]:
        """The query's words after every normalisation step, slips included (for logs and tests).

        A word with several readings shows the one that is a child word, if any, else as typed.
        """
        cleaned = _clean(_read_emoji(text, self._emoji_table, self._emoji_sequences))
        tokens, _ = _tokenize(cleaned)
        words: list[str] = []
        for token in self._with_slips(tokens):
            known = sorted(v for v in token.variants if v in self._single_terms)
            words.append(known[0] if known else _fold(token.raw))
        return tuple(words)

    # ---------------------------------------------------------------------------- steps

    def _joined_pieces(self, tokens: Sequence[_Token]) -> list[_Extra]:
        """Letters split by separators ("chil dren", "ki ds", "chil.dren"), joined where that makes a child word.

        Only where the pieces are not all common words: "min or max" is no "minor", and "kid s" adds
        nothing to "kid". Runs of single letters are read by the tokenizer already.
        """
        extras: list[_Extra] = []
        for first in range(len(tokens) - 1):
            joined = tokens[first].raw
            for last in range(first + 1, min(len(tokens), first + self._joining.max_pieces)):
                joined += tokens[last].raw
                # Plain letters of one script (nearly always): one lookup, no readings to build.
                plain = joined.isalpha() and not _mixes_scripts(joined) and not _RUN_RE.search(joined)
                variants = frozenset({_fold(joined)}) if plain else _word_variants(joined)
                if not self._names_a_term(variants):
                    continue
                if all(self._is_common_word(_fold(token.raw)) for token in tokens[first : last + 1]):
                    continue
                extras.append(_Extra(first, last, variants))
        return extras

    def _names_a_term(self, variants: frozenset[str]) -> bool:
        # Hash lookups of the few readings: `isdisjoint` with the mapping would walk all its keys.
        terms = self._single_terms
        return any(variant in terms for variant in variants)

    def _is_common_word(self, word: str) -> bool:
        """A word of its own, not a fragment: "min", "or"; not "ki", "ds", "де", "chil"."""
        if self._lexicon is None:
            return False
        threshold = self._joining.common_word_zipf if len(word) > 2 else self._joining.common_short_word_zipf
        return self._lexicon.zipf(word, "en") >= threshold or self._lexicon.zipf(word, "ru") >= threshold

    def _other_layout(self, cleaned: str, tokens: Sequence[_Token]) -> list[_Extra]:
        """Words typed with the other keyboard layout ("ltnb" for дети, "ht,tyjr" for ребенок)."""
        extras: list[_Extra] = []
        for chunk in re.finditer(r"\S+", cleaned):
            word = chunk.group().casefold()
            if len(word) < 3:
                continue
            for candidate in dict.fromkeys((word, word.rstrip(",.;'`"))):
                swapped = swap_keyboard_layout(candidate)
                if swapped is None or swapped not in self._single_terms:
                    continue
                if self._lexicon is not None and self._lexicon.is_real_word(candidate, self._fuzzy.real_word_zipf):
                    continue
                covered = [i for i, t in enumerate(tokens) if chunk.start() <= t.offset < chunk.end()]
                if covered:
                    extras.append(_Extra(covered[0], covered[-1], frozenset({swapped})))
                break
        return extras

    def _with_slips(self, tokens: Sequence[_Token]) -> list[_Token]:
        """Tokens with the child words they are one slip away from added to their readings."""
        if not self._fuzzy.enabled or not self._slip_index:
            return list(tokens)
        out: list[_Token] = []
        for token in tokens:
            if self._names_a_term(token.variants):
                out.append(token)
                continue
            slips = self._slips(token)
            out.append(replace(token, variants=token.variants | slips) if slips else token)
        return out

    def _slips(self, token: _Token) -> frozenset[str]:
        typed = _fold(token.raw)
        cached = self._slip_cache.get(typed)
        if cached is not None:
            return cached
        found: set[str] = set()
        if typed not in self._fuzzy_allow:
            for variant in sorted(token.variants):
                wildcard = variant.count("*") == 1
                letters = variant.replace("*", "") if wildcard else variant
                if not _is_letters(letters):
                    continue
                if len(variant) < (self._fuzzy.min_length - 1 if wildcard else self._fuzzy.min_length):
                    continue
                targets = self._slip_targets(variant)
                if not targets or variant in self._fuzzy_allow:
                    continue
                # A real word is no slip: "chilled", "точка", "kidney". The word as typed counts too.
                for target in targets:
                    if not wildcard and self._is_real(variant, target.zipf):
                        continue
                    if variant != typed and _is_letters(typed) and self._is_real(typed, target.zipf):
                        continue
                    found.add(target.word)
        result = frozenset(found)
        if len(self._slip_cache) >= 65536:
            self._slip_cache.clear()  # bounded memory; a lost entry is only recomputed
        self._slip_cache[typed] = result
        return result

    def _is_real(self, word: str, target_zipf: float) -> bool:
        """Whether ``word`` is a real word rather than a slip of a child word as common as ``target_zipf``."""
        lexicon = self._lexicon
        if lexicon is None:
            return False
        if lexicon.is_real_word(word, self._fuzzy.real_word_zipf):
            return True
        zipf = lexicon.word_zipf(word)
        return zipf >= self._fuzzy.listed_zipf and zipf >= target_zipf - self._fuzzy.slip_gap

    def _slip_targets(self, word: str) -> set[_SlipTarget]:
        """Child words within one Damerau-Levenshtein edit of ``word``, found through the deletion index."""
        candidates: set[_SlipTarget] = set()
        for key in _deletions(word):
            candidates.update(self._slip_index.get(key, ()))
        return {
            target
            for target in candidates
            if abs(len(target.word) - len(word)) <= 1
            and DamerauLevenshtein.distance(word, target.word, score_cutoff=1) <= 1
        }

    # ---------------------------------------------------------------------------- matching

    def _term_hits(self, tokens: Sequence[_Token], extras: Sequence[_Extra]) -> list[_Hit]:
        found: list[_Hit] = []
        for index, token in enumerate(tokens):
            for variant in sorted(token.variants):
                if variant in self._single_terms:
                    language, lemma = self._single_terms[variant]
                    found.append(_Hit(lemma, index, index, f"{language}:{lemma}"))
                for phrase, language, lemma in self._phrase_terms.get(variant, ()):
                    if _phrase_at(tokens, index, phrase):
                        found.append(_Hit(lemma, index, index + len(phrase) - 1, f"{language}:{lemma}"))
        for extra in extras:
            for variant in sorted(extra.variants):
                if variant in self._single_terms:
                    language, lemma = self._single_terms[variant]
                    found.append(_Hit(lemma, extra.start, extra.end, f"{language}:{lemma}"))
        excepted = self._excepted_spans(tokens)
        return [
            hit
            for hit in found
            if (hit.start, hit.end) not in excepted
            and not (
                hit.lemma_key in self._animal_modifiers
                and (self._animal_heads.at(tokens, hit.end + 1) or self._animal_heads.at(tokens, hit.start - 1))
            )
        ]

    def _excepted_spans(self, tokens: Sequence[_Token]) -> set[tuple[int, int]]:
        """Every (start, end) token span that lies inside an exception phrase."""
        spans: set[tuple[int, int]] = set()
        for index, token in enumerate(tokens):
            for variant in token.variants:
                for phrase in self._exceptions.get(variant, ()):
                    if _phrase_at(tokens, index, phrase):
                        last = index + len(phrase) - 1
                        spans.update((a, b) for a in range(index, last + 1) for b in range(a, last + 1))
        return spans

    def _describing(self, hits: list[_Hit], tokens: Sequence[_Token]) -> list[_Hit]:
        """The hits that describe a child: not negated ("no kids", "без детей"), not only whom a thing is for.

        Things for children count as naming no child only when every other hit does too: "детская
        площадка без людей" is allowed, "дети на детской площадке" is not.
        """
        if not hits:
            return hits
        negated = [hit for hit in hits if self._negated(hit, tokens)]
        kept = [hit for hit in hits if hit not in negated]
        if not kept:
            return []
        has_context = bool(negated) or any(rules.contexts.anywhere(tokens) for rules in self._child_free.values())
        for hit in kept:
            language = hit.lemma_key.partition(":")[0] if hit.lemma_key else None
            rules = self._child_free.get(language) if language else None
            if rules is None or not rules.names_no_child(hit, tokens, has_context):
                return kept
        return []

    def _negated(self, hit: _Hit, tokens: Sequence[_Token]) -> bool:
        if hit.lemma_key is None:
            return False
        for phrase in self._negations.get(hit.lemma_key.partition(":")[0], ()):
            start = hit.start - len(phrase)
            if start >= 0 and _phrase_at(tokens, start, phrase):
                return True
        return False

    def _age_hits(self, tokens: Sequence[_Token]) -> list[_Hit]:
        found: dict[tuple[int, int, str], _Hit] = {}
        # The query read three ways: as typed, and with mixed-script words read as all-Latin
        # or all-Cyrillic ("10-лeтний" with a Latin e); the same reading is searched once.
        readings = dict.fromkeys(
            (
                tuple(_fold(t.raw) for t in tokens),
                tuple(t.latin for t in tokens),
                tuple(t.cyrillic for t in tokens),
            )
        )
        for words in readings:
            starts: list[int] = []
            position = 0
            for word in words:
                starts.append(position)
                position += len(word) + 1
            rendered = " ".join(words)
            # Most queries have no number at all (digits, or a number word starting a word: "семилетка"):
            # then only the patterns without one (годовалый, "a year old") need reading.
            if self._number_trigger.search(rendered):
                patterns: Sequence[_AgePattern] = self._age_patterns
            else:
                patterns = [pattern for pattern in self._age_patterns if not pattern.needs_number]
            for pattern in patterns:
                for match in pattern.regex.finditer(rendered):
                    if not self._age_counts(pattern, match.groupdict().get("num")):
                        continue
                    first = _token_at(starts, match.start())
                    last = _token_at(starts, max(match.start(), match.end() - 1))
                    # "12 year old whisky", "годовалый щенок": the age is not a person's.
                    if any(
                        heads.at(tokens, first - 1) or heads.at(tokens, last + 1)
                        for heads in (self._animal_heads, self._thing_heads)
                    ):
                        continue
                    # "через 5 лет", "5 лет назад", "twenty five years old": a span of time or
                    # part of a larger number, not a child's age.
                    if _word_at(tokens, first - 1, pattern.not_after) or _word_at(tokens, last + 1, pattern.not_before):
                        continue
                    spelled = not (match.groupdict().get("num") or "").strip().isdigit()
                    if spelled and _word_at(tokens, first - 1, pattern.not_after_spelled):
                        continue
                    label = "age:" + " ".join(match.group().split())
                    found.setdefault((first, last, label), _Hit(label, first, last, None))
        # "моложе 12" inside "моложе 12 лет": report the longer reading only. Spans sorted by
        # start, longest first: a span is inside an earlier one when an earlier one ends later.
        kept_spans: set[tuple[int, int]] = set()
        furthest_end = -1
        for start, end in sorted({(hit.start, hit.end) for hit in found.values()}, key=lambda s: (s[0], -s[1])):
            if end > furthest_end:
                kept_spans.add((start, end))
                furthest_end = end
        return [hit for hit in found.values() if (hit.start, hit.end) in kept_spans]

    def _age_counts(self, pattern: _AgePattern, number: str | None) -> bool:
        if pattern.unit == "infant":
            return True
        value = self._number_value(number)
        if value is None:
            return False
        if pattern.unit == "years":
            return value < self.adult_age
        if pattern.unit == "group":
            return 0 < value <= self.group_age_limit
        return 0 < value <= self.grade_limit

    def _number_value(self, number: str | None) -> int | None:
        if number is None:
            return None
        digits = re.match(r"\d+", number)
        if digits:
            return int(digits.group())
        return self._number_words.get(number.strip())


def _phrase_at(tokens: Sequence[_Token], index: int, phrase: Phrase) -> bool:
    if index < 0 or index + len(phrase) > len(tokens):
        return False
    return all(word in tokens[index + offset].variants for offset, word in enumerate(phrase))


def _word_at(tokens: Sequence[_Token], index: int, words: frozenset[str]) -> bool:
    """Whether the token at ``index`` (if any) reads as one of ``words``."""
    return 0 <= index < len(tokens) and not tokens[index].variants.isdisjoint(words)


def _token_at(starts: Sequence[int], offset: int) -> int:
    """Index of the token that contains character ``offset`` of the rendered query."""
    low, high = 0, len(starts) - 1
    while low < high:
        middle = (low + high + 1) // 2
        if starts[middle] <= offset:
            low = middle
        else:
            high = middle - 1
    return low


# --------------------------------------------------------------------------------------------
# The model's second opinion (optional; settings `policy_model_check`, `policy_model_threshold`).


def model_child_score(text_vector: np.ndarray, moderator: ZeroShotModerator) -> float:
    """How much the query's text embedding looks like the zero-shot child prompts that screen images (0..1).

    The same prompts and the same scoring as for a photo (core/moderation.py): the softmax mass of
    the "minor" category's positive prompts. The highest such category counts when there are several.
    """
    verdict = moderator.score(text_vector)
    scores = [score.score for score in verdict.scores if score.effect == "minor"]
    return max(scores) if scores else 0.0


def with_model_opinion(decision: PolicyDecision, score: float, threshold: float) -> PolicyDecision:
    """The decision with the model's opinion added: it may block a query the rules allow, never the reverse."""
    if decision.blocked or not math.isfinite(score) or score < threshold:
        return decision
    return PolicyDecision(
        blocked=True,
        matched_terms=(*decision.matched_terms, f"{MODEL_TERM_PREFIX}{score:.2f}"),
        rules_version=decision.rules_version,
        category=CATEGORY_MINORS,
    )


# --------------------------------------------------------------------------------------------
# The process-wide default.


def _load_configured() -> QueryPolicy:
    from core.settings import get_settings

    return QueryPolicy.load(get_settings().policy_file or DEFAULT_RULES_PATH)


_policy = runtime.slot("query-policy", _load_configured)


def get_query_policy() -> QueryPolicy:
    """The default policy: WITHSENSE_POLICY_FILE if set, else the packaged rules; loaded once per process."""
    return _policy.get()


def check_query(text: str) -> PolicyDecision:
    """Decide ``text`` with the default policy (see :meth:`QueryPolicy.check`)."""
    return get_query_policy().check(text)
