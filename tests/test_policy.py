"""The query content policy (core/policy.py + core/policy_rules.yaml), table by table.

Every table row is one query and what the policy must say about it; a row that fails names
the query. The rules file under test is the real one that ships with the service.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.policy import (
    CATEGORY_MINORS,
    DEFAULT_RULES_PATH,
    DISCLAIMER,
    POLICY_FILE_ENV,
    PolicyDecision,
    PolicyRulesError,
    QueryPolicy,
    check_query,
    get_query_policy,
    normalize_query,
)
from core.runtime import runtime

RULES: dict[str, Any] = yaml.safe_load(DEFAULT_RULES_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def policy() -> QueryPolicy:
    return QueryPolicy.load()


def _write_rules(tmp_path: Path, rules: dict[str, Any], name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(rules, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _assert_blocked(policy: QueryPolicy, query: str, expected: str) -> None:
    decision = policy.check(query)
    assert decision.blocked, f"{query!r} should be blocked, matched nothing"
    assert decision.category == CATEGORY_MINORS
    assert decision.disclaimer == DISCLAIMER
    assert any(term == expected or term.startswith(expected) for term in decision.matched_terms), (
        f"{query!r} matched {decision.matched_terms}, expected {expected!r}"
    )


def _assert_allowed(policy: QueryPolicy, query: str) -> None:
    decision = policy.check(query)
    assert not decision.blocked, f"{query!r} should be allowed, matched {decision.matched_terms}"
    assert decision.matched_terms == ()
    assert decision.category is None
    assert decision.disclaimer is None


# ------------------------------------------------------------------------------- English words

BLOCKED_EN: list[tuple[str, str]] = [
    ("child", "child"),
    ("a child reading a book", "child"),
    ("children playing football", "child"),
    ("Children's party", "child"),
    ("childrens birthday", "child"),
    ("the childs bike", "child"),
    ("happy childhood memories", "child"),
    ("childcare center", "child"),
    ("grandchildren visiting grandma", "grandchild"),
    ("grandkids at the beach", "grandchild"),
    ("kid", "kid"),
    ("kids", "kid"),
    ("KIDS PLAYING", "kid"),
    ("a kid's drawing", "kid"),
    ("kids' room", "kid"),
    ("kiddo on a bike", "kid"),
    ("kiddie pool", "kid"),
    ("kid-friendly restaurant", "kid"),
    ("Karate Kid", "kid"),
    ("baby", "baby"),
    ("babies sleeping", "baby"),
    ("the baby's room", "baby"),
    ("baby shower", "baby"),
    ("baby with a dog", "baby"),
    ("baby and dog", "baby"),
    ("babysitter", "baby"),
    ("babysitting", "baby"),
    ("toddler", "toddler"),
    ("toddlers on a playground", "toddler"),
    ("infant", "infant"),
    ("infants in a hospital", "infant"),
    ("newborn", "newborn"),
    ("newborns", "newborn"),
    ("new born photo shoot", "newborn"),
    ("new-born", "newborn"),
    ("boy", "boy"),
    ("boys", "boy"),
    ("a boy's bike", "boy"),
    ("boy scout", "boy"),
    ("girl", "girl"),
    ("girls", "girl"),
    ("little girls in dresses", "girl"),
    ("girls night out", "girl"),
    ("teen", "teen"),
    ("teens at a party", "teen"),
    ("teenager", "teen"),
    ("teenagers", "teen"),
    ("teenage girl", "teen"),
    ("teenaged boy", "teen"),
    ("preteen", "preteen"),
    ("pre-teen", "preteen"),
    ("pre teen", "teen"),
    ("tween", "preteen"),
    ("TWEENS", "preteen"),
    ("adolescent", "adolescent"),
    ("adolescents", "adolescent"),
    ("juvenile", "juvenile"),
    ("juvenile delinquent", "juvenile"),
    ("minor", "minor"),
    ("minors", "minor"),
    ("a minor", "minor"),
    ("underage", "minor"),
    ("under-age drinking", "minor"),
    ("schoolboy", "schoolchild"),
    ("schoolgirls", "schoolchild"),
    ("schoolchildren", "schoolchild"),
    ("schoolkids", "schoolchild"),
    ("school kids", "kid"),
    ("preschooler", "preschooler"),
    ("preschoolers painting", "preschooler"),
    ("pre-school", "preschooler"),
    ("middle schoolers", "preschooler"),
    ("pre-K class", "preschooler"),
    ("kindergarten", "kindergarten"),
    ("kindergartners", "kindergarten"),
    ("kinder garten", "kindergarten"),
    ("daycare", "kindergarten"),
    ("day care center", "kindergarten"),
    ("nursery school", "kindergarten"),
    ("youngster", "youngster"),
    ("youngsters", "youngster"),
    ("little one", "little one"),
    ("little ones", "little one"),
    ("tiny tots", "tot"),
    ("cub scouts", "cub scout"),
    ("bairns", "bairn"),
    ("rugrats", "rugrat"),
    ("young son", "young relative"),
    ("little sister", "young relative"),
    ("his little brother", "young relative"),
    ("tiny daughters", "young relative"),
    ("jailbait", "jailbait"),
    ("lolita", "jailbait"),
    ("loli", "jailbait"),
    ("schoolgirl", "schoolchild"),
    # Relations: blocked since 2026.11.30-1 (see JUDGEMENT CALLS in the rules file).
    ("son", "son"),
    ("sons", "son"),
    ("my son's birthday", "son"),
    ("son and father fishing", "son"),
    ("stepson", "son"),
    ("daughter", "daughter"),
    ("daughters", "daughter"),
    ("mother and daughter", "daughter"),
    ("stepdaughter", "daughter"),
    ("grandson", "grandchild"),
    ("granddaughter", "grandchild"),
    ("granddaughters with grandma", "grandchild"),
    # A thing after a child word does not cancel it, as an animal does ("baby elephant").
    ("baby home", "baby"),
    ("newborn home", "newborn"),
    ("baby car seat", "baby"),
    ("kid bike", "kid"),
]


@pytest.mark.parametrize(("query", "expected"), BLOCKED_EN, ids=[q for q, _ in BLOCKED_EN])
def test_english_child_words_are_blocked(policy: QueryPolicy, query: str, expected: str) -> None:
    _assert_blocked(policy, query, expected)


# ------------------------------------------------------------------------------- Russian words

# Every case of each noun and adjective the issue names, and the others in the rules file.
RUSSIAN_FORMS: dict[str, list[str]] = {
    "ребёнок": [
        "ребёнок",
        "ребенок",
        "ребёнка",
        "ребенка",
        "ребёнку",
        "ребенку",
        "ребёнком",
        "ребенком",
        "ребёнке",
        "ребенке",
        "дети",
        "детей",
        "детям",
        "детьми",
        "детях",
        "ребёночек",
        "ребеночка",
    ],
    "детский": [
        "детский",
        "детская",
        "детское",
        "детские",
        "детского",
        "детской",
        "детскому",
        "детскую",
        "детским",
        "детскими",
        "детских",
        "детском",
        "детскою",
    ],
    "детство": ["детство", "детства", "детству", "детством", "детстве"],
    "детка": ["детка", "детки", "деток", "деткам", "детками", "детках", "детку", "деткой"],
    "детишки": ["детишки", "детишек", "детишкам", "детишками", "детишках"],
    "ребятишки": ["ребятишки", "ребятишек", "ребятишкам", "ребятишками", "ребятишках"],
    "ребятня": ["ребятня", "ребятни", "ребятне", "ребятню", "ребятней", "ребятнёй"],
    "детвора": ["детвора", "детворы", "детворе", "детвору", "детворой", "детворою"],
    "дитя": ["дитя", "дитяти", "дитятей", "дитё"],
    "детсад": ["детсад", "детсада", "детсаду", "детсадом", "детсаде", "детсады", "детсадов"],
    "детсадовский": ["детсадовский", "детсадовская", "детсадовских"],
    "детсадовец": ["детсадовец", "детсадовца", "детсадовцы", "детсадовцев"],
    "детдом": ["детдом", "детдома", "детдоме"],
    "малыш": [
        "малыш",
        "малыша",
        "малышу",
        "малышом",
        "малыше",
        "малыши",
        "малышей",
        "малышам",
        "малышами",
        "малышах",
    ],
    "малышка": [
        "малышка",
        "малышки",
        "малышке",
        "малышку",
        "малышкой",
        "малышкою",
        "малышек",
        "малышкам",
        "малышками",
        "малышках",
    ],
    "малышня": ["малышня", "малышни", "малышнёй"],
    "малютка": ["малютка", "малютки", "малюток"],
    "карапуз": ["карапуз", "карапуза", "карапузы", "карапузов"],
    "младенец": [
        "младенец",
        "младенца",
        "младенцу",
        "младенцем",
        "младенце",
        "младенцы",
        "младенцев",
        "младенцам",
        "младенцами",
        "младенцах",
    ],
    "младенческий": ["младенческий", "младенческого"],
    "новорождённый": [
        "новорождённый",
        "новорожденный",
        "новорождённая",
        "новорожденное",
        "новорожденные",
        "новорожденного",
        "новорожденной",
        "новорожденному",
        "новорожденную",
        "новорожденным",
        "новорожденными",
        "новорожденных",
        "новорожденном",
    ],
    "грудничок": ["грудничок", "грудничка", "груднички", "грудничков"],
    "мальчик": [
        "мальчик",
        "мальчика",
        "мальчику",
        "мальчиком",
        "мальчике",
        "мальчики",
        "мальчиков",
        "мальчикам",
        "мальчиками",
        "мальчиках",
    ],
    "мальчишка": ["мальчишка", "мальчишки", "мальчишек", "мальчишкам", "мальчишкой"],
    "мальчуган": ["мальчуган", "мальчугана", "мальчуганы"],
    "мальчонка": ["мальчонка", "мальчонку", "мальчата"],
    "пацан": ["пацан", "пацана", "пацаны", "пацанов", "пацанами"],
    "пацанёнок": ["пацанёнок", "пацаненка", "пацанята", "пацанят"],
    "девочка": [
        "девочка",
        "девочки",
        "девочке",
        "девочку",
        "девочкой",
        "девочкою",
        "девочек",
        "девочкам",
        "девочками",
        "девочках",
    ],
    "девчонка": ["девчонка", "девчонки", "девчонок", "девчонками"],
    "девчушка": ["девчушка", "девчушки", "девчушек"],
    "подросток": [
        "подросток",
        "подростка",
        "подростку",
        "подростком",
        "подростке",
        "подростки",
        "подростков",
        "подросткам",
        "подростками",
        "подростках",
    ],
    "подростковый": ["подростковый", "подростковая", "подростковые", "подросткового"],
    "тинейджер": ["тинейджер", "тинейджеры", "тинейджеров"],
    "школьник": [
        "школьник",
        "школьника",
        "школьнику",
        "школьником",
        "школьнике",
        "школьники",
        "школьников",
        "школьникам",
        "школьниками",
        "школьниках",
    ],
    "школьница": [
        "школьница",
        "школьницы",
        "школьнице",
        "школьницу",
        "школьницей",
        "школьницею",
        "школьниц",
        "школьницам",
        "школьницами",
        "школьницах",
    ],
    "школота": ["школота", "школоты"],
    "дошкольник": ["дошкольник", "дошкольники", "дошкольников"],
    "дошкольница": ["дошкольница", "дошкольниц"],
    "дошкольный": ["дошкольный", "дошкольного", "дошкольное"],
    "старшеклассник": ["старшеклассник", "старшеклассники"],
    "старшеклассница": ["старшеклассница", "старшеклассницы"],
    "первоклассник": ["первоклассник", "первоклассника", "первоклассники", "первоклассников"],
    "первоклассница": ["первоклассница", "первоклассниц"],
    "первоклашка": ["первоклашка", "первоклашки", "первоклашек"],
    "пятиклассник": ["пятиклассник", "пятиклассники"],
    "девятиклассница": ["девятиклассница", "девятиклассницы"],
    "несовершеннолетний": [
        "несовершеннолетний",
        "несовершеннолетняя",
        "несовершеннолетние",
        "несовершеннолетних",
        "несовершеннолетнего",
        "несовершеннолетним",
    ],
    "малолетний": ["малолетний", "малолетние", "малолетних"],
    "малолетка": ["малолетка", "малолетки", "малолеток"],
    "сынишка": ["сынишка", "сынишки", "сынишкой"],
    "дочурка": ["дочурка", "дочурки", "дочурок"],
    "отрок": ["отрок", "отроки"],
    "бэби": ["бэби", "бейби"],
    "сын": [
        "сын",
        "сына",
        "сыну",
        "сыном",
        "сыне",
        "сыновья",
        "сыновей",
        "сыновьям",
        "сыновьями",
        "сыновьях",
        "сыны",
        "сынов",
    ],
    "сынок": ["сынок", "сынка", "сынку", "сынком", "сынки", "сынков"],
    "сыночек": ["сыночек", "сыночка", "сыночки"],
    "дочь": ["дочь", "дочери", "дочерью", "дочерей", "дочерям", "дочерями", "дочерьми", "дочерях"],
    "дочка": ["дочка", "дочки", "дочке", "дочку", "дочкой", "дочек", "дочками"],
    "доченька": ["доченька", "доченьки", "доченьку", "доченькой", "доченек"],
    "внук": ["внук", "внука", "внуку", "внуком", "внуке", "внуки", "внуков", "внукам"],
    "внучка": ["внучка", "внучки", "внучке", "внучку", "внучкой", "внучек", "внучками"],
    "внучок": ["внучок", "внучком", "внучков"],
    "внученька": ["внученька", "внученьку"],
    "лолита": ["лолита", "Лолита", "лолиты", "лолите", "лолиту", "лолитой", "лолит", "лолитами"],
}
BLOCKED_RU: list[tuple[str, str]] = [(form, lemma) for lemma, forms in RUSSIAN_FORMS.items() for form in forms] + [
    ("дети играют в парке", "ребёнок"),
    ("ДЕТИ", "ребёнок"),
    ("дети до 16 лет", "ребёнок"),
    ("мальчик с собакой", "мальчик"),
    ("девочки-подростки", "девочка"),
    ("детский сад", "детский"),
    ("детская площадка", "детский"),
    ("малыш с собакой", "малыш"),
    ("Малыш и Карлсон", "малыш"),
    ("маленький сын", "маленький родственник"),
    ("маленькая дочка", "маленький родственник"),
    ("с маленькой сестрой", "маленький родственник"),
    ("маленьких братьев", "маленький родственник"),
    ("дочь 5 лет", "дочь"),
    ("мама с дочкой", "дочка"),
    ("бабушка с внучкой", "внучка"),
    ("сынок", "сынок"),
    ("малыш дома", "малыш"),  # a thing, not an animal, after малыш
    ("детский сад", "детский"),
]


@pytest.mark.parametrize(("query", "expected"), BLOCKED_RU, ids=[q for q, _ in BLOCKED_RU])
def test_russian_child_words_are_blocked_in_every_case(policy: QueryPolicy, query: str, expected: str) -> None:
    _assert_blocked(policy, query, expected)


TRANSLITERATED: list[tuple[str, str]] = [
    ("deti", "ребёнок"),
    ("detey", "ребёнок"),
    ("detmi", "ребёнок"),
    ("det'mi", "ребёнок"),
    ("rebenok", "ребёнок"),
    ("rebyonok", "ребёнок"),
    ("rebenka", "ребёнок"),
    ("malchik", "мальчик"),
    ("malchiki", "мальчик"),
    ("devochka", "девочка"),
    ("devochki", "девочка"),
    ("detskiy sad", "детский"),
    ("detskij", "детский"),
    ("detskii", "детский"),
    ("malysh", "малыш"),
    ("podrostok", "подросток"),
    ("shkolnitsa", "школьница"),
    ("novorozhdennyy", "новорождённый"),
]


@pytest.mark.parametrize(("query", "expected"), TRANSLITERATED, ids=[q for q, _ in TRANSLITERATED])
def test_russian_typed_in_latin_letters_is_blocked(policy: QueryPolicy, query: str, expected: str) -> None:
    _assert_blocked(policy, query, expected)


# ------------------------------------------------------------------------------- ages

BLOCKED_AGES: list[str] = [
    # A tens word makes a spelled-out number larger, never digits; common adjectives are no era.
    "nude twenty 8 year old",
    "двадцать 7 лет",
    "new age 12",
    "golden age 10",
    "dark age 9",
    "a 10 year old",
    "a 10-year-old",
    "10 years old",
    "ten-year-old",
    "fifteen year old",
    "a 5yo",
    "10 y/o",
    "10 y.o.",
    "10 yrs old",
    "12 year olds",
    "3 years of age",
    "aged 12",
    "at age 8",
    "at the age of 15",
    "ages 3-5",
    "a 6 month old",
    "6-month-old",
    "an 8 week old",
    "a year old",
    "2.5 year old",
    "under 16",
    "under-16s",
    "under 18",
    "under 12 team",
    "under the age of 14",
    "younger than 10",
    "5 and under",
    "U12 football",
    "u-16 squad",
    "first graders",
    "5th-grader",
    "in the 3rd grade",
    "10-летний",
    "10 летняя",
    "10-ти летний",
    "5-х летнего",
    "10летние",
    "пятилетний",
    "десятилетняя",
    "трёхлетнего",
    "одиннадцатилетний",
    "пятнадцатилетняя",
    "годовалый",
    "полугодовалая",
    "полуторагодовалый",
    "3-месячный",
    "двухмесячная",
    "в возрасте 5 лет",
    "в возрасте от 3 лет",
    "в возрасте 3 месяцев",
    "возраст 7",
    "5 лет от роду",
    "до 16 лет",
    "младше 14",
    "моложе 12 лет",
    "ученик 5 класса",
    "ученица 3-го класса",
    "в 7 классе",
    # An age in years, in Russian, wherever it stands.
    "14 лет",
    "12 лет",
    "девушка 15 лет",
    "модель 14 лет",
    "ей 5-ти лет",
    "девушке пяти лет",
    "четырнадцать лет",
    "пятнадцать лет",
    "2 года",
    "1 год",
    "3 годика",
    "лет 12",
    "ей лет двенадцать",
    "двенадцатилетний",
    "12-летний",
    "через год ей будет 15 лет",
    # ... and in English.
    "age 14",
    "model age 14",
    "Age: 5",
    "age five",
    "aged 12",
    "12 yo",
    "12yo",
    "12 y.o.",
    "14 years old",
    "twelve years old",
]


@pytest.mark.parametrize("query", BLOCKED_AGES)
def test_age_expressions_of_children_are_blocked(policy: QueryPolicy, query: str) -> None:
    _assert_blocked(policy, query, "age:")


ALLOWED_AGES: list[str] = [
    "a 16 year old",  # the law says under 16
    "sixteen year old",
    "a 30 year old man",
    "aged 40",
    "at the age of 30",
    "100 year old oak tree",
    "12 year old whisky",
    "scotch whisky aged 12 years",
    "cheddar aged 12 months",
    "a 5 year old car",
    "a year old puppy",
    "6 month old kitten",
    "3 day old bread",
    "under 21",
    "under 15 minutes",
    "under $15",
    "under 15 €",
    "under 100 dollars",
    "ice age 2",
    "all ages a must see",
    "U2 concert",
    "20-летний",
    "в возрасте 30 лет",
    "16-летняя",
    "10-летний коньяк",
    "10-летнего коньяка",
    "10-летний юбилей",
    "пятилетний план",
    "трёхлетний опыт работы",
    "двухлетний стаж",
    "двухмесячный отпуск",
    "годовалый щенок",
    "билет 1 класса",
    # Ages of 16 and more.
    "16 лет",
    "девушка 16 лет",
    "модель 18 лет",
    "шестнадцать лет",
    "лет 20",
    "age 16",
    "model age 18",
    # Things with an age, and spans of time.
    "виски 12 лет",
    "whisky aged 12 years",
    "коньяк 5 лет",
    "12 лет опыта",
    "5 лет брака",
    "гарантия 2 года",
    "компании 10 лет",
    "собаке 5 лет",
    "через 5 лет",
    "за 10 лет",
    "в течение 3 лет",
    "5 лет назад",
    "10 лет спустя",
    "10 лет вместе",
    "3 года подряд",
    "лет 12 назад",
    "plan for 14 years",
    "14 years",  # an English age needs "old", "yo", "aged" or "age"
    "5 years of marriage",
    # A number after a tens word is part of it.
    "двадцать пять лет",
    "тридцати пяти лет",
    "twenty five year old woman",
    "a twenty-five-year-old",
    # Eras and numbered things.
    "Bronze Age 3",
    "Stone Age 2 game",
    "Windows 10",
    "iPhone 14",
    "1990s",
    "the 1990s fashion",
]


@pytest.mark.parametrize("query", ALLOWED_AGES)
def test_ages_of_adults_and_things_are_allowed(policy: QueryPolicy, query: str) -> None:
    _assert_allowed(policy, query)


def test_age_limit_comes_from_the_rules_file(tmp_path: Path) -> None:
    rules = copy.deepcopy(RULES)
    rules["adult_age"] = 18
    stricter = QueryPolicy.load(_write_rules(tmp_path, rules))
    assert stricter.describes_minor("a 17 year old")
    assert not QueryPolicy.load().describes_minor("a 17 year old")


def test_spans_of_time_come_from_the_rules_file(tmp_path: Path) -> None:
    rules = copy.deepcopy(RULES)
    rules["age_contexts"]["ru_time_before"].remove("через")
    rules["age_contexts"]["en_eras"].remove("ice")
    looser = QueryPolicy.load(_write_rules(tmp_path, rules))
    assert looser.check("через 5 лет").matched_terms == ("age:5 лет",)
    assert looser.check("ice age 2").matched_terms == ("age:age 2",)
    assert not QueryPolicy.load().describes_minor("через 5 лет")


def test_things_with_an_age_only_cancel_ages(policy: QueryPolicy) -> None:
    """An animal after "baby" cancels it; a thing does not, but it still makes an age a thing's."""
    assert not policy.describes_minor("baby elephant")
    assert policy.check("baby car").matched_terms == ("baby",)
    assert not policy.describes_minor("a 5 year old car")
    assert policy.check("малыш дома").matched_terms == ("малыш",)
    assert not policy.describes_minor("дому 5 лет")


