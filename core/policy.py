"""Query content policy: does a text query ask for children?

In some regions the law forbids showing anything that depicts or describes a child (anyone
under 16) without the parents' consent. Before a text query is embedded, the API asks this
module whether the query asks for children; when it does and the viewer's region is restricted
(``db.policy.region_is_restricted``: the regions live in the database, so SQL consumers and the
API agree), the query is answered with :data:`DISCLAIMER` and no results.

The decision is a pure function of the text and the rules file (``core/policy_rules.yaml``,
versioned): no model, no network, no database, no region. It works on whole
tokens, never substrings ("kid" does not hit "kidney"), after undoing the usual disguises:
Unicode compatibility forms, case, ё/е, accents, zero-width characters, Latin/Cyrillic/Greek
look-alike letters mixed in one word ("мaльчик" with a Latin a), digits for letters ("k1ds"),
stretched letters ("kiiids"), spaced letters ("k i d s"), hyphenated and possessive forms,
and Russian typed in Latin letters ("devochka"). Age expressions ("a 10 year old",
"10-летний", "aged 12", "under 16", "14 лет", "age 14") are read by the patterns in the rules
file, which also name the words that make a number a span of time instead ("через 5 лет").
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.runtime import runtime

__all__ = [
    "CATEGORY_MINORS",
    "DEFAULT_RULES_PATH",
    "DISCLAIMER",
    "POLICY_FILE_ENV",
    "PolicyDecision",
    "PolicyRulesError",
    "QueryPolicy",
    "check_query",
    "get_query_policy",
    "normalize_query",
]

DISCLAIMER: Final[str] = "This image is unavailable in your country in compliance with local laws."
CATEGORY_MINORS: Final[str] = "minors"
DEFAULT_RULES_PATH: Final[Path] = Path(__file__).with_name("policy_rules.yaml")
POLICY_FILE_ENV: Final[str] = "WITHSENSE_POLICY_FILE"


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


class _LanguageRules(_Strict):
    terms: dict[str, list[str]]
    combinations: list[_Combination] = Field(default_factory=list)
    exceptions: list[str] = Field(default_factory=list)
    animal_modifiers: list[str] = Field(default_factory=list)
    transliterate: bool = False


class _HeadRules(_Strict):
    exact: list[str] = Field(default_factory=list)
    stems: list[str] = Field(default_factory=list)
    stem_max_ending: int = Field(default=3, ge=0, le=6)


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
# Digits and signs written for letters ("k1ds", "b@by", "t33n"); only tried on words that
# mix letters with them, so plain numbers stay numbers.
_LATIN_LEET: Final[Mapping[str, str]] = MappingProxyType(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a", "$": "s"}
)
# "1" is "i" in "k1ds" but "l" in "chi1d".
_LATIN_LEET_ALT: Final[Mapping[str, str]] = MappingProxyType({**_LATIN_LEET, "1": "l"})
_CYRILLIC_LEET: Final[Mapping[str, str]] = MappingProxyType({"0": "о", "3": "з", "6": "б", "@": "а"})

# Russian to Latin as people type it: every usual spelling of each letter is tried.
_TRANSLIT: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "а": ("a",),
        "б": ("b",),
        "в": ("v",),
        "г": ("g",),
        "д": ("d",),
        "е": ("e",),
        "ё": ("e", "yo", "jo", "io"),
        "ж": ("zh", "j"),
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
        "ч": ("ch",),
        "ш": ("sh",),
        "щ": ("shch", "sch", "sh"),
        "ъ": ("",),
        "ы": ("y", "i"),
        "ь": ("",),
        "э": ("e",),
        "ю": ("yu", "ju", "iu"),
        "я": ("ya", "ja", "ia"),
    }
)

_DASHES: Final[str] = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"
_APOSTROPHES: Final[str] = "\u2019\u2018\u02bc\u02b9\u0060\u00b4\u2032\uff07"
_DASH_TABLE: Final[dict[int, str]] = {ord(ch): "-" for ch in _DASHES} | {ord(ch): "'" for ch in _APOSTROPHES}
_BREVE: Final[str] = "\u0306"
# A word: letters/digits, joined by hyphens, apostrophes or leet signs inside it.
# Currency signs are words of their own, so that "under $15" is a price, not an age.
_COMPOUND_RE: Final[re.Pattern[str]] = re.compile(r"[^\W_]+(?:[-'@$][^\W_]+)*|[$€£¥₽₹¢]")
_JOINER_RE: Final[re.Pattern[str]] = re.compile(r"[-'@$]")
_RUN_RE: Final[re.Pattern[str]] = re.compile(r"(.)\1{2,}")
# The longest word looked for among spaced-out letters ("с т а р ш е к л а с с н и к").
_MAX_SPELLED_LETTERS: Final[int] = 20


def _script(ch: str) -> str | None:
    if not ch.isalpha():
        return None
    name = unicodedata.name(ch, "")
    for script in ("LATIN", "CYRILLIC", "GREEK"):
        if name.startswith(script):
            return script
    return "OTHER"


def _clean(text: str) -> str:
    """Compatibility forms, no invisible characters, one dash and one apostrophe, no accents.

    Accents are dropped so that "bâby" and stress-marked "де́ти" read plainly; the one mark
    kept is the breve of й, which is a letter of its own in Russian.
    """
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    text = text.translate(_DASH_TABLE)
    out: list[str] = []
    for ch in unicodedata.normalize("NFD", text):
        if unicodedata.combining(ch):
            if ch == _BREVE and out and out[-1] in "иИ":
                out.append(ch)
            continue
        out.append(ch)
    return unicodedata.normalize("NFC", "".join(out))


def _fold(text: str) -> str:
    return text.casefold().replace("ё", "е")


def normalize_query(text: str) -> str:
    """The query as the policy reads it: cleaned, folded, words separated by single spaces."""
    return " ".join(_fold(part) for _, parts in _compounds(_clean(text)) for part in parts)


def _compounds(text: str) -> Iterator[tuple[str, list[str]]]:
    """Yield each hyphenated/apostrophised word with its parts ("pre-teen" -> pre, teen)."""
    for match in _COMPOUND_RE.finditer(text):
        compound = match.group()
        if len(compound) == 1 and not compound.isalnum():
            yield compound, [compound]
            continue
        # Possessives: "children's" is "children", "kids'" never reaches here with its quote.
        if compound.endswith(("'s", "'S")):
            compound = compound[:-2]
        parts = [part for part in _JOINER_RE.split(compound) if part]
        if parts:
            yield compound, parts


def _mixes_scripts(word: str) -> bool:
    scripts = {s for s in map(_script, word) if s is not None}
    return len(scripts) > 1


def _squeezed(word: str) -> set[str]:
    """Stretched letters ("kiiiids", "малыыыш") read as one letter and as two."""
    if not _RUN_RE.search(word):
        return set()
    return {_RUN_RE.sub(r"\1", word), _RUN_RE.sub(r"\1\1", word)}


def _word_variants(raw: str) -> frozenset[str]:
    """Every reading of one raw word that the term index is asked about."""
    variants = {_fold(raw)}
    if _mixes_scripts(raw):
        variants.add(_fold("".join(_CYRILLIC_TO_LATIN.get(ch, ch) for ch in raw)))
        variants.add(_fold("".join(_LATIN_TO_CYRILLIC.get(ch, ch) for ch in raw)))
    has_letter = any(ch.isalpha() for ch in raw)
    if has_letter and any(ch.isdigit() or ch in "@$" for ch in raw):
        for variant in list(variants):
            cyrillic = any(_script(ch) == "CYRILLIC" for ch in variant)
            table = _CYRILLIC_LEET if cyrillic else _LATIN_LEET
            variants.add("".join(table.get(ch, ch) for ch in variant))
            if not cyrillic:
                variants.add("".join(_LATIN_LEET_ALT.get(ch, ch) for ch in variant))
        # "4kids", "kids2": the letters on their own, as a reader sees them.
        variants.update(run for run in re.findall(r"[^\W\d_]{2,}", _fold(raw)))
    for variant in list(variants):
        variants |= _squeezed(variant)
    return frozenset(variants)


@dataclass(frozen=True)
class _Token:
    raw: str
    variants: frozenset[str]
    latin: str  # the word with look-alike letters read as Latin (for age patterns)
    cyrillic: str  # ... and as Cyrillic


@dataclass(frozen=True)
class _Extra:
    """A candidate word spanning several tokens: "pre-teen" as "preteen", "k i d" as "kid"."""

    start: int
    end: int
    variants: frozenset[str]


def _tokenize(text: str) -> tuple[list[_Token], list[_Extra]]:
    tokens: list[_Token] = []
    extras: list[_Extra] = []
    for compound, parts in _compounds(_clean(text)):
        start = len(tokens)
        for part in parts:
            tokens.append(_make_token(part))
        if len(parts) > 1:
            # Read whole as well: "new-born" as "newborn", and "b@by" with its @ as a letter.
            joined = "".join(parts)
            with_signs = compound.replace("-", "").replace("'", "")
            variants = _word_variants(joined) | _word_variants(with_signs)
            extras.append(_Extra(start, len(tokens) - 1, variants))
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


def _make_token(raw: str) -> _Token:
    folded = _fold(raw)
    if _mixes_scripts(raw):
        latin = _fold("".join(_CYRILLIC_TO_LATIN.get(ch, ch) for ch in raw))
        cyrillic = _fold("".join(_LATIN_TO_CYRILLIC.get(ch, ch) for ch in raw))
    else:
        latin = cyrillic = folded
    return _Token(raw=raw, variants=_word_variants(raw), latin=latin, cyrillic=cyrillic)


def _transliterations(word: str) -> set[str]:
    """Latin spellings of a Russian word ("детский" -> detskiy, detskij, detskii, detsky, ...)."""
    choices = [_TRANSLIT.get(ch, (ch,)) for ch in word.casefold()]
    return {"".join(combo) for combo in itertools.product(*choices)}


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


@dataclass(frozen=True)
class _Hit:
    label: str
    start: int
    end: int
    lemma_key: str | None  # the term's "language:lemma", for the animal-modifier rule


@dataclass(frozen=True)
class _Heads:
    """Nouns that are never a person: English words and phrases, and Russian stems."""

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
        single: dict[str, tuple[str, str]] = {}
        phrases: dict[str, list[tuple[Phrase, str, str]]] = {}
        exceptions: dict[str, list[Phrase]] = {}
        modifiers: set[str] = set()

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
                spellings += [(latin,) for latin in sorted(_transliterations(form.strip()))]
            for spelling in spellings:
                if len(spelling) == 1:
                    single.setdefault(spelling[0], (language, lemma))
                else:
                    phrases.setdefault(spelling[0], []).append((spelling, language, lemma))

        for language, lang_rules in rules.languages.items():
            for lemma, forms in lang_rules.terms.items():
                if not forms:
                    raise PolicyRulesError(f"{source}: {language}.terms.{lemma} lists no forms")
                for form in forms:
                    for expanded in expand(form, f"{language}.terms.{lemma}"):
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
            patterns.append(_AgePattern(spec.id, regex, spec.unit, contexts[0], contexts[1], contexts[2]))

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
        tokens, extras = _tokenize(text)
        hits = [*self._term_hits(tokens, extras), *self._age_hits(tokens)]
        hits.sort(key=lambda hit: (hit.start, hit.end, hit.label))
        return tuple(dict.fromkeys(hit.label for hit in hits))

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
            and not (hit.lemma_key in self._animal_modifiers and self._animal_heads.at(tokens, hit.end + 1))
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

    def _age_hits(self, tokens: Sequence[_Token]) -> list[_Hit]:
        found: dict[tuple[int, int, str], _Hit] = {}
        # The query read three ways: as typed, and with mixed-script words read as all-Latin
        # or all-Cyrillic ("10-лeтний" with a Latin e).
        for words in (
            [_fold(t.raw) for t in tokens],
            [t.latin for t in tokens],
            [t.cyrillic for t in tokens],
        ):
            starts: list[int] = []
            position = 0
            for word in words:
                starts.append(position)
                position += len(word) + 1
            rendered = " ".join(words)
            for pattern in self._age_patterns:
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
    if index + len(phrase) > len(tokens):
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
