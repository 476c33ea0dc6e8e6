"""docker-compose.yml describes the production stack the README promises (the build machines have no Docker engine
or compose plugin, so the files are parsed here; `docker compose config` is the check on a machine with Docker)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


class _ComposeLoader(yaml.SafeLoader):
    pass


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, bool]:
    return {"__reset__": True}


def _override(loader: yaml.SafeLoader, node: yaml.Node) -> dict[object, object]:
    assert isinstance(node, yaml.MappingNode), "!override tags a mapping in these files"
    return loader.construct_mapping(node)


# Compose's merge-control tags (!reset, !override) are not YAML 1.1; keep their values.
_ComposeLoader.add_constructor("!reset", _reset)
_ComposeLoader.add_constructor("!override", _override)


def _load(name: str) -> dict[str, Any]:
    """A compose file as parsed YAML (Any: whatever the file holds)."""
    loaded: dict[str, Any] = yaml.load((ROOT / name).read_text(), Loader=_ComposeLoader)
    return loaded


def test_compose_has_every_service_with_production_settings() -> None:
    compose = _load("docker-compose.yml")
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "api", "worker", "beat", "flower"} <= set(services)

    assert "pgvector" in services["postgres"]["image"]
    redis_command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_command and "--maxmemory-policy noeviction" in redis_command

    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["command"] == ["withsense", "migrate"]
    for name in ("api", "worker", "beat"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"

    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "workers.celery_app" in services["worker"]["command"]
    assert "beat" in services["beat"]["command"]
    assert "flower" in services["flower"]["command"]
    for name in ("api", "worker", "migrate"):
        env = services[name]["environment"]
        assert env["WITHSENSE_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["WITHSENSE_BROKER_URL"] == "redis://redis:6379/0"


def test_cpu_override_drops_the_gpu_reservation() -> None:
    override = _load("docker-compose.cpu.yml")
    assert override["services"]["worker"]["deploy"] == {"__reset__": True}
    assert override["services"]["worker"]["environment"]["WITHSENSE_DEVICE"] == "cpu"
    # The faster CPU encoder is on by default there, and the image has ONNX Runtime for it.
    assert override["services"]["worker"]["environment"]["WITHSENSE_IMAGE_ENCODER"].endswith(":-onnx-int8}")
    assert override["services"]["api"]["environment"]["WITHSENSE_TEXT_ENCODER"].endswith(":-onnx-int8}")
    assert 'pip install ".[onnx]"' in (ROOT / "Dockerfile").read_text()


def test_compose_stores_photos_in_minio_for_every_process() -> None:
    services = _load("docker-compose.yml")["services"]
    assert services["minio"]["image"].startswith("minio/minio")
    assert services["minio"]["command"][:2] == ["server", "/data"]
    for name in ("api", "worker", "beat", "migrate"):
        env = services[name]["environment"]
        assert env["WITHSENSE_STORAGE"] == "s3"
        assert env["WITHSENSE_S3_ENDPOINT_URL"].endswith("http://minio:9000}")
        assert env["WITHSENSE_S3_BUCKET"] and env["WITHSENSE_S3_SECRET_ACCESS_KEY"].startswith("${MINIO_ROOT_PASSWORD")
        assert services[name]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_compose_has_an_optional_streaming_standby() -> None:
    services = _load("docker-compose.yml")["services"]
    replica = services["postgres-replica"]
    assert replica["profiles"] == ["replica"]
    script = replica["command"][0]
    assert "pg_basebackup -h postgres" in script and " -R " in script and "exec postgres" in script
    assert replica["image"] == services["postgres"]["image"]  # the same server and pgvector as the primary
    assert "WITHSENSE_DATABASE_REPLICA_URLS" in services["api"]["environment"]
    init = ROOT / "deploy" / "postgres" / "10-replication.sh"
    assert "host replication" in init.read_text()
    assert any(str(v).startswith("./deploy/postgres/10-replication.sh:") for v in services["postgres"]["volumes"])