# ------------------------------------------------------------------------------- disguises

DISGUISED: list[tuple[str, str]] = [
    ("мaльчик", "мальчик"),  # Latin a
    ("рeбeнoк", "ребёнок"),  # Latin e, e, o
    ("дeти", "ребёнок"),  # Latin e
    ("ДEТИ", "ребёнок"),  # Latin capital E
    ("дeвoчкa", "девочка"),
    ("пoдрoстки", "подросток"),
    ("мαльчик", "мальчик"),  # Greek alpha
    ("сhild", "child"),  # Cyrillic с
    ("kіds", "kid"),  # Cyrillic і
    ("Кid", "kid"),  # Cyrillic К
    ("BОY", "boy"),  # Cyrillic О
    ("tееn", "teen"),  # Cyrillic е е
    ("bаby", "baby"),  # Cyrillic а
    ("ΚΙDS", "kid"),  # Greek capitals
    ("ｋｉｄｓ", "kid"),  # fullwidth
    ("𝐤𝐢𝐝𝐬", "kid"),  # mathematical bold
    ("ⓚⓘⓓⓢ", "kid"),  # circled
    ("k\u200bids", "kid"),  # zero-width space
    ("ki\u00adds", "kid"),  # soft hyphen
    ("chi\u2060ld", "child"),  # word joiner
    ("bâby", "baby"),  # accent
    ("дéти", "ребёнок"),  # stress mark
    ("ребе\u0301нок", "ребёнок"),  # combining stress mark
    ("k1ds", "kid"),
    ("b0ys", "boy"),
    ("t33n", "teen"),
    ("b@by", "baby"),
    ("ch1ld", "child"),
    ("4kids", "kid"),
    ("kiiiids", "kid"),
    ("babyyyy", "baby"),
    ("малыыыш", "малыш"),
    ("k i d s", "kid"),
    ("k-i-d-s", "kid"),
    ("c.h.i.l.d", "child"),
    ("д е т и", "ребёнок"),
    ("с h i l d", "child"),  # spaced, with a Cyrillic с
    ("photo of a k i d", "kid"),  # the article joins the spaced letters
    ("фото в д е т с а д у", "детсад"),
    ("#kids", "kid"),
    ("@kids", "kid"),
    ('"kids"', "kid"),
    ("kids!!!", "kid"),
    ("(children)", "child"),
    ("kids\u2019 room", "kid"),  # typographic apostrophe
    ("pre\u2013teen", "preteen"),  # en dash
    ("10\u2014year\u2014old", "age:"),  # em dashes
    ("10-лeтний", "age:"),  # Latin e in an age expression
]


