"""A tiny multilingual text tower in the tiny CLIP's space, distilled the way the published ones were made.

``sentence-transformers/clip-ViT-B-32-multilingual-v1`` is a DistilBERT (Transformer, mean Pooling, Dense) trained
so that its embedding of a sentence, English or translated, matches CLIP's own text embedding of the English
sentence (Reimers & Gurevych 2020, "Making monolingual sentence embeddings multilingual using knowledge
distillation"). This stand-in is the same recipe at toy size: a small BERT with a WordPiece vocabulary trained at
run time on English and Russian captions of the synthetic shapes, distilled to the tiny CLIP's text tower (the
teacher) on English captions (to themselves) and Russian translations (to their English originals). It is saved
as a sentence-transformers folder that WITHSENSE_TEXT_MODEL takes as it is.

Russian wording comes from parallel templates; the held-out Russian templates are never trained on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evaluation.standins import synthetic

TINY_MULTILINGUAL_VERSION = 1
MARKER_FILE = ".withsense-tiny-multilingual.json"
MAX_TOKENS = 48

# Grammatical gender of each shape noun; adjectives agree with it.
RU_SHAPES: dict[str, tuple[str, str]] = {
    "circle": ("круг", "m"),
    "square": ("квадрат", "m"),
    "triangle": ("треугольник", "m"),
    "star": ("звезда", "f"),
    "cross": ("крест", "m"),
}
# Masculine, feminine and genitive ("красного цвета") forms.
RU_COLOURS: dict[str, tuple[str, str, str]] = {
    "red": ("красный", "красная", "красного"),
    "orange": ("оранжевый", "оранжевая", "оранжевого"),
    "yellow": ("жёлтый", "жёлтая", "жёлтого"),
    "green": ("зелёный", "зелёная", "зелёного"),
    "blue": ("синий", "синяя", "синего"),
    "purple": ("фиолетовый", "фиолетовая", "фиолетового"),
    "pink": ("розовый", "розовая", "розового"),
    "brown": ("коричневый", "коричневая", "коричневого"),
}
# Prepositional masculine, for "на сером фоне".
RU_BACKGROUNDS: dict[str, str] = {"grey": "сером", "black": "чёрном", "white": "белом", "beige": "бежевом"}

# (English template, its Russian translation): the Russian caption is distilled to the English caption's vector.
PARALLEL_TRAIN_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("{a} {colour} {shape}", "{colour} {shape}"),
    ("a photo of {a} {colour} {shape}", "фото: {colour} {shape}"),
    ("an image of {a} {colour} {shape}", "изображение: {colour} {shape}"),
    ("{a} {colour} {shape} on a {background} background", "{colour} {shape} на {background} фоне"),
    ("a drawing of {a} {colour} {shape}", "рисунок: {colour} {shape}"),
    ("there is {a} {colour} {shape}", "здесь {colour} {shape}"),
    ("{a} {shape} that is {colour}", "{shape} {colour_gen} цвета"),
)
# Never trained on: the wording a Russian-speaking buyer might type, for the held-out queries.
RU_HELDOUT_TEMPLATES: tuple[str, ...] = (
    "на картинке {colour} {shape}",
    "крупный план: {colour} {shape}",
    "{colour} {shape} на этой картинке",
    "снимок, где {colour} {shape} на {background} фоне",
)


def russian_caption(template: str, colour: str, shape: str, background: str = "grey") -> str:
    """Fill a Russian template, the colour agreeing with the shape's gender."""
    noun, gender = RU_SHAPES[shape]
    masculine, feminine, genitive = RU_COLOURS[colour]
    return template.format(
        colour=feminine if gender == "f" else masculine,
        colour_gen=genitive,
        shape=noun,
        background=RU_BACKGROUNDS[background],
    )


def heldout_russian_caption(item: synthetic.SyntheticImage, index: int) -> str:
    """A held-out Russian query for a synthetic image (templates taken in turn by `index`)."""
    template = RU_HELDOUT_TEMPLATES[index % len(RU_HELDOUT_TEMPLATES)]
    return russian_caption(template, item.colour, item.shape, item.background or "grey")


def _training_pairs() -> tuple[list[str], list[str]]:
    """(student texts, the English teacher text for each): English to itself, Russian to its English original."""
    students: list[str] = []
    teachers: list[str] = []
    for colour, shape in synthetic.combinations():
        for background in synthetic.BACKGROUNDS:
            for english, russian in PARALLEL_TRAIN_TEMPLATES:
                source = synthetic.make_caption(english, colour, shape, background)
                students.append(russian_caption(russian, colour, shape, background))
                teachers.append(source)
            for english in synthetic.TRAIN_TEMPLATES:
                caption = synthetic.make_caption(english, colour, shape, background)
                students.append(caption)
                teachers.append(caption)
    for colour in synthetic.COLOURS:
        for template in synthetic.COLOUR_ONLY_TEMPLATES:
            caption = synthetic.make_caption(template, colour, "shape")
            students.append(caption)
            teachers.append(caption)
    for shape in synthetic.SHAPES:
        for template in synthetic.SHAPE_ONLY_TEMPLATES:
            caption = synthetic.make_caption(template, "red", shape)
            students.append(caption)
            teachers.append(caption)
    return students, teachers


