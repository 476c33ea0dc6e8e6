"""The pages' interface strings, one catalogue per language, and the choice of language for a request.

English is the reference catalogue; every other language has exactly the same keys (a test checks it). A string
may hold `{name}` placeholders, filled by `Translator.__call__`. Counted strings have one key per plural form
(`key#one`, `key#few`, `key#many`, `key#other`), chosen by `Translator.plural`.

The minors-law disclaimer is not here: the law requires its exact English sentence in every interface language.
"""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_LANGUAGE = "en"

EN: dict[str, str] = {
    "lang.name": "English",
    "lang.switch": "Interface language",
    "skip": "Skip to content",
    "nav.label": "Main",
    "nav.search": "Search",
    "nav.upload": "Upload",
    "nav.moderation": "Moderation",
    "account.signin": "Sign in",
    "account.signout": "Sign out",
    "account.signed_in_as": "Signed in as {name}",
    "footer.api": "API documentation",
    # Search
    "search.title": "Search photos",
    "search.heading": "Find photos by what they show",
    "search.query": "Describe the photo",
    "search.placeholder": "a dog running on the grass",
    "search.submit": "Search",
    "search.options": "Options",
    "search.k": "Results per page",
    "search.region": "Viewer's country",
    "search.region_hint": "Two-letter code, e.g. DE; empty: the default rules",
    "search.region_default": "default",
    "search.photographer": "Photographer",
    "search.tags": "Tags",
    "search.tags_hint": "Comma-separated; every tag must match",
    "search.date_from": "Uploaded from",
    "search.date_to": "Uploaded until",
    "search.orientation": "Orientation",
    "search.orientation.any": "Any",
    "search.orientation.landscape": "Landscape",
    "search.orientation.portrait": "Portrait",
    "search.orientation.square": "Square",
    "search.mode": "Mode",
    "search.mode.semantic": "By meaning",
    "search.mode.keyword": "By words",
    "search.mode.hybrid": "Both",
    "search.sort": "Sort by",
    "search.sort.relevance": "Best match",
    "search.sort.newest": "Newest first",
    "search.sort.oldest": "Oldest first",
    "search.min_score": "Minimum score",
    "search.apply": "Apply",
    "search.by_image": "Search by image",
    "search.by_image_hint": "Drop an image here or choose a file: photos that look like it",
    "search.by_image_file": "Image to search with",
    "search.by_image_submit": "Find similar photos",
    "search.by_image_results": "Photos that look like your image",
    "search.like_results": "Photos like this one",
    "search.results_for": "Results for “{query}”",
    "search.count#one": "{n} photo",
    "search.count#few": "{n} photos",
    "search.count#many": "{n} photos",
    "search.count#other": "{n} photos",
    "search.none": "No photo matches. Try other words, or fewer filters.",
    "search.empty": "Type what the photo should show, in your own words: nobody needs to have tagged it.",
    "search.more": "Show more",
    "search.next": "Next page",
    "search.like_this": "More like this",
    "search.score": "Score {score}",
    "search.by": "by {name}",
    "search.untitled": "Untitled photo",
    "search.no_scope": "This key may not search. Sign in with a key that has the search scope.",
    # Photo page
    "photo.title": "Photo",
    "photo.details": "Details",
    "photo.photographer": "Photographer",
    "photo.size": "Size",
    "photo.format": "Format",
    "photo.uploaded": "Uploaded",
    "photo.file": "File name",
    "photo.status": "Indexing",
    "photo.error": "Why it failed",
    "photo.moderation": "Moderation",
    "photo.visibility": "Visibility",
    "photo.depicts_minor": "Shows a minor",
    "photo.parental_consent": "Parental consent",
    "photo.unsafe": "Unsafe",
    "photo.yes": "yes",
    "photo.no": "no",
    "photo.similar": "Similar photos",
    "photo.similar_none": "No similar photos yet.",
    "photo.not_ready": "The image appears here once it is indexed.",
    "photo.edit": "Edit",
    "photo.edit_title": "Title",
    "photo.edit_photographer": "Photographer",
    "photo.edit_visibility": "Visibility",
    "photo.public": "Public: shown in search",
    "photo.private": "Private: never in search",
    "photo.save": "Save",
    "photo.saved": "Saved.",
    "photo.delete": "Delete this photo",
    "photo.delete_confirm": "Delete for good: it leaves search at once and its files are removed.",
    "photo.deleted": "The photo was deleted.",
    "photo.audit": "Audit trail",
    "photo.moderate": "Moderate",
    # Statuses
    "status.pending": "waiting",
    "status.processing": "indexing",
    "status.indexed": "indexed",
    "status.failed": "failed",
    "status.uploading": "uploading",
    "status.rejected": "refused",
    "status.queued": "in line",
    "moderation.pending_review": "waiting for review",
    "moderation.approved": "approved",
    "moderation.rejected": "rejected",
    "visibility.public": "public",
    "visibility.private": "private",
    # Upload
    "upload.title": "Upload photos",
    "upload.heading": "Upload photos",
    "upload.files": "Photos",
    "upload.files_hint": "JPEG, PNG, WebP, GIF, TIFF or BMP; choose several at once",
    "upload.photo_title": "Title (optional)",
    "upload.photographer": "Photographer (optional)",
    "upload.declarations": "Declarations",
    "upload.depicts_minor": "These photos show a person under 16",
    "upload.parental_consent": "The parents of every child shown have consented",
    "upload.declarations_hint": "Photos of children without consent are never shown in countries where the law "
    "forbids it.",
    "upload.submit": "Upload",
    "upload.progress": "Progress",
    "upload.uploads": "This upload",
    "upload.duplicate": "already uploaded",
    "upload.done": "Uploaded: indexing starts in the background.",
    "upload.mine": "Your photos",
    "upload.mine_none": "You have not uploaded any photo with this key yet.",
    "upload.older": "Older photos",
    "upload.no_js": "Without JavaScript, upload one photo at a time.",
    "upload.network_error": "the connection failed",
    # Moderation
    "moderation.title": "Moderation queue",
    "moderation.heading": "Moderation queue",
    "moderation.count#one": "{n} photo waits for a decision",
    "moderation.count#few": "{n} photos wait for a decision",
    "moderation.count#many": "{n} photos wait for a decision",
    "moderation.count#other": "{n} photos wait for a decision",
    "moderation.empty": "Nothing waits for a decision.",
    "moderation.scores": "Classifier scores",
    "moderation.flags": "Why it is here",
    "moderation.flag.unsafe": "flagged as unsafe",
    "moderation.flag.minor": "shows a minor",
    "moderation.flag.no_consent": "no parental consent",
    "moderation.flag.consent": "parental consent given",
    "moderation.flag.declared_no_minor": "uploader declared no minor",
    "moderation.flag.declared_minor": "uploader declared a minor",
    "moderation.reason": "Reason (kept in the audit trail)",
    "moderation.reason_placeholder": "why you decide this",
    "moderation.approve": "Approve",
    "moderation.reject": "Reject",
    "moderation.minor": "Shows a minor",
    "moderation.not_minor": "No minor",
    "moderation.consent": "Consent given",
    "moderation.no_consent": "No consent",
    "moderation.audit": "Audit trail",
    "moderation.audit_none": "No entries.",
    "moderation.decided": "Decision recorded for photo {id}; search follows it at once.",
    "moderation.next": "Next page",
    "moderation.first": "First page",
    "audit.classified": "classified",
    "audit.moderated": "moderated",
    "audit.declared": "declared",
    "audit.screened": "screened",
    "audit.deleted": "deleted",
    # Sign-in
    "signin.title": "Sign in",
    "signin.heading": "Sign in with your API key",
    "signin.key": "API key",
    "signin.key_hint": "The key you were given (wsk_…). It is kept in a cookie that scripts cannot read.",
    "signin.submit": "Sign in",
    "signin.invalid": "This key is not valid, or it was revoked.",
    "signin.signed_out": "You are signed out.",
    "signin.needed": "Sign in to see this page.",
    # Errors
    "error.title": "Error {status}",
    "error.403": "This key may not open this page.",
    "error.404": "There is nothing here.",
    "error.csrf": "This form has expired. Reload the page and try again.",
    "error.back": "Back to search",
    "error.generic": "Something went wrong.",
}