@pytest.mark.parametrize(("query", "expected"), DISGUISED, ids=[repr(q) for q, _ in DISGUISED])
def test_disguised_words_are_still_blocked(policy: QueryPolicy, query: str, expected: str) -> None:
    _assert_blocked(policy, query, expected)


# ------------------------------------------------------------------------------- allowed

ALLOWED: list[str] = [
    # Ordinary photo queries.
    "a dog running on the grass",
    "собака бежит по траве",
    "wedding in the mountains",
    "свадьба в горах",
    "sunset over the sea",
    "закат над морем",
    "old man reading a newspaper",
    "кот на подоконнике",
    "a red circle",
    "city skyline at night",
    "",
    "   ",
    "!!!",
    # Words that merely contain a child word.
    "kidney beans",
    "kidneys",
    "skid marks",
    "skiing",
    "Babylon ruins",
    "babushka",
    "canteen",
    "infantry",
    "miners in a coal mine",
    "boycott",
    "cowboy on a horse",
    "playboy mansion",
    "tomboy",
    "childish behaviour",
    "childlike wonder",
    "childless couple",
    "teapot",
    "детектор дыма",
    "детектив читает газету",
    "детали двигателя",
    "Детройт ночью",
    "детина",
    "ребус",
    "девичник",
    "малая родина",
    "мальдивы",
    # Judgement calls (see the rules file).
    "boyfriend",
    "girlfriend",
    "boyfriend and girlfriend on the beach",
    "sonata",
    "Sony camera",
    "season finale",
    "sonnet",
    "Sonya",
    "son-in-law",
    "daughter-in-law at the wedding",
    "sons-in-law",
    "Sons of Anarchy",
    "Son Heung-min scores",
    "son cubano band",
    "sin city",
    "sine wave",
    "auld lang syne",
    "Лолита Милявская",
    "концерт Лолиты Милявской",
    "Сыны анархии",
    "kidnapping",
    "kidnap",
    "just kidding",
    "young man",
    "young woman",
    "youth hostel",
    "kid leather gloves",
    "handled with kid gloves",
    "baby blue sky",
    "baby's breath bouquet",
    "baby spinach salad",
    "baby grand piano",
    "baby boomers",
    "baby bump",
    "baby elephant",
    "baby polar bear",
    "baby sea turtles",
    "kid goat",
    "juvenile eagle",
    "newborn calf",
    "minor league baseball",
    "minor injuries",
    "sonata in b minor",
    "C minor sonata",
    "F sharp minor",
    "Ursa Minor",
    "teenage mutant ninja turtles",
    "tater tots",
    "inner child",
    "boy band on stage",
    "oh boy",
    "spice girls",
    "sweet sixteen",
    "ребята в офисе",
    "ребят",
    "девушка в красном платье",
    "юноша",
    "молодёжь",
    "Малышев",
    "Девочкин",
    "девочкина",
    "детёныш",
    "детёныши слона",
    "новорождённый телёнок",
    "малыш панды",
    "тот самый",  # all Cyrillic look-alikes: stays Russian, not the English "tot"
    "т о т",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "вот",
]


