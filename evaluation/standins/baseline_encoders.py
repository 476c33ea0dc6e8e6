"""Small local stand-ins for the baseline's ResNet-50 and BERT, built at run time.

No model hub is reachable in CI, so tests and the offline demo need encoders they can make
themselves. These are the same architectures in miniature (a two-stage ResNet, a two-layer
BERT with a WordPiece vocabulary), with random frozen weights, saved as ordinary Hugging Face
folders: the baseline loads them through exactly the code that loads ``microsoft/resnet-50``
and ``bert-base-uncased``. They are meant to be weak; that is what a baseline is for.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from pathlib import Path

import torch

from evaluation.standins.synthetic import BACKGROUNDS, COLOURS, HELDOUT_TEMPLATES, SHAPES, TRAIN_TEMPLATES

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
COMMON_WORDS = [
    "a", "an", "the", "of", "on", "in", "at", "with", "and", "or", "is", "are", "this", "that", "there", "photo",
    "picture", "image", "drawing", "close", "up", "single", "shows", "showing", "against", "backdrop", "background",
    "man", "woman", "dog", "cat", "boy", "girl", "child", "children", "kid", "kids", "baby", "people", "person",
    "running", "sitting", "playing", "red", "blue", "green", "water", "grass", "street",
]  # fmt: skip


def _vocabulary(extra_words: Iterable[str]) -> list[str]:
    words: set[str] = set(COMMON_WORDS) | set(COLOURS) | set(SHAPES) | set(BACKGROUNDS)
    for template in TRAIN_TEMPLATES + HELDOUT_TEMPLATES:
        words.update(re.findall(r"[a-z]+", re.sub(r"\{[^}]*\}", " ", template.lower())))
    for word in extra_words:
        words.update(re.findall(r"[a-z]+", word.lower()))
    # Letters and "##" letter pieces: any unknown word still tokenises into characters, not [UNK].
    pieces = list(string.ascii_lowercase) + [f"##{c}" for c in string.ascii_lowercase] + list(string.punctuation)
    return list(SPECIAL_TOKENS) + sorted(words - set(pieces)) + pieces


def build_tiny_text_encoder(out_dir: Path, *, extra_words: Iterable[str] = (), seed: int = 0) -> Path:
    """A 2-layer, 64-wide BERT with random weights and a WordPiece tokenizer, saved to ``out_dir``."""
    from transformers import BertConfig, BertModel, BertTokenizer

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    vocab = _vocabulary(extra_words)
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)})
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        max_position_embeddings=128,
    )  # fmt: skip
    model = BertModel(config).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_tiny_image_encoder(out_dir: Path, *, seed: int = 0) -> Path:
    """A two-stage ResNet (8 and 16 channels) with random weights and a 64-pixel processor."""
    from transformers import ConvNextImageProcessorPil, ResNetConfig, ResNetModel

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    torch.manual_seed(seed)
    config = ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic")
    model = ResNetModel(config).eval()
    # The preprocessing family of microsoft/resnet-50, at a size the tiny network can afford.
    processor = ConvNextImageProcessorPil(size={"shortest_edge": 64}, crop_pct=0.875)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
