"""`withsense finetune`: a new model version from the catalogue's own titles, adopted without re-indexing.

The tiny CLIP knows eight colours; the catalogue also holds shapes in four colours it never saw (cyan, teal, navy,
magenta: evaluation/standins/shifted.py), titled by their photographers. Fine-tuning the text tower on the titles
must find those colours without losing the old ones, measured through the real API on photos nobody trained on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from evaluation.standins import shifted, synthetic
from tests.conftest import MINOR_COLOUR, ROOT, UNSAFE_COLOUR, upload, wait_for_status
from tests.test_model_upgrade import restore_active_model  # noqa: F401 - a fixture
from tests.test_multilingual import _api_with

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("clean_db", "worker")]


def _cli(*args: str) -> Result:
    from cli.main import app

    return CliRunner().invoke(app, list(args))


def _plain(items: list[synthetic.SyntheticImage]) -> list[synthetic.SyntheticImage]:
    return [s for s in items if s.colour not in (MINOR_COLOUR, UNSAFE_COLOUR)]


def _recall_at_5(
    client: TestClient, queries: list[synthetic.SyntheticImage], gallery: dict[str, tuple[str, str]]
) -> float:
    """Held-out Recall@5 among the untitled gallery photos (the titled training photos are skipped in the ranking)."""
    hits = 0
    for query in queries:
        response = client.get("/v1/search", params={"q": query.caption, "k": 100})
        assert response.status_code == 200, response.text
        ranked = [gallery[r["id"]] for r in response.json()["results"] if r["id"] in gallery][:5]
        hits += (query.colour, query.shape) in ranked
    return hits / len(queries)


@pytest.mark.usefixtures("restore_active_model")
def test_finetune_on_a_shifted_domain_lifts_it_and_keeps_the_original(
    api: TestClient, admin_key: str, tmp_path: Path
) -> None:
    # The catalogue: titled photos of both domains (the weak captions fine-tuning learns from).
    training = shifted.generate(60, 1, templates="train") + _plain(synthetic.generate(80, 2, templates="train"))
    ids = [upload(api, s.image, title=s.caption).json()["id"] for s in training]
    # Untitled photos nobody trains on, and queries in wording never trained on.
    gallery_items = _plain(synthetic.generate(40, 555, templates="heldout")) + shifted.generate(20, 556)
    gallery = {upload(api, s.image).json()["id"]: (s.colour, s.shape) for s in gallery_items}
    done = wait_for_status(api, ids + list(gallery), timeout=300)
    assert {b["status"] for b in done.values()} == {"indexed"}
    original_queries = _plain(synthetic.generate(40, 777, templates="heldout"))
    shifted_queries = shifted.generate(20, 778, templates="heldout")
    before = (_recall_at_5(api, original_queries, gallery), _recall_at_5(api, shifted_queries, gallery))

    out = tmp_path / "tuned"
    trained = _cli(
        "finetune", str(out), "--max-steps", "40", "--eval-every", "10", "--learning-rate", "5e-4", "--quiet"
    )
    assert trained.exit_code == 0, trained.output
    assert "held-out text-to-image retrieval before and after" in trained.output
    assert "| after (fine-tuned) |" in trained.output
    adopted = _cli("models", "adopt", str(out))
    assert adopted.exit_code == 0, adopted.output
    assert f"sharing its {len(ids) + len(gallery)} image vectors" in adopted.output
    activated = _cli("models", "activate", str(out))
    assert activated.exit_code == 0, activated.output

    for client in _api_with(admin_key, WITHSENSE_MODEL=str(out)):
        after = (_recall_at_5(client, original_queries, gallery), _recall_at_5(client, shifted_queries, gallery))
    print(
        f"held-out Recall@5 before -> after fine-tuning: original domain {before[0]:.2f} -> {after[0]:.2f}, "
        f"shifted domain {before[1]:.2f} -> {after[1]:.2f}\n{trained.output}"
    )
    assert after[1] >= before[1] + 0.2
    assert after[0] >= before[0] - 0.05


def test_finetune_is_refused_for_a_whole_model_adoption_and_resumes_after_a_kill(tmp_path: Path) -> None:
    # The seed-format demo dataset as the source; a child process so it can be killed mid-run.
    from core.finetuned import read_record

    dataset = ROOT / "evaluation" / "standins" / "demo_dataset"
    out = tmp_path / "whole"
    command = [
        sys.executable, "-m", "cli.main", "finetune", str(out), "--dataset", str(dataset), "--whole-model",
        "--max-steps", "30", "--eval-every", "5", "--patience", "100", "--batch-size", "16",
        "--learning-rate", "5e-4", "--quiet",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    checkpoint = out / ".finetune-checkpoint" / "state.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.is_file() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert checkpoint.is_file(), (first.communicate()[0] or b"").decode(errors="replace")[-3000:]
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    assert not (out / "modules.json").exists()  # killed before it saved anything but the checkpoint

    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resumed from step" in second.stdout, second.stdout[-3000:]
    record = read_record(out)
    assert record is not None and record.mode == "whole" and record.steps == 30
    assert not (out / ".finetune-checkpoint").exists()

    refused = _cli("models", "adopt", str(out))
    assert refused.exit_code == 1 and "fine-tuned as a whole model" in refused.output, refused.output
