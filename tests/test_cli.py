"""The operator's `withsense` commands in-process (Typer's CliRunner) against the real Postgres and Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from tests.conftest import Services
from tests.images import jpeg_bytes

pytestmark = pytest.mark.usefixtures("clean_db", "own_broker")  # no worker: the photos stay pending


def test_ingest_records_the_photographers_declarations_and_status_counts_them(api: TestClient, tmp_path: Path) -> None:
    folder = tmp_path / "school-portraits"
    folder.mkdir()
    for i in range(3):
        (folder / f"portrait-{i}.jpg").write_bytes(jpeg_bytes(Image.new("RGB", (64, 48), (i * 70, 90, 140))))
    (folder / "notes.txt").write_text("not an image")

    result = CliRunner().invoke(app, ["ingest", str(folder), "--depicts-minor", "--parental-consent"])
    assert result.exit_code == 0, result.output
    assert "3 queued, 0 already known, 0 rejected" in result.output

    photos = api.get("/v1/photos", params={"all_uploaders": "true"}).json()["items"]
    assert len(photos) == 3
    assert all(p["depicts_minor"] and p["parental_consent"] for p in photos)
    trail = api.get(f"/v1/photos/{photos[0]['id']}/moderation").json()
    assert [(e["actor"], e["action"]) for e in trail] == [("cli:ingest", "declared")]

    status = CliRunner().invoke(app, ["status"])
    assert status.exit_code == 0, status.output
    assert "photos: 3 pending, 0 processing, 0 indexed, 0 failed" in status.output


def test_models_activate_names_what_is_registered(services: Services) -> None:
    result = CliRunner().invoke(app, ["models", "activate", "no-such-model"])
    assert result.exit_code == 2
    assert "no registered model no-such-model (registered: " in result.output
