"""Loaders for the seed dataset layout (Flickr8k images with expert and crowd judgements).

The layout, exactly as the proof of concept received it::

    train_dataset.csv       comma-separated, header ``image,query_id,query_text``
    CrowdAnnotations.tsv    tab-separated, no header: image, query_id, share, yes, no
    ExpertAnnotations.tsv   tab-separated, no header: image, query_id, expert_1..3 (1..4)
    test_queries.csv        ``|``-separated, an unnamed index column, then query_id,query_text,image
    train_images/  test_images/

Real files have warts: byte-order marks, stray whitespace, duplicate rows, rows with a field
too many or too few, scores out of range and references to images that are not there. The
loaders never crash on any of these: every wart becomes a :class:`DatasetIssue` in the
:class:`ValidationReport`, and the row is repaired, kept or dropped as its issue says.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

TRAIN_FILE = "train_dataset.csv"
CROWD_FILE = "CrowdAnnotations.tsv"
EXPERT_FILE = "ExpertAnnotations.tsv"
TEST_FILE = "test_queries.csv"
TRAIN_IMAGES_DIR = "train_images"
TEST_IMAGES_DIR = "test_images"

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
EXPERT_COLUMNS = ("expert_1", "expert_2", "expert_3")
EXPERT_MIN, EXPERT_MAX = 1, 4

# "<image file>#<n>": the n-th caption of that image.
QUERY_ID_RE = re.compile(r"^(?P<image>.+?)#(?P<n>\d+)$")

Severity = Literal["info", "warning", "error"]


@dataclass(frozen=True)
class DatasetIssue:
    """One problem found in one file (``line`` is 1-based, None for whole-file issues)."""

    file: str
    line: int | None
    kind: str
    message: str
    severity: Severity = "warning"


@dataclass
class ValidationReport:
    """Everything the loaders found wrong, in file order."""

    issues: list[DatasetIssue] = field(default_factory=list)

    def add(self, file: str, line: int | None, kind: str, message: str, severity: Severity = "warning") -> None:
        self.issues.append(DatasetIssue(file, line, kind, message, severity))

    def count(self, kind: str | None = None, file: str | None = None) -> int:
        """How many issues of a kind (and/or in a file) were found."""
        return sum(1 for i in self.issues if (kind is None or i.kind == kind) and (file is None or i.file == file))

    def kinds(self) -> Counter[str]:
        return Counter(i.kind for i in self.issues)

    @property
    def has_errors(self) -> bool:
        return any(i.severity == "error" for i in self.issues)

    def summary(self) -> pd.DataFrame:
        """One row per (file, kind, severity) with the count and the first example."""
        if not self.issues:
            return pd.DataFrame(columns=["file", "kind", "severity", "count", "example"])
        rows: dict[tuple[str, str, str], list[object]] = {}
        for issue in self.issues:
            key = (issue.file, issue.kind, issue.severity)
            if key not in rows:
                where = f"line {issue.line}: " if issue.line is not None else ""
                rows[key] = [issue.file, issue.kind, issue.severity, 0, where + issue.message]
            rows[key][3] = int(rows[key][3]) + 1  # type: ignore[call-overload]
        return pd.DataFrame(list(rows.values()), columns=["file", "kind", "severity", "count", "example"])

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [(i.file, i.line, i.kind, i.severity, i.message) for i in self.issues],
            columns=["file", "line", "kind", "severity", "message"],
        )


@dataclass
class SeedDataset:
    """The four tables (cleaned and typed), the image folders and what was wrong with them.

    Frames keep a ``line`` column: where the row came from, for the report.
    """

    root: Path
    train: pd.DataFrame  # image, query_id, query_text, line
    crowd: pd.DataFrame  # image, query_id, crowd_share, crowd_yes, crowd_no, line
    expert: pd.DataFrame  # image, query_id, expert_1, expert_2, expert_3, line
    test_queries: pd.DataFrame  # query_id, query_text, image, line
    train_image_files: frozenset[str]
    test_image_files: frozenset[str]
    report: ValidationReport

    @property
    def train_images_dir(self) -> Path:
        return self.root / TRAIN_IMAGES_DIR

    @property
    def test_images_dir(self) -> Path:
        return self.root / TEST_IMAGES_DIR

    def query_texts(self) -> dict[str, str]:
        """query_id -> text for every train query (crowd and expert rows carry only the id)."""
        return dict(zip(self.train["query_id"], self.train["query_text"], strict=True))

    def train_image_path(self, name: str) -> Path:
        return self.train_images_dir / name

    def test_image_path(self, name: str) -> Path:
        return self.test_images_dir / name


def query_source_image(query_id: str) -> str | None:
    """The image whose caption a query id names (``"a.jpg#2"`` -> ``"a.jpg"``), None if malformed."""
    match = QUERY_ID_RE.match(query_id)
    return match.group("image") if match else None


# --------------------------------------------------------------------------- reading text


def _read_text(path: Path, report: ValidationReport) -> str | None:
    """The file decoded as UTF-8 (BOMs removed and reported), or None if it is missing."""
    name = path.name
    if not path.is_file():
        report.add(name, None, "missing_file", f"{path} does not exist", "error")
        return None
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        report.add(name, 1, "bom", "file starts with a UTF-8 byte-order mark (removed)")
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Old spreadsheet exports are often cp1252; decoding that way keeps every byte readable.
        report.add(name, None, "encoding", f"not valid UTF-8 ({exc.reason} at byte {exc.start}); read as cp1252")
        text = raw.decode("cp1252", errors="replace")
    if "\ufeff" in text:
        # A BOM in the middle means files were concatenated; each one would corrupt a field.
        for lineno, line in enumerate(text.splitlines(), start=1):
            if "\ufeff" in line:
                report.add(name, lineno, "bom", "byte-order mark inside the file (removed)")
        text = text.replace("\ufeff", "")
    return text


def _rows(text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) for every non-blank row; csv handles quoting and embedded newlines."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quotechar='"', skipinitialspace=False)
    start = 1
    for fields in reader:
        line = start
        start = reader.line_num + 1
        if not fields or all(not f.strip() for f in fields):
            continue
        yield line, fields


class _Stripper:
    """Strips every field and counts how many needed it (one issue per file, not per field)."""

    def __init__(self) -> None:
        self.changed = 0
        self.first_line: int | None = None

    def __call__(self, fields: Iterable[str], line: int) -> list[str]:
        out = []
        for value in fields:
            stripped = value.strip()
            if stripped != value:
                self.changed += 1
                if self.first_line is None:
                    self.first_line = line
            out.append(stripped)
        return out

    def report(self, report: ValidationReport, file: str) -> None:
        if self.changed:
            report.add(
                file,
                self.first_line,
                "whitespace",
                f"{self.changed} field(s) had leading/trailing whitespace (stripped)",
            )


def _parse_float(value: str) -> float | None:
    try:
        number = float(value.replace(",", ".")) if value else math.nan
    except ValueError:
        return None
    return number


def _deduplicate(
    records: list[dict[str, object]],
    key_fields: tuple[str, ...],
    value_fields: tuple[str, ...],
    report: ValidationReport,
    file: str,
) -> list[dict[str, object]]:
    """Drop exact duplicate rows; keep the first of conflicting duplicates. Both are reported."""
    seen: dict[tuple[object, ...], dict[str, object]] = {}
    kept: list[dict[str, object]] = []
    for record in records:
        key = tuple(record[f] for f in key_fields)
        first = seen.get(key)
        if first is None:
            seen[key] = record
            kept.append(record)
            continue
        same = all(_same(record[f], first[f]) for f in value_fields)
        if same:
            report.add(file, int(record["line"]), "duplicate_row", f"duplicate of line {first['line']} (dropped)")  # type: ignore[call-overload]
        else:
            report.add(
                file,
                int(record["line"]),  # type: ignore[call-overload]
                "conflicting_duplicate",
                f"{'/'.join(map(str, key))} also at line {first['line']} with different values; the first is kept",
            )
    return kept


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _looks_like_image(value: str) -> bool:
    return value.lower().endswith(IMAGE_SUFFIXES)


# --------------------------------------------------------------------------- the four tables


def read_train(path: Path, report: ValidationReport) -> pd.DataFrame:
    """``train_dataset.csv``: image, query_id, query_text (header expected; order taken from it)."""
    columns = ["image", "query_id", "query_text", "line"]
    text = _read_text(path, report)
    if text is None:
        return pd.DataFrame(columns=columns)
    name = path.name
    strip = _Stripper()
    order = ("image", "query_id", "query_text")
    records: list[dict[str, object]] = []
    first = True
    for line, raw in _rows(text, ","):
        fields = strip(raw, line)
        if first:
            first = False
            lowered = [f.lower() for f in fields]
            if set(order) <= set(lowered):
                order = tuple(lowered)  # type: ignore[assignment]
                continue
            report.add(name, line, "missing_header", "no header row; columns taken as image,query_id,query_text")
        if len(fields) > len(order) and len(order) == 3 and order[-1] == "query_text":
            # An unquoted comma inside the caption: the extra fields belong to the text.
            report.add(name, line, "unquoted_separator", "caption contains unquoted commas (joined back)")
            fields = [*fields[:2], ",".join(raw[2:]).strip()]
        if len(fields) != len(order):
            report.add(name, line, "bad_row", f"expected {len(order)} fields, found {len(fields)} (dropped)")
            continue
        record: dict[str, object] = dict(zip(order, fields, strict=True))
        record["line"] = line
        if not record.get("image") or not record.get("query_id"):
            report.add(name, line, "bad_row", "empty image or query_id (dropped)")
            continue
        if not record.get("query_text"):
            report.add(name, line, "empty_text", "empty query_text (dropped)")
            continue
        if query_source_image(str(record["query_id"])) is None:
            report.add(name, line, "bad_query_id", f"query_id {record['query_id']!r} is not '<image>#<n>' (kept)")
        records.append({c: record.get(c) for c in columns})
    strip.report(report, name)
    records = _deduplicate(records, ("image", "query_id"), ("query_text",), report, name)
    frame = pd.DataFrame(records, columns=columns)
    _check_query_text_consistency(frame, report, name)
    return frame


def _check_query_text_consistency(frame: pd.DataFrame, report: ValidationReport, file: str) -> None:
    """A query id names one caption, so it must have one text wherever it appears."""
    texts = frame.groupby("query_id")["query_text"].nunique()
    for query_id in texts[texts > 1].index:
        rows = frame.loc[frame["query_id"] == query_id, "line"].tolist()
        report.add(
            file,
            int(rows[0]),
            "inconsistent_text",
            f"query_id {query_id} has {int(texts[query_id])} different texts (lines {rows[:5]})",
        )


def read_crowd(path: Path, report: ValidationReport) -> pd.DataFrame:
    """``CrowdAnnotations.tsv``: image, query_id, share, yes votes, no votes (no header)."""
    columns = ["image", "query_id", "crowd_share", "crowd_yes", "crowd_no", "line"]
    text = _read_text(path, report)
    if text is None:
        return pd.DataFrame(columns=columns)
    name = path.name
    strip = _Stripper()
    records: list[dict[str, object]] = []
    first = True
    for line, raw in _rows(text, "\t"):
        fields = strip(raw, line)
        if first:
            first = False
            if len(fields) >= 3 and _parse_float(fields[2]) is None:
                report.add(name, line, "unexpected_header", "the file has no header by spec; first row skipped as one")
                continue
        if len(fields) != 5:
            report.add(name, line, "bad_row", f"expected 5 fields, found {len(fields)} (dropped)")
            continue
        image, query_id, share_s, yes_s, no_s = fields
        share, yes, no = _parse_float(share_s), _parse_float(yes_s), _parse_float(no_s)
        if not image or not query_id or share is None or yes is None or no is None:
            report.add(name, line, "bad_value", "empty id or non-numeric share/votes (dropped)")
            continue
        votes_ok = not math.isnan(yes) and not math.isnan(no) and yes >= 0 and no >= 0 and yes + no > 0
        if votes_ok:
            from_votes = yes / (yes + no)
            if math.isnan(share) or abs(from_votes - share) > 0.011:
                # The votes are the raw data; the share is derived from them.
                report.add(
                    name,
                    line,
                    "inconsistent_share",
                    f"share {share_s} but votes {yes_s}/{no_s}; share recomputed from votes",
                )
                share = from_votes
        elif math.isnan(share):
            report.add(name, line, "bad_value", "no share and no votes (dropped)")
            continue
        if not 0.0 <= share <= 1.0:
            report.add(name, line, "out_of_range", f"share {share} is not in [0, 1] (dropped)")
            continue
        records.append(
            {
                "image": image,
                "query_id": query_id,
                "crowd_share": float(share),
                "crowd_yes": float(yes) if votes_ok else math.nan,
                "crowd_no": float(no) if votes_ok else math.nan,
                "line": line,
            }
        )
    strip.report(report, name)
    records = _deduplicate(records, ("image", "query_id"), ("crowd_share", "crowd_yes", "crowd_no"), report, name)
    return pd.DataFrame(records, columns=columns)


def read_expert(path: Path, report: ValidationReport) -> pd.DataFrame:
    """``ExpertAnnotations.tsv``: image, query_id, three scores from 1 to 4 (no header).

    A missing or out-of-range score becomes NaN (the other experts still count); a row with no
    valid score is dropped.
    """
    columns = ["image", "query_id", *EXPERT_COLUMNS, "line"]
    text = _read_text(path, report)
    if text is None:
        return pd.DataFrame(columns=columns)
    name = path.name
    strip = _Stripper()
    records: list[dict[str, object]] = []
    first = True
    for line, raw in _rows(text, "\t"):
        fields = strip(raw, line)
        if first:
            first = False
            if len(fields) >= 3 and _parse_float(fields[2]) is None:
                report.add(name, line, "unexpected_header", "the file has no header by spec; first row skipped as one")
                continue
        if len(fields) < 3 or len(fields) > 5:
            report.add(name, line, "bad_row", f"expected 5 fields, found {len(fields)} (dropped)")
            continue
        if len(fields) < 5:
            report.add(
                name, line, "missing_value", f"only {len(fields) - 2} expert score(s); the rest treated as missing"
            )
            fields = fields + [""] * (5 - len(fields))
        image, query_id = fields[0], fields[1]
        if not image or not query_id:
            report.add(name, line, "bad_row", "empty image or query_id (dropped)")
            continue
        scores: list[float] = []
        for column, value in zip(EXPERT_COLUMNS, fields[2:], strict=True):
            score = _parse_float(value)
            if score is None or (
                not math.isnan(score) and (score != int(score) or not EXPERT_MIN <= score <= EXPERT_MAX)
            ):
                report.add(name, line, "bad_value", f"{column} = {value!r} is not an integer 1..4 (treated as missing)")
                score = math.nan
            scores.append(score)
        if all(math.isnan(s) for s in scores):
            report.add(name, line, "bad_row", "no valid expert score (dropped)")
            continue
        records.append(
            {"image": image, "query_id": query_id, **dict(zip(EXPERT_COLUMNS, scores, strict=True)), "line": line}
        )
    strip.report(report, name)
    records = _deduplicate(records, ("image", "query_id"), EXPERT_COLUMNS, report, name)
    return pd.DataFrame(records, columns=columns)


def read_test_queries(path: Path, report: ValidationReport) -> pd.DataFrame:
    """``test_queries.csv``: ``|``-separated, an unnamed index column, then query_id, query_text, image.

    The header is detected explicitly (not skipped blindly), so the first data row is never
    lost, whether or not the index column and the header are there.
    """
    columns = ["query_id", "query_text", "image", "line"]
    text = _read_text(path, report)
    if text is None:
        return pd.DataFrame(columns=columns)
    name = path.name
    strip = _Stripper()
    records: list[dict[str, object]] = []
    has_index: bool | None = None
    first = True
    for line, raw in _rows(text, "|"):
        fields = strip(raw, line)
        if first:
            first = False
            lowered = [f.lower() for f in fields]
            if "query_id" in lowered:
                # "|query_id|query_text|image": an empty (or "Unnamed: 0") name before query_id is the index.
                has_index = lowered.index("query_id") == 1
                continue
            report.add(name, line, "missing_header", "no header row; columns inferred from the field count")
        # Decided per row from the content, so a header that disagrees with its rows cannot shift them.
        row_has_index = (
            len(fields) >= 4 and _is_index(fields[0]) and (bool(has_index) or QUERY_ID_RE.match(fields[1]) is not None)
        )
        if has_index and not row_has_index:
            report.add(name, line, "missing_index", "row has no index field (accepted)")
        unstripped = raw[1:] if row_has_index else raw
        if row_has_index:
            fields = fields[1:]
        if len(fields) > 3 and _looks_like_image(fields[-1]):
            report.add(name, line, "unquoted_separator", "query text contains '|' (joined back)")
            fields = [fields[0], "|".join(unstripped[1:-1]).strip(), fields[-1]]
        if len(fields) != 3:
            report.add(name, line, "bad_row", f"expected 3 fields after the index, found {len(fields)} (dropped)")
            continue
        query_id, query_text, image = fields
        if not query_id or not image:
            report.add(name, line, "bad_row", "empty query_id or image (dropped)")
            continue
        if not query_text:
            report.add(name, line, "empty_text", "empty query_text (dropped)")
            continue
        records.append({"query_id": query_id, "query_text": query_text, "image": image, "line": line})
    strip.report(report, name)
    records = _deduplicate(records, ("query_id",), ("query_text", "image"), report, name)
    return pd.DataFrame(records, columns=columns)


def _is_index(value: str) -> bool:
    return value.isdigit()


# --------------------------------------------------------------------------- images


def list_images(folder: Path, report: ValidationReport) -> frozenset[str]:
    """File names of the images directly in ``folder`` (an absent folder is an error, not a crash)."""
    if not folder.is_dir():
        report.add(folder.name + "/", None, "missing_dir", f"{folder} does not exist", "error")
        return frozenset()
    return frozenset(p.name for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))


def _check_references(
    names: Iterable[tuple[str, int]], available: frozenset[str], report: ValidationReport, file: str, folder: str
) -> None:
    """One issue per missing image, with how many rows point at it."""
    missing: dict[str, list[int]] = {}
    for image, line in names:
        if image not in available:
            missing.setdefault(image, []).append(line)
    for image, lines in missing.items():
        report.add(file, lines[0], "missing_image", f"{image} is not in {folder}/ ({len(lines)} row(s) refer to it)")


def load_dataset(root: Path | str) -> SeedDataset:
    """Read a dataset folder in the seed layout; never raises on bad content (see the report)."""
    root = Path(root)
    report = ValidationReport()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    train = read_train(root / TRAIN_FILE, report)
    crowd = read_crowd(root / CROWD_FILE, report)
    expert = read_expert(root / EXPERT_FILE, report)
    test = read_test_queries(root / TEST_FILE, report)
    train_images = list_images(root / TRAIN_IMAGES_DIR, report)
    test_images = list_images(root / TEST_IMAGES_DIR, report)

    if train_images:
        _check_references(
            zip(train["image"], train["line"], strict=True), train_images, report, TRAIN_FILE, TRAIN_IMAGES_DIR
        )
        sources = [
            (query_source_image(q) or "", line) for q, line in zip(train["query_id"], train["line"], strict=True)
        ]
        _check_references(
            ((s, line) for s, line in sources if s), train_images, report, TRAIN_FILE + " (query_id)", TRAIN_IMAGES_DIR
        )
        _check_references(
            zip(crowd["image"], crowd["line"], strict=True), train_images, report, CROWD_FILE, TRAIN_IMAGES_DIR
        )
        _check_references(
            zip(expert["image"], expert["line"], strict=True), train_images, report, EXPERT_FILE, TRAIN_IMAGES_DIR
        )
    if test_images:
        _check_references(
            zip(test["image"], test["line"], strict=True), test_images, report, TEST_FILE, TEST_IMAGES_DIR
        )

    known_queries = set(train["query_id"])
    for frame, file in ((crowd, CROWD_FILE), (expert, EXPERT_FILE)):
        unknown = frame.loc[~frame["query_id"].isin(known_queries)]
        if len(unknown) and len(train):
            report.add(
                file,
                int(unknown["line"].iloc[0]),
                "unknown_query",
                f"{len(unknown)} row(s) name query ids with no text in {TRAIN_FILE} (kept for agreement only)",
                "info",
            )

    return SeedDataset(
        root=root,
        train=train.reset_index(drop=True),
        crowd=crowd.reset_index(drop=True),
        expert=expert.reset_index(drop=True),
        test_queries=test.reset_index(drop=True),
        train_image_files=train_images,
        test_image_files=test_images,
        report=report,
    )
