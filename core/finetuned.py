"""What a fine-tuned model folder says about itself: its base model and whether its image tower is the base's.

`withsense finetune` writes ``.withsense-finetune.json`` into the folder it saves. A text-tower-only fine-tune
(LiT: "locked image, tuned text") computes the same image vectors as its base, so the index's stored vectors stay
valid for it: `withsense models adopt` registers it sharing them, with no re-embedding. The file is hidden, so it
is no part of the folder's content hash (its revision).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

RECORD_FILE = ".withsense-finetune.json"

FinetuneMode = Literal["text", "whole"]


@dataclass(frozen=True)
class FinetuneRecord:
    """The base a fine-tuned folder was trained from, and what was trained."""

    base_model: str
    base_revision: str
    mode: FinetuneMode  # "text": the image tower is the base's, untouched; "whole": everything was trained
    dimension: int
    steps: int
    best_step: int

    @property
    def shares_image_vectors(self) -> bool:
        """Whether the base's stored image vectors are valid for this model (the image tower was not trained)."""
        return self.mode == "text"


def write_record(folder: Path, record: FinetuneRecord) -> None:
    """Write the record into a saved model folder."""
    (Path(folder) / RECORD_FILE).write_text(json.dumps(asdict(record), indent=2), encoding="utf-8")


def read_record(folder: Path | str) -> FinetuneRecord | None:
    """The folder's record, or None when it is not a `withsense finetune` output (or the record is unreadable)."""
    path = Path(folder).expanduser() / RECORD_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        mode = data["mode"]
        if mode not in ("text", "whole"):
            return None
        return FinetuneRecord(
            base_model=str(data["base_model"]),
            base_revision=str(data["base_revision"]),
            mode=mode,
            dimension=int(data["dimension"]),
            steps=int(data["steps"]),
            best_step=int(data["best_step"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