def _tokenizer(corpus: Sequence[str]) -> object:
    """A lower-casing WordPiece tokenizer trained on the corpus (accents kept: "ё" and "й" are letters in Russian)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast  # type: ignore[attr-defined]  # exported lazily in transformers 5

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=False, clean_text=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # A small vocabulary forces sub-words, so that unseen inflections still share pieces with trained ones.
    tokenizer.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=600, special_tokens=specials))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return BertTokenizerFast(tokenizer_object=tokenizer, model_max_length=MAX_TOKENS)


@dataclass(frozen=True)
class DistillationReport:
    steps: int
    final_loss: float
    pairs: int


def build_tiny_multilingual(teacher_dir: Path, out_dir: Path, *, steps: int = 900, seed: int = 0) -> Path:
    """Distil a small multilingual BERT into the tiny CLIP at `teacher_dir`'s text space; save it at `out_dir`."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer
    from transformers import BertConfig, BertModel

    from core.embedding import ClipEmbedder

    students, teachers = _training_pairs()
    teacher = ClipEmbedder(str(teacher_dir), device="cpu")
    unique_teachers = sorted(set(teachers))
    target_of = dict(zip(unique_teachers, teacher.embed_texts(unique_teachers), strict=True))
    targets = torch.from_numpy(np.stack([target_of[t] for t in teachers]))
    dimension = targets.shape[1]

    with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory(prefix="tiny-ml-") as staging:
        torch.manual_seed(seed)
        tokenizer = _tokenizer(students)
        config = BertConfig(
            vocab_size=len(tokenizer),  # type: ignore[arg-type]
            hidden_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            max_position_embeddings=MAX_TOKENS,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        BertModel(config).save_pretrained(staging)
        tokenizer.save_pretrained(staging)  # type: ignore[attr-defined]
        transformer = Transformer(staging, max_seq_length=MAX_TOKENS)
        pooling = Pooling(config.hidden_size, pooling_mode="mean")
        dense = Dense(config.hidden_size, dimension, activation_function=torch.nn.Identity())
        model = SentenceTransformer(modules=[transformer, pooling, dense], device="cpu")
        report = _distil(model, students, targets, steps=steps, seed=seed)
        model.save(str(out_dir))
    (Path(out_dir) / ".distillation.json").write_text(json.dumps(report.__dict__, indent=2))
    for path in Path(out_dir).rglob("*"):
        path.chmod(path.stat().st_mode | (0o755 if path.is_dir() else 0o644))
    return Path(out_dir)


def _distil(model: object, students: list[str], targets: torch.Tensor, *, steps: int, seed: int) -> DistillationReport:
    """Cosine distillation: each student text's unit vector towards its teacher's unit vector."""
    from sentence_transformers import SentenceTransformer

    assert isinstance(model, SentenceTransformer)
    rng = np.random.default_rng([seed, 11])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    batch = 96
    warmup = max(1, steps // 20)
    loss = torch.tensor(float("nan"))
    model.train()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(4, (os.cpu_count() or 1) // 2)))
    try:
        for step in range(steps):
            scale = (step + 1) / warmup if step < warmup else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps))
            for group in optimizer.param_groups:
                group["lr"] = 2e-3 * scale
            chosen = rng.choice(len(students), size=batch, replace=False)
            features = model.tokenize([students[i] for i in chosen])
            output = model(dict(features))["sentence_embedding"]
            predicted = torch.nn.functional.normalize(output, dim=1)
            loss = (1 - (predicted * targets[chosen]).sum(1)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
    finally:
        torch.set_num_threads(previous_threads)
    model.eval()
    return DistillationReport(steps=steps, final_loss=round(float(loss.detach()), 4), pairs=len(students))


def ensure_tiny_multilingual(cache_dir: Path, teacher_dir: Path, *, steps: int = 900, seed: int = 0) -> Path:
    """The cached tower distilled from the teacher at `teacher_dir` (keyed by its folder and this code), built once.

    Built next to its final place and renamed into it, as the tiny CLIP is: never half a model in the cache.
    """
    source = Path(__file__).read_bytes() + Path(synthetic.__file__).read_bytes()
    payload = json.dumps(
        {"version": TINY_MULTILINGUAL_VERSION, "teacher": Path(teacher_dir).name, "steps": steps, "seed": seed},
        sort_keys=True,
    ).encode()
    key = hashlib.sha256(payload + source).hexdigest()[:16]
    cache_dir = Path(cache_dir)
    target = cache_dir / f"tiny-multilingual-{key}"
    if (target / MARKER_FILE).is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tiny-multilingual-{key}-", dir=cache_dir))
    try:
        build_tiny_multilingual(teacher_dir, staging / "model", steps=steps, seed=seed)
        (staging / "model" / MARKER_FILE).write_text(json.dumps({"key": key, "teacher": str(teacher_dir)}))
        try:
            os.rename(staging / "model", target)
        except OSError:
            if not (target / MARKER_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
