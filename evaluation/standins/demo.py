"""Build the small synthetic dataset shipped in ``evaluation/standins/demo_dataset/``.

It follows the seed dataset's format exactly (see :mod:`evaluation.dataset`) and carries a
few of the real files' warts on purpose, so the loaders' reports have something to show:

* ``train_dataset.csv`` starts with a UTF-8 BOM, has a duplicated row, a row pointing at an
  image that does not exist, stray spaces, Flickr-style "text ." captions, an exact and a
  near-duplicate caption and an uninformative one ("a photo .");
* ``CrowdAnnotations.tsv`` has a duplicated row and trailing spaces; ``ExpertAnnotations.tsv``
  has stray spaces; some pairs are judged by one side only;
* ``test_queries.csv`` is ``|``-separated with the unnamed index column and one query whose
  image is missing;
* some captions describe children, so the minors rule has something to remove and block.

Images are :mod:`evaluation.standins.synthetic` shapes (one colour, one shape each), so the relevance
of a caption to an image is known: colour and shape both right = 4, one of them = 2, none = 1
(the experts add noise, the crowd votes with a matching probability). Test queries use only
the held-out caption templates the tiny test CLIP was never trained on; the 40 test images
cover each colour/shape combination exactly once, so each query has one right answer.

Rebuild (deterministic for a seed): ``python -m evaluation.standins.demo [--out DIR] [--seed N]``.
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from evaluation.standins import synthetic

DEMO_DIR = Path(__file__).resolve().parent / "demo_dataset"
DEFAULT_SEED = 2024
JPEG_QUALITY = 75

CHILD_TEMPLATES = (
    "a child holding {a} {colour} {shape}",
    "a little girl drawing {a} {colour} {shape}",
    "two boys looking at {a} {colour} {shape}",
    "a kid's picture of {a} {colour} {shape}",
)


@dataclass
class _Picture:
    name: str
    colour: str
    shape: str
    background: str
    image: Image.Image  # written once


def _flickr_name(rng: np.random.Generator) -> str:
    """A name like Flickr8k's: ``<digits>_<10 hex>.jpg``."""
    return f"{int(rng.integers(10**8, 10**10))}_{rng.bytes(5).hex()}.jpg"


def _true_relevance(query: tuple[str, str], image: tuple[str, str]) -> int:
    colour_ok, shape_ok = query[0] == image[0], query[1] == image[1]
    return 4 if colour_ok and shape_ok else 2 if colour_ok or shape_ok else 1


def _flickrise(caption: str, rng: np.random.Generator) -> str:
    """Capitalised with a spaced full stop, as many Flickr8k captions are ("A red circle .")."""
    caption = caption[0].upper() + caption[1:]
    return caption + " ." if rng.random() < 0.5 else caption


def build_demo_dataset(
    out_dir: Path = DEMO_DIR, *, seed: int = DEFAULT_SEED, n_train: int = 60, n_test: int = 40
) -> Path:
    """Write the demo dataset into ``out_dir`` (replacing what is there) and return it."""
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "train_images").mkdir(parents=True)
    (out_dir / "test_images").mkdir(parents=True)

    train = [
        _Picture(_flickr_name(rng), item.colour, item.shape, item.background, item.image)
        for item in synthetic.generate(n_train, seed, templates="train")
    ]
    test = [
        _Picture(_flickr_name(rng), item.colour, item.shape, item.background, item.image)
        for item in synthetic.generate(n_test, seed + 1, templates="heldout")
    ]
    for folder, pictures in (("train_images", train), ("test_images", test)):
        for picture in pictures:
            picture.image.save(out_dir / folder / picture.name, format="JPEG", quality=JPEG_QUALITY, optimize=True)

    # ---- train captions: two per image; a few describe children, a few are warts.
    captions: dict[str, tuple[str, tuple[str, str]]] = {}  # query_id -> (text, (colour, shape))
    child_images = {train[3].name, train[17].name}
    for index, picture in enumerate(train):
        truth = (picture.colour, picture.shape)
        for n in range(2):
            if n == 1 and picture.name in child_images:
                template = CHILD_TEMPLATES[index % len(CHILD_TEMPLATES)]
            else:
                template = synthetic.TRAIN_TEMPLATES[int(rng.integers(len(synthetic.TRAIN_TEMPLATES)))]
            text = synthetic.make_caption(template, picture.colour, picture.shape, picture.background)
            captions[f"{picture.name}#{n}"] = (_flickrise(text, rng), truth)
    # An uninformative caption, an exact duplicate and a near duplicate of another caption.
    first, second, third = train[5], train[6], train[7]
    captions[f"{first.name}#0"] = ("A photo .", (first.colour, first.shape))
    duplicate_text = synthetic.make_caption("{a} {colour} {shape}", second.colour, second.shape)
    captions[f"{second.name}#0"] = (duplicate_text, (second.colour, second.shape))
    captions[f"{second.name}#1"] = (duplicate_text.capitalize() + " .", (second.colour, second.shape))
    captions[f"{third.name}#0"] = (
        synthetic.make_caption("a photo of {a} {colour} {shape}", third.colour, third.shape),
        (third.colour, third.shape),
    )
    captions[f"{third.name}#1"] = (
        synthetic.make_caption("a photo of the {colour} {shape}", third.colour, third.shape),
        (third.colour, third.shape),
    )

    # ---- judged pairs: each of 45 queries against 4 images (one close match when there is one).
    query_ids = sorted(captions)
    chosen = [query_ids[i] for i in sorted(rng.choice(len(query_ids), size=45, replace=False))]
    for must in (
        f"{train[3].name}#1",
        f"{train[17].name}#1",
        f"{first.name}#0",
        f"{second.name}#0",
        f"{second.name}#1",
    ):
        if must not in chosen:
            chosen.append(must)
    rows: list[tuple[str, str, str, int]] = []  # image, query_id, text, true relevance
    for query_id in chosen:
        text, truth = captions[query_id]
        source = query_id.split("#")[0]
        others = [p for p in train if p.name != source]
        close = [p for p in others if (p.colour, p.shape) == truth] or [
            p for p in others if p.colour == truth[0] or p.shape == truth[1]
        ]
        picks = [close[int(rng.integers(len(close)))]] if close else []
        rest = [p for p in others if p not in picks]
        picks += [rest[i] for i in rng.choice(len(rest), size=4 - len(picks), replace=False)]
        for picture in picks:
            rows.append((picture.name, query_id, text, _true_relevance(truth, (picture.colour, picture.shape))))
    rows.sort(key=lambda r: (r[0], r[1]))

    _write_train(out_dir, rows, rng)
    _write_annotations(out_dir, rows, captions, train, rng)
    _write_test(out_dir, test, rng)
    return out_dir