@pytest.mark.parametrize("query", ALLOWED)
def test_other_queries_are_allowed(policy: QueryPolicy, query: str) -> None:
    _assert_allowed(policy, query)


def test_normalisation_reads_a_query_as_plain_words() -> None:
    assert normalize_query("  Ребёнок's   PRE–teen 10-year-old!") == "ребенок pre teen 10 year old"
    assert normalize_query("ｋｉｄｓ\u200b") == "kids"


# ------------------------------------------------------------------------------- every form in the file


def _declared_forms() -> list[tuple[str, str, str]]:
    forms: list[tuple[str, str, str]] = []
    for language, rules in RULES["languages"].items():
        for lemma, declared in rules["terms"].items():
            for form in declared:
                if "+" in form:
                    stem, _, paradigm = form.partition("+")
                    forms += [(language, lemma, stem + ending) for ending in RULES["paradigms"][paradigm]]
                else:
                    forms.append((language, lemma, form))
    return forms


DECLARED_FORMS = _declared_forms()


def test_the_rules_file_declares_many_forms() -> None:
    assert len(DECLARED_FORMS) > 700


@pytest.mark.parametrize(("language", "lemma", "form"), DECLARED_FORMS, ids=[f for _, _, f in DECLARED_FORMS])
def test_every_declared_form_is_blocked_on_its_own(policy: QueryPolicy, language: str, lemma: str, form: str) -> None:
    decision = policy.check(form)
    assert decision.blocked, f"{language}:{lemma}: form {form!r} is not blocked"
    assert lemma in decision.matched_terms