RU: dict[str, str] = {
    "lang.name": "Русский",
    "lang.switch": "Язык интерфейса",
    "skip": "Перейти к содержимому",
    "nav.label": "Главное меню",
    "nav.search": "Поиск",
    "nav.upload": "Загрузка",
    "nav.moderation": "Модерация",
    "account.signin": "Войти",
    "account.signout": "Выйти",
    "account.signed_in_as": "Вы вошли как {name}",
    "footer.api": "Документация API",
    "search.title": "Поиск фотографий",
    "search.heading": "Ищите фотографии по тому, что на них",
    "search.query": "Опишите фотографию",
    "search.placeholder": "собака бежит по траве",
    "search.submit": "Найти",
    "search.options": "Параметры",
    "search.k": "Результатов на странице",
    "search.region": "Страна зрителя",
    "search.region_hint": "Двухбуквенный код, например DE; пусто: правила по умолчанию",
    "search.region_default": "по умолчанию",
    "search.photographer": "Фотограф",
    "search.tags": "Теги",
    "search.tags_hint": "Через запятую; должны совпасть все",
    "search.date_from": "Загружены с",
    "search.date_to": "Загружены по",
    "search.orientation": "Ориентация",
    "search.orientation.any": "Любая",
    "search.orientation.landscape": "Альбомная",
    "search.orientation.portrait": "Портретная",
    "search.orientation.square": "Квадрат",
    "search.mode": "Режим",
    "search.mode.semantic": "По смыслу",
    "search.mode.keyword": "По словам",
    "search.mode.hybrid": "Оба",
    "search.sort": "Порядок",
    "search.sort.relevance": "Сначала лучшие",
    "search.sort.newest": "Сначала новые",
    "search.sort.oldest": "Сначала старые",
    "search.min_score": "Минимальная оценка",
    "search.apply": "Применить",
    "search.by_image": "Поиск по изображению",
    "search.by_image_hint": "Перетащите сюда изображение или выберите файл: найдутся похожие фотографии",
    "search.by_image_file": "Изображение для поиска",
    "search.by_image_submit": "Найти похожие",
    "search.by_image_results": "Фотографии, похожие на ваше изображение",
    "search.like_results": "Похожие на эту фотографию",
    "search.results_for": "Результаты по запросу «{query}»",
    "search.count#one": "{n} фотография",
    "search.count#few": "{n} фотографии",
    "search.count#many": "{n} фотографий",
    "search.count#other": "{n} фотографии",
    "search.none": "Ничего не нашлось. Попробуйте другие слова или меньше фильтров.",
    "search.empty": "Опишите своими словами, что должно быть на фотографии: никто не должен был её размечать.",
    "search.more": "Показать ещё",
    "search.next": "Следующая страница",
    "search.like_this": "Похожие",
    "search.score": "Оценка {score}",
    "search.by": "автор: {name}",
    "search.untitled": "Фотография без названия",
    "search.no_scope": "Этому ключу поиск не разрешён. Войдите с ключом, у которого есть право search.",
    "photo.title": "Фотография",
    "photo.details": "Сведения",
    "photo.photographer": "Фотограф",
    "photo.size": "Размер",
    "photo.format": "Формат",
    "photo.uploaded": "Загружена",
    "photo.file": "Имя файла",
    "photo.status": "Индексация",
    "photo.error": "Причина ошибки",
    "photo.moderation": "Модерация",
    "photo.visibility": "Видимость",
    "photo.depicts_minor": "Изображён ребёнок",
    "photo.parental_consent": "Согласие родителей",
    "photo.unsafe": "Недопустимое содержание",
    "photo.yes": "да",
    "photo.no": "нет",
    "photo.similar": "Похожие фотографии",
    "photo.similar_none": "Похожих фотографий пока нет.",
    "photo.not_ready": "Изображение появится здесь после индексации.",
    "photo.edit": "Изменить",
    "photo.edit_title": "Название",
    "photo.edit_photographer": "Фотограф",
    "photo.edit_visibility": "Видимость",
    "photo.public": "Открытая: видна в поиске",
    "photo.private": "Скрытая: никогда не видна в поиске",
    "photo.save": "Сохранить",
    "photo.saved": "Сохранено.",
    "photo.delete": "Удалить фотографию",
    "photo.delete_confirm": "Удалить навсегда: фотография сразу исчезнет из поиска, её файлы будут удалены.",
    "photo.deleted": "Фотография удалена.",
    "photo.audit": "Журнал изменений",
    "photo.moderate": "Модерация",
    "status.pending": "в ожидании",
    "status.processing": "индексируется",
    "status.indexed": "проиндексирована",
    "status.failed": "ошибка",
    "status.uploading": "загружается",
    "status.rejected": "отклонена",
    "status.queued": "в очереди",
    "moderation.pending_review": "ждёт проверки",
    "moderation.approved": "одобрена",
    "moderation.rejected": "отклонена",
    "visibility.public": "открытая",
    "visibility.private": "скрытая",
    "upload.title": "Загрузка фотографий",
    "upload.heading": "Загрузка фотографий",
    "upload.files": "Фотографии",
    "upload.files_hint": "JPEG, PNG, WebP, GIF, TIFF или BMP; можно выбрать несколько сразу",
    "upload.photo_title": "Название (необязательно)",
    "upload.photographer": "Фотограф (необязательно)",
    "upload.declarations": "Заявления",
    "upload.depicts_minor": "На фотографиях есть человек младше 16 лет",
    "upload.parental_consent": "Родители каждого изображённого ребёнка дали согласие",
    "upload.declarations_hint": "Фотографии детей без согласия родителей не показываются в странах, где это "
    "запрещено законом.",
    "upload.submit": "Загрузить",
    "upload.progress": "Ход загрузки",
    "upload.uploads": "Эта загрузка",
    "upload.duplicate": "уже загружена",
    "upload.done": "Загружено: индексация идёт в фоне.",
    "upload.mine": "Ваши фотографии",
    "upload.mine_none": "С этим ключом вы ещё не загрузили ни одной фотографии.",
    "upload.older": "Более ранние",
    "upload.no_js": "Без JavaScript загружайте по одной фотографии.",
    "upload.network_error": "соединение прервалось",
    "moderation.title": "Очередь модерации",
    "moderation.heading": "Очередь модерации",
    "moderation.count#one": "{n} фотография ждёт решения",
    "moderation.count#few": "{n} фотографии ждут решения",
    "moderation.count#many": "{n} фотографий ждут решения",
    "moderation.count#other": "{n} фотографии ждут решения",
    "moderation.empty": "Решений не ждёт ничего.",
    "moderation.scores": "Оценки классификатора",
    "moderation.flags": "Почему здесь",
    "moderation.flag.unsafe": "помечена как недопустимая",
    "moderation.flag.minor": "изображён ребёнок",
    "moderation.flag.no_consent": "нет согласия родителей",
    "moderation.flag.consent": "согласие родителей есть",
    "moderation.flag.declared_no_minor": "автор заявил, что детей нет",
    "moderation.flag.declared_minor": "автор заявил, что есть ребёнок",
    "moderation.reason": "Причина (сохраняется в журнале)",
    "moderation.reason_placeholder": "почему вы так решили",
    "moderation.approve": "Одобрить",
    "moderation.reject": "Отклонить",
    "moderation.minor": "Есть ребёнок",
    "moderation.not_minor": "Детей нет",
    "moderation.consent": "Согласие есть",
    "moderation.no_consent": "Согласия нет",
    "moderation.audit": "Журнал изменений",
    "moderation.audit_none": "Записей нет.",
    "moderation.decided": "Решение по фотографии {id} записано; поиск учитывает его сразу.",
    "moderation.next": "Следующая страница",
    "moderation.first": "Первая страница",
    "audit.classified": "классифицирована",
    "audit.moderated": "решение модератора",
    "audit.declared": "заявление автора",
    "audit.screened": "проверка текста",
    "audit.deleted": "удалена",
    "signin.title": "Вход",
    "signin.heading": "Вход по ключу API",
    "signin.key": "Ключ API",
    "signin.key_hint": "Выданный вам ключ (wsk_…). Он хранится в cookie, недоступной скриптам.",
    "signin.submit": "Войти",
    "signin.invalid": "Ключ неверен или отозван.",
    "signin.signed_out": "Вы вышли.",
    "signin.needed": "Войдите, чтобы открыть эту страницу.",
    "error.title": "Ошибка {status}",
    "error.403": "Этому ключу эта страница недоступна.",
    "error.404": "Здесь ничего нет.",
    "error.csrf": "Форма устарела. Обновите страницу и попробуйте ещё раз.",
    "error.back": "Вернуться к поиску",
    "error.generic": "Что-то пошло не так.",
}