def _write_train(out_dir: Path, rows: list[tuple[str, str, str, int]], rng: np.random.Generator) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "query_id", "query_text"])
    for i, (image, query_id, text, _) in enumerate(rows):
        if i == 7:
            writer.writerow([image + "  ", query_id, text])  # stray spaces after the file name
        else:
            writer.writerow([image, query_id, text])
        if i == 12:
            writer.writerow([image, query_id, text])  # an exact duplicate row
    writer.writerow(["1000000000_0000000000.jpg", rows[0][1], rows[0][2]])  # an image that is not there
    # The BOM that spreadsheet exports put in front of the header.
    (out_dir / "train_dataset.csv").write_bytes(b"\xef\xbb\xbf" + buffer.getvalue().encode("utf-8"))


def _write_annotations(
    out_dir: Path,
    rows: list[tuple[str, str, str, int]],
    captions: dict[str, tuple[str, tuple[str, str]]],
    train: list[_Picture],
    rng: np.random.Generator,
) -> None:
    vote_yes = {4: 0.9, 2: 0.3, 1: 0.05}
    expert_lines: list[str] = []
    crowd_lines: list[str] = []
    for i, (image, query_id, _, relevance) in enumerate(rows):
        side = rng.random()
        if side < 0.8:  # judged by the experts (the rest: crowd only)
            scores = [int(np.clip(relevance + rng.choice([-1, 0, 0, 0, 0, 1]), 1, 4)) for _ in range(3)]
            line = "\t".join([image, query_id, *map(str, scores)])
            expert_lines.append(line.replace("\t", " \t", 1) if i % 11 == 3 else line)
        if side > 0.2:  # judged by the crowd (the rest: experts only)
            crowd_lines.append(_crowd_line(image, query_id, vote_yes[relevance], rng))
    # Crowd-only pairs outside train_dataset.csv, as in the real data.
    query_ids = sorted({r[1] for r in rows})
    judged = {(r[0], r[1]) for r in rows}
    extra = 0
    while extra < 30:
        query_id = query_ids[int(rng.integers(len(query_ids)))]
        picture = train[int(rng.integers(len(train)))]
        if (picture.name, query_id) in judged:
            continue  # only the one planted duplicate below
        judged.add((picture.name, query_id))
        extra += 1
        truth = captions[query_id][1]
        crowd_lines.append(
            _crowd_line(picture.name, query_id, vote_yes[_true_relevance(truth, (picture.colour, picture.shape))], rng)
        )
    crowd_lines.insert(9, crowd_lines[8])  # an exact duplicate row
    crowd_lines[4] = crowd_lines[4] + "  "  # trailing spaces
    (out_dir / "ExpertAnnotations.tsv").write_text("\n".join(expert_lines) + "\n", encoding="utf-8")
    (out_dir / "CrowdAnnotations.tsv").write_text("\n".join(crowd_lines) + "\n", encoding="utf-8")


def _crowd_line(image: str, query_id: str, p_yes: float, rng: np.random.Generator) -> str:
    votes = 3
    yes = int(rng.binomial(votes, p_yes))
    share = yes / votes
    return f"{image}\t{query_id}\t{share:g}\t{yes}\t{votes - yes}"


def _write_test(out_dir: Path, test: list[_Picture], rng: np.random.Generator) -> None:
    lines = ["|query_id|query_text|image"]
    index = 0
    child_images = {test[2].name, test[11].name, test[25].name}
    for picture in test:
        for n in range(2):
            if picture.name in child_images and (n == 0 or picture.name != test[25].name):
                # test[25]: one child caption and one ordinary one, which the policy cannot block.
                template = CHILD_TEMPLATES[(index // 2) % len(CHILD_TEMPLATES)]
            else:
                template = synthetic.HELDOUT_TEMPLATES[int(rng.integers(len(synthetic.HELDOUT_TEMPLATES)))]
            text = synthetic.make_caption(template, picture.colour, picture.shape, picture.background)
            lines.append(f"{index}|{picture.name}#{n}|{_flickrise(text, rng)}|{picture.name}")
            index += 1
    lines.append(f"{index}|2000000000_0000000000.jpg#0|A picture showing a red circle .|2000000000_0000000000.jpg")
    (out_dir / "test_queries.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the synthetic demo dataset in the seed layout.")
    parser.add_argument("--out", type=Path, default=DEMO_DIR)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    path = build_demo_dataset(args.out, seed=args.seed)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    print(f"demo dataset written to {path} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