def test_russian_forms_cover_every_case_the_dictionary_knows(policy: QueryPolicy) -> None:
    """Cross-check against OpenCorpora's dictionary: no case of a Russian lemma is missing."""
    # A test dependency (pyproject.toml, extra `test`): missing, this check fails, never skips.
    try:
        import pymorphy3
    except ImportError as error:  # pragma: no cover - only without the test extra
        pytest.fail(f"pymorphy3 is needed to cross-check the Russian forms: pip install -e '.[test]' ({error})")
    morph = pymorphy3.MorphAnalyzer()
    checked = 0
    missing: dict[str, list[str]] = {}
    for lemma in RULES["languages"]["ru"]["terms"]:
        parses = [
            p for p in morph.parse(lemma) if p.is_known and p.normal_form == lemma and p.tag.POS in {"NOUN", "ADJF"}
        ]
        for parse in parses:
            for form in parse.lexeme:
                if form.tag.POS not in {"NOUN", "ADJF"}:
                    continue  # short forms and comparatives are not how queries name people
                checked += 1
                if not policy.describes_minor(form.word):
                    missing.setdefault(lemma, []).append(form.word)
    assert checked > 500
    assert missing == {}


# ------------------------------------------------------------------------------- versions, files, API


def test_the_decision_reports_the_rules_version(policy: QueryPolicy) -> None:
    assert policy.version == str(RULES["version"])
    assert policy.check("kids").rules_version == policy.version
    assert policy.check("a dog").rules_version == policy.version


def test_the_disclaimer_is_the_sentence_the_law_requires() -> None:
    assert DISCLAIMER == "This image is unavailable in your country in compliance with local laws."


def test_check_query_uses_the_packaged_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(POLICY_FILE_ENV, raising=False)
    runtime.reset()
    decision = check_query("children on a beach")
    assert decision == PolicyDecision(
        blocked=True, matched_terms=("child",), rules_version=str(RULES["version"]), category="minors"
    )
    assert get_query_policy() is get_query_policy(), "the default policy is loaded once"
    assert get_query_policy().source == str(DEFAULT_RULES_PATH)
    assert not check_query("a dog").blocked


def test_a_custom_rules_file_is_used_by_load_and_by_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "custom.yaml"
    path.write_text(
        'version: "test-7"\n'
        "adult_age: 16\n"
        "group_age_limit: 18\n"
        "grade_limit: 9\n"
        "paradigms:\n"
        "  n: [а, и]\n"
        "languages:\n"
        "  xx:\n"
        "    terms:\n"
        "      sprog: [sprog, sprogs, little sprog]\n"
        "      чадо: [чадо, чад+n]\n"
        "age_patterns:\n"
        "  - id: years\n"
        "    pattern: '\\b<NUM> winters\\b'\n"
        "    unit: years\n",
        encoding="utf-8",
    )
    custom = QueryPolicy.load(path)
    assert custom.version == "test-7"
    assert custom.source == str(path)
    assert custom.check("two sprogs").blocked
    assert custom.check("чади").matched_terms == ("чадо",)
    assert custom.check("4 winters").matched_terms == ("age:4 winters",)
    assert not custom.check("kids").blocked, "only the custom file's terms apply"
    assert custom.check("two sprogs").rules_version == "test-7"

    monkeypatch.setenv(POLICY_FILE_ENV, str(path))
    runtime.reset()  # the policy is loaded once per process, from the settings of that moment
    assert get_query_policy().version == "test-7"
    assert check_query("sprogs").blocked
    monkeypatch.delenv(POLICY_FILE_ENV)
    assert get_query_policy().version == "test-7", "loaded once: a changed environment needs a reset"
    runtime.reset()
    assert get_query_policy().version == str(RULES["version"])


def _broken(**changes: Any) -> dict[str, Any]:
    rules = copy.deepcopy(RULES)
    for dotted, value in changes.items():
        target = rules
        *parents, last = dotted.split("__")
        for key in parents:
            target = target[key]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value
    return rules


_DELETE = object()