CATALOGUES: dict[str, dict[str, str]] = {"en": EN, "ru": RU}
LANGUAGES = tuple(CATALOGUES)


def _plural_form(language: str, n: int) -> str:
    """CLDR plural categories: English one/other; Russian one/few/many."""
    if language == "ru":
        if n % 10 == 1 and n % 100 != 11:
            return "one"
        if 2 <= n % 10 <= 4 and not 12 <= n % 100 <= 14:
            return "few"
        return "many"
    return "one" if n == 1 else "other"


class Translator:
    """The strings of one language; a missing key falls back to English, then to the key itself."""

    def __init__(self, language: str) -> None:
        self.language = language if language in CATALOGUES else DEFAULT_LANGUAGE
        self._strings = CATALOGUES[self.language]

    def __call__(self, key: str, **values: object) -> str:
        text = self._strings.get(key) or EN.get(key) or key
        return text.format(**values) if values else text

    @staticmethod
    def native(language: str) -> str:
        """A language's own name for itself (the switch's tooltip)."""
        return CATALOGUES.get(language, EN)["lang.name"]

    def plural(self, key: str, n: int, **values: object) -> str:
        return self(f"{key}#{_plural_form(self.language, n)}", n=n, **values)


def negotiate(cookie: str | None, accept_language: str | None) -> str:
    """The interface language: the one chosen with the switch (a cookie), else the best of Accept-Language."""
    if cookie in CATALOGUES:
        return cookie
    best, best_q = DEFAULT_LANGUAGE, 0.0
    for position, item in enumerate((accept_language or "")[:500].split(",")):
        tag, _, params = item.strip().partition(";")
        primary = tag.strip().lower().split("-", 1)[0]
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        q -= position * 1e-6  # equal weights: the first listed wins
        if primary in CATALOGUES and q > best_q:
            best, best_q = primary, q
    return best


def missing_keys(catalogue: Mapping[str, str]) -> set[str]:
    """Keys of the English catalogue that `catalogue` lacks (the plural forms of a key count as that key)."""
    return {key.split("#", 1)[0] for key in EN} - {key.split("#", 1)[0] for key in catalogue}