BROKEN_RULES: list[tuple[str, dict[str, Any], str]] = [
    ("no version", _broken(version=_DELETE), "version"),
    ("empty version", _broken(version=""), "version"),
    ("misspelt key", _broken(adult_agee=16), "adult_agee"),
    ("unknown paradigm", _broken(languages__ru__terms__мальчик=["мальчик+nope"]), "nope"),
    ("empty term", _broken(languages__en__terms__kid=[]), "kid"),
    ("adult age out of range", _broken(adult_age=0), "adult_age"),
    ("bad regex", _broken(age_patterns=[{"id": "x", "pattern": "(<NUM>", "unit": "years"}]), "x"),
    ("pattern without a number", _broken(age_patterns=[{"id": "y", "pattern": "old", "unit": "years"}]), "y"),
    ("bad unit", _broken(age_patterns=[{"id": "z", "pattern": "<NUM>", "unit": "decades"}]), "unit"),
    ("modifier that is no term", _broken(languages__en__animal_modifiers=["puppy"]), "puppy"),
    (
        "unknown age context",
        _broken(age_patterns=[{"id": "w", "pattern": "<NUM> лет", "unit": "years", "not_after": ["nope"]}]),
        "nope",
    ),
    (
        "misspelt age context key",
        _broken(age_patterns=[{"id": "v", "pattern": "<NUM>", "unit": "years", "not_afer": []}]),
        "not_afer",
    ),
]


@pytest.mark.parametrize(("case", "rules", "mentioned"), BROKEN_RULES, ids=[c for c, _, _ in BROKEN_RULES])
def test_a_broken_rules_file_fails_loudly(tmp_path: Path, case: str, rules: dict[str, Any], mentioned: str) -> None:
    with pytest.raises(PolicyRulesError, match=mentioned):
        QueryPolicy.load(_write_rules(tmp_path, rules))


def test_an_unreadable_rules_file_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(PolicyRulesError, match="cannot read"):
        QueryPolicy.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: [unclosed\n", encoding="utf-8")
    with pytest.raises(PolicyRulesError, match="not valid YAML"):
        QueryPolicy.load(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n", encoding="utf-8")
    with pytest.raises(PolicyRulesError, match="mapping"):
        QueryPolicy.load(scalar)


def test_decisions_are_deterministic(policy: QueryPolicy) -> None:
    query = "мaльчик and a 10 year old girl with kids, дети и 5-летний малыш"
    first = policy.check(query)
    assert all(policy.check(query) == first for _ in range(20))
    assert QueryPolicy.load().check(query) == first, "a freshly loaded policy decides the same"
    assert first.matched_terms == ("мальчик", "age:10 year old", "girl", "kid", "ребёнок", "age:5 летний", "малыш")


def test_the_policy_is_immutable_and_refuses_non_text(policy: QueryPolicy) -> None:
    with pytest.raises(AttributeError):
        policy.version = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        policy.check(b"kids")  # type: ignore[arg-type]


def test_a_long_query_is_read_to_the_end(policy: QueryPolicy) -> None:
    padding = "a dog on the grass " * 2000
    assert policy.check(padding + "kids").blocked
    assert not policy.check(padding).blocked


# =============================================================================================
# Issue 12: the ways people actually type. Each normalisation step first, then the lists.

from core.policy import (  # noqa: E402 - grouped with the tests that use them
    MODEL_TERM_PREFIX,
    substitute_symbols,
    swap_keyboard_layout,
    transliterations,
    with_model_opinion,
)

# ------------------------------------------------------------------------------- step 1: emoji

EMOJI_BLOCKED: list[tuple[str, str]] = [
    ("🧒", "child"),
    ("👦 swimming", "boy"),
    ("👧 in a dress", "girl"),
    ("👶 sleeping", "baby"),
    ("👧🏽 portrait", "girl"),  # skin tone
    ("👦🏿", "boy"),
    ("👶🏻👶🏻 twins", "baby"),
    ("👨\u200d👩\u200d👧 family photo", "girl"),  # ZWJ family sequence with a child
    ("👩\u200d👧\u200d👦 at the park", "girl"),
    ("👩\u200d🍼", "baby"),  # woman feeding baby
    ("👪", "child"),
    ("🧒 на пляже", "child"),
]


@pytest.mark.parametrize(("query", "expected"), EMOJI_BLOCKED, ids=[q for q, _ in EMOJI_BLOCKED])
def test_step_1_emoji_of_children_read_as_child_words(policy: QueryPolicy, query: str, expected: str) -> None:
    _assert_blocked(policy, query, expected)


@pytest.mark.parametrize("query", ["🐶 dog", "🍼 bottle", "👨\u200d👩 couple", "🌅", "👵 grandma", "🎈🎉 party"])
def test_step_1_other_emoji_change_nothing(policy: QueryPolicy, query: str) -> None:
    _assert_allowed(policy, query)


def test_an_emoji_must_stand_for_a_term(tmp_path: Path) -> None:
    with pytest.raises(PolicyRulesError, match="emoji"):
        QueryPolicy.load(_write_rules(tmp_path, _broken(emoji={"🧒": "nosuchword"})))


# ------------------------------------------------------------------------------- step 3: separators

SEPARATED: list[tuple[str, str]] = [
    ("chil dren at the beach", "child"),
    ("ki ds in the pool", "kid"),
    ("chil.dren bathing", "child"),
    ("chil_dren", "child"),
    ("tod dler photos", "toddler"),
    ("tee ns at the mall", "teen"),
    ("bab ies", "baby"),
    ("in fants", "infant"),
    ("де ти на пляже", "ребёнок"),
    ("реб енок", "ребёнок"),
    ("школь.ница", "школьница"),
    ("под ростки", "подросток"),
]


@pytest.mark.parametrize(("query", "expected"), SEPARATED, ids=[q for q, _ in SEPARATED])
def test_step_3_separated_letters_are_joined_into_child_words(policy: QueryPolicy, query: str, expected: str) -> None:
    _assert_blocked(policy, query, expected)


@pytest.mark.parametrize("query", ["min or max", "to do list", "be st friends", "grand ma", "tea ns"])
def test_step_3_words_are_not_joined_into_child_words_when_each_is_a_word(policy: QueryPolicy, query: str) -> None:
    _assert_allowed(policy, query)


def test_step_3_joining_changes_nothing_in_a_kids_saddle(policy: QueryPolicy) -> None:
    # "kid s" is no new word: the possessive stays the word "kid", decided exactly as before.
    assert policy.normalized_words("a kid's saddle") == ("a", "kid", "saddle")
    assert policy.check("a kid's saddle").matched_terms == ("kid",)
    assert policy.normalized_words("chil dren") == ("chil", "dren")  # the join is a reading, not a rewrite
    assert policy.check("chil dren").matched_terms == ("child",)


# ------------------------------------------------------------------------------- step 4: signs


def test_step_4_digits_and_signs_read_as_letters_of_the_words_script() -> None:
    assert {"kids", "klds"} <= substitute_symbols("k1ds")
    assert "kids" in substitute_symbols("k!ds")
    assert "child" in substitute_symbols("chi|d")
    assert "school" in substitute_symbols("$chool")
    assert "baby" in substitute_symbols("b@by")
    assert "teen" in substitute_symbols("t33n")
    assert {"дети", "дзти"} <= substitute_symbols("д3ти")
    assert "мальчик" in substitute_symbols("маль4ик")
    assert "ребенок" in substitute_symbols("реб@нок")
    assert "мальчик" in substitute_symbols("мальч1к")
    assert substitute_symbols("1990") == frozenset()  # a number stays a number
    assert substitute_symbols("kids") == frozenset()


SYMBOLS: list[tuple[str, str]] = [
    ("k!ds at the pool", "kid"),
    ("sk00lgirl outfit", "girl"),
    ("ch1ldren", "child"),
    ("$choolgirl", "schoolchild"),
    ("chi|d actor", "child"),
    ("k|ds", "kid"),
    ("g1rls", "girl"),
    ("д3ти в бассейне", "ребёнок"),
    ("реб@нок", "ребёнок"),
    ("маль4ики", "мальчик"),
    ("шк0льница", "школьница"),
    ("ch*ld", "child"),  # a masked letter
]


@pytest.mark.parametrize(("query", "expected"), SYMBOLS, ids=[q for q, _ in SYMBOLS])
def test_step_4_words_written_with_signs_are_blocked(policy: QueryPolicy, query: str, expected: str) -> None:
    _assert_blocked(policy, query, expected)


@pytest.mark.parametrize("query", ["under $15", "top 10", "r2d2", "4x4 truck", "mp3 player", "b2b sales", "wi-fi"])
def test_step_4_numbers_and_prices_stay_what_they_are(policy: QueryPolicy, query: str) -> None:
    _assert_allowed(policy, query)


# ------------------------------------------------------------------------------- step 5: scripts


def test_step_5_transliterations_cover_the_standards_and_the_informal_spellings() -> None:
    assert {"detskiy", "detskij", "detskii"} <= transliterations("детский")
    assert {"devochka", "devocka"} <= transliterations("девочка")  # informal, and ISO 9 without the caron
    assert {"shkolnitsa", "skolnica", "shkolnica"} <= transliterations("школьница")
    assert {"rebyonok", "rebjonok", "rebenok"} <= transliterations("ребёнок")
    assert swap_keyboard_layout("ltnb") == "дети"
    assert swap_keyboard_layout("ht,tyjr") == "ребенок"
    assert swap_keyboard_layout("лшвы") == "kids"
    assert swap_keyboard_layout("дети kids") is None


TRANSLITERATED_12: list[tuple[str, str]] = [
    ("deti na plyazhe", "ребёнок"),
    ("rebjonok", "ребёнок"),
    ("devočka", "девочка"),
    ("škol'nica", "школьница"),
    ("malchiki igrayut", "мальчик"),
    ("ltnb", "ребёнок"),  # дети on the Latin layout
    ("ht,tyjr", "ребёнок"),
    ("vfkmxbr", "мальчик"),
    ("лшвы", "kid"),  # kids on the Russian layout
    ("кидс на пляже", "kid (cyrillic)"),
    ("чайлд модель", "kid (cyrillic)"),
]


@pytest.mark.parametrize(("query", "expected"), TRANSLITERATED_12, ids=[q for q, _ in TRANSLITERATED_12])
def test_step_5_either_script_and_either_layout(policy: QueryPolicy, query: str, expected: str) -> None:
    _assert_blocked(policy, query, expected)


@pytest.mark.parametrize("query", ["doc", "sin city", "ghbdtn", "vfvf", "ljvf", "detail", "malina", "tochka"])
def test_step_5_english_words_and_other_russian_words_stay_allowed(policy: QueryPolicy, query: str) -> None:
    _assert_allowed(policy, query)


# ------------------------------------------------------------------------------- step 6: slips

SLIPS: list[tuple[str, str]] = [
    ("chlidren", "child"),
    ("toddlr", "toddler"),
    ("childern at the beach", "child"),
    ("teenagr", "teen"),
    ("shcoolgirl", "schoolchild"),
    ("newbron", "newborn"),
    ("grils in swimsuits", "girl"),
    ("babby", "baby"),
    ("daugther", "daughter"),
    ("шкальница", "школьница"),
    ("рибенок", "ребёнок"),
    ("девачка", "девочка"),
    ("школьнеца", "школьница"),
    ("малышь", "малыш"),
    ("подросткии", "подросток"),
    ("детеи", "ребёнок"),
    ("шкальницами", "школьница"),  # a form the rules need not spell: pymorphy3 gives every case
]


@pytest.mark.parametrize(("query", "expected"), SLIPS, ids=[q for q, _ in SLIPS])
def test_step_6_one_slip_from_a_child_word_is_blocked(policy: QueryPolicy, query: str, expected: str) -> None:
    _assert_blocked(policy, query, expected)


REAL_NEAR_WORDS: list[str] = [
    "chilled wine",
    "kidney",
    "kinder chocolate",
    "Chile",
    "chilly morning",
    "buoys in the harbour",
    "skids",
    "sprigs of rosemary",
    "tweed jacket",
    "miners",
    "manor house",
    "barbies",
    "точка на карте",
    "бочка",
    "почка",
    "дедки",
    "детокс",
    "бэмби",
    "тиндер",
    "Внуково",
    "Девочкин",
    "дочерняя компания",
    "dtei",  # four letters: too short to be read as a slip
]


@pytest.mark.parametrize("query", REAL_NEAR_WORDS)
def test_step_6_real_words_near_child_words_are_no_slips(policy: QueryPolicy, query: str) -> None:
    _assert_allowed(policy, query)


def test_step_6_slips_can_be_switched_off_in_the_rules(tmp_path: Path) -> None:
    rules = copy.deepcopy(RULES)
    rules["fuzzy"]["enabled"] = False
    strict = QueryPolicy.load(_write_rules(tmp_path, rules))
    assert not strict.describes_minor("chlidren")
    assert strict.describes_minor("children")


def test_step_6_the_allow_list_keeps_a_word_out(tmp_path: Path) -> None:
    rules = copy.deepcopy(RULES)
    rules["fuzzy"]["allow"].append("chlidren")
    looser = QueryPolicy.load(_write_rules(tmp_path, rules))
    assert not looser.describes_minor("chlidren")
    assert looser.describes_minor("childern")


# ------------------------------------------------------------------------------- the lists

GROWN_LISTS: list[tuple[str, str]] = [
    # Loanwords, slang, diminutives.
    ("тинэйджер на скейте", "тинэйджер"),
    ("малявки во дворе", "малявка"),
    ("мелюзга", "мелюзга"),
    ("деточки", "деточка"),
    ("спиногрызы", "спиногрыз"),
    ("пацанчики", "пацанчик"),
    ("годовасик", "годовасик"),
    ("kiddos", "kid"),
    ("tykes", "tyke"),
    ("sprogs", "sprog"),
    ("younglings", "youngling"),
    ("prepubescent", "pubescent"),
    # School grades and pupils.
    ("elementary school pupils", "pupil"),
    ("grade 3 pupils", "age:"),
    ("3rd grade class", "age:"),
    ("year 4 pupils", "age:"),
    ("middle school students", "pupil"),
    ("ученики начальной школы", "ученик начальной школы"),
    ("учащиеся младших классов", "ученик начальной школы"),
    ("первоклашка", "первоклашка"),
    ("пятиклашки", "пятиклашка"),
    ("5-классники", "age:"),
    # Age phrasing.
    ("ten yo", "age:"),
    ("10yo", "age:"),
    ("under 10s", "age:"),
    ("u12 team", "age:"),
    ("12U softball", "age:"),
    ("7 years young", "age:"),
    ("семилетка", "age:"),
    ("трехлетки в ванной", "age:"),
    ("7-летка", "age:"),
    # Youth organisations.
    ("scouts around a campfire", "scout"),
    ("cub scouts", "cub scout"),
    ("little league team", "youth organisation"),
    ("пионеры на линейке", "пионер"),
    ("пионерский лагерь", "пионерский"),
    ("октябрята", "октябрёнок"),
    ("скауты", "скаут"),
]


@pytest.mark.parametrize(("query", "expected"), GROWN_LISTS, ids=[q for q, _ in GROWN_LISTS])
def test_the_grown_lists_block_slang_school_age_and_youth_words(policy: QueryPolicy, query: str, expected: str) -> None:
    _assert_blocked(policy, query, expected)


OTHER_SENSES: list[str] = [
    "child process exited",
    "kill child processes",
    "css child element",
    "parent and child nodes",
    "child theme wordpress",
    "daughter cells mitosis",
    "daughterboard",
    "kid goat",
    "goat kids in a pen",
    "minor chord",
    "minor chord progression",
    "kid rock concert",
    "beastie boys",
    "talent scouts",
    "army scouts",
    "пионеры космонавтики",
    "пионер в области генетики",
    "киндер сюрприз",
    "сталинская пятилетка",
    "пятилетка за четыре года",
    "two yo yos",
    "grade 3 steel",
    "childfree wedding",
    "child-free couple",
]


@pytest.mark.parametrize("query", OTHER_SENSES)
def test_computing_biology_music_and_adult_senses_are_allowed(policy: QueryPolicy, query: str) -> None:
    _assert_allowed(policy, query)


CHILD_FREE: list[str] = [
    "детская площадка без людей",
    "детская одежда на вешалке",
    "пустая детская площадка",
    "детские книги на полке",
    "детская мебель",
    "детская кроватка",
    "одежда для детей на вешалке",
    "игрушки для малышей на полке",
    "детская коляска без ребенка",
    "заброшенный детский сад",
    "children's clothing on a hanger",
    "kids clothes on a rack",
    "playground without people",
    "children's books on a shelf",
    "kids furniture",
    "toys for toddlers",
    "baby crib",
    "empty children's playground",
    "no kids allowed sign",
    "adults only, no children",
    "отель без детей",
]


@pytest.mark.parametrize("query", CHILD_FREE)
def test_things_for_children_with_no_child_in_them_are_allowed(policy: QueryPolicy, query: str) -> None:
    _assert_allowed(policy, query)


WITH_A_CHILD: list[tuple[str, str]] = [
    ("детская площадка", "детский"),  # a playground, said plainly, has children on it
    ("детская площадка с детьми", "ребёнок"),
    ("дети на детской площадке", "ребёнок"),
    ("kids on a playground", "kid"),
    ("children's clothing on a hanger and a girl", "girl"),
    ("детская одежда", "детский"),  # clothes are shown worn
    ("kids' room", "kid"),
    ("a boy with toys", "boy"),
    ("kids with toys", "kid"),
    ("детская площадка без людей, мальчик", "мальчик"),
    ("kids no shoes", "kid"),
    ("children without parents", "child"),
    ("baby car seat", "baby"),
]


@pytest.mark.parametrize(("query", "expected"), WITH_A_CHILD, ids=[q for q, _ in WITH_A_CHILD])
def test_a_thing_for_children_is_blocked_when_the_query_also_shows_a_child(
    policy: QueryPolicy, query: str, expected: str
) -> None:
    _assert_blocked(policy, query, expected)


# ------------------------------------------------------------------------------- version, model, list


def test_the_rules_version_is_bumped_for_issue_12(policy: QueryPolicy) -> None:
    assert policy.version == "2026.12.01-1"
    assert policy.check("chlidren").rules_version == "2026.12.01-1"


def test_the_models_opinion_can_block_and_never_unblock() -> None:
    allowed = PolicyDecision(blocked=False, matched_terms=(), rules_version="v", category=None)
    blocked = PolicyDecision(blocked=True, matched_terms=("kid",), rules_version="v", category=CATEGORY_MINORS)
    assert with_model_opinion(allowed, 0.2, 0.6) == allowed
    flagged = with_model_opinion(allowed, 0.91, 0.6)
    assert flagged.blocked and flagged.category == CATEGORY_MINORS and flagged.disclaimer == DISCLAIMER
    assert flagged.matched_terms == (f"{MODEL_TERM_PREFIX}0.91",) and flagged.rules_version == "v"
    assert with_model_opinion(blocked, 0.0, 0.6) == blocked, "a low score never unblocks what the rules block"
    assert with_model_opinion(allowed, float("nan"), 0.6) == allowed


def test_the_models_child_score_uses_the_image_prompts() -> None:
    import numpy as np

    from core.moderation import ModerationRules, ZeroShotModerator
    from core.policy import model_child_score

    rules = ModerationRules.model_validate(
        {
            "version": "t",
            "temperature": 100.0,
            "categories": {
                "minor": {
                    "effect": "minor",
                    "flag_at": 0.6,
                    "review_at": 0.3,
                    "positive": ["child"],
                    "negative": ["adult"],
                },
                "unsafe": {"effect": "hide", "flag_at": 0.6, "review_at": 0.3, "positive": ["x"], "negative": ["y"]},
            },
        }
    )
    axes = {"child": [1.0, 0.0, 0.0], "adult": [0.0, 1.0, 0.0], "x": [0.0, 0.0, 1.0], "y": [0.0, 1.0, 0.0]}
    moderator = ZeroShotModerator(rules, lambda texts: np.array([axes[t] for t in texts], dtype=np.float32))
    assert model_child_score(np.array([0.9, 0.1, 0.0]), moderator) > 0.99
    assert model_child_score(np.array([0.1, 0.9, 0.0]), moderator) < 0.01
    with pytest.raises(ValueError, match="zero"):
        model_child_score(np.zeros(3), moderator)


def test_the_labelled_list_meets_the_targets_in_each_language(capsys: pytest.CaptureFixture[str]) -> None:
    from evaluation.policy_check import DEFAULT_QUERIES, main, read_queries

    rows = read_queries(DEFAULT_QUERIES)
    for label in ("child", "innocent"):
        assert sum(r.label == label for r in rows) >= 300
        for language in ("en", "ru"):
            kinds = {r.kind for r in rows if r.label == label and r.language == language}
            assert len(kinds) >= 6, (label, language, kinds)
    assert {r.split for r in rows} == {"dev", "holdout"}
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.count("target met") == 2 and "TARGET MISSED" not in out
