"""What ships: the wheel (what the production image installs) leaves the test stand-ins out, `withsense eval`
says so in one line where they are missing, and in a development checkout its `builtin:` models still resolve."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT_PACKAGES = ("api", "cli", "workers", "services", "migrations", "evaluation", "db", "core")

# `withsense eval` alone, as a plain install of the wheel runs it: without the finder of an editable install of this
# project (the test's own environment has one, which would find the checkout's stand-ins), then the command.
PLAIN_INSTALL = (
    "import sys; sys.meta_path[:] = [f for f in sys.meta_path if not f.__module__.startswith('__editable__')]\n"
)
EVAL_APP = (
    PLAIN_INSTALL
    + "import typer; from evaluation.cli import eval_command; app = typer.Typer(); app.command()(eval_command); app()"
)


def _run(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of the source (the build writes into its tree) and unpacked."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in PRODUCT_PACKAGES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(base / "dist"), "."],
        cwd=source,
        env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"),
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    [wheel] = (base / "dist").glob("withsense_search-*.whl")
    site = base / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def test_the_wheel_has_the_service_and_no_standins(installed_wheel: Path) -> None:
    shipped = {path.relative_to(installed_wheel).as_posix() for path in installed_wheel.rglob("*") if path.is_file()}
    for needed in ("api/app.py", "core/policy_rules.yaml", "db/models.py", "evaluation/cli.py", "migrations/env.py"):
        assert needed in shipped
    assert any(path.startswith("migrations/versions/") for path in shipped)
    assert not [path for path in shipped if path.startswith("evaluation/standins")]
    # The way the eval tests below run it imports this copy, and finds no stand-ins in it.
    probe = PLAIN_INSTALL + (
        "import evaluation; print(evaluation.__file__)\n"
        "try:\n    import evaluation.standins\nexcept ModuleNotFoundError:\n    print('no stand-ins')\n"
    )
    found = _run(
        [sys.executable, "-c", probe], cwd=installed_wheel.parent, env=dict(os.environ, PYTHONPATH=str(installed_wheel))
    )
    assert found.stdout.splitlines() == [str(installed_wheel / "evaluation" / "__init__.py"), "no stand-ins"], found


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["--demo"], "--demo"),
        (["{dataset}", "--model", "builtin:tiny-clip"], "builtin:tiny-clip"),
        (["{dataset}", "--model", "builtin:random-clip"], "builtin:random-clip"),
        (
            ["{dataset}", "--model", "x", "--baseline-image", "builtin:tiny-cnn", "--baseline-text", "x"],
            "builtin:tiny-cnn",
        ),
    ],
)
def test_eval_without_the_standins_stops_with_one_line(
    installed_wheel: Path, tmp_path: Path, args: list[str], what: str
) -> None:
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    env = dict(os.environ, PYTHONPATH=str(installed_wheel), WITHSENSE_HOME=str(tmp_path / "home"))
    # Run from elsewhere, so that the installed copy is imported, not this checkout.
    result = _run(
        [sys.executable, "-c", EVAL_APP, *(a.format(dataset=dataset) for a in args), "--out", str(tmp_path / "out")],
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {what} needs the test stand-ins (evaluation.standins)")
    assert "development checkout" in lines[0]
    assert not (tmp_path / "home" / "models").exists()


def test_builtin_models_resolve_in_a_development_checkout(tiny_clip_path: Path, tmp_path: Path) -> None:
    """builtin:tiny-clip is the very model the tests train (same cache key); the others are built on demand."""
    models = tmp_path / "home" / "models"
    models.mkdir(parents=True)
    # $WITHSENSE_HOME/models holds the built-in models; the trained one is linked in from the tests' cache.
    (models / tiny_clip_path.name).symlink_to(tiny_clip_path.resolve(), target_is_directory=True)
    script = (
        "from evaluation.cli import resolve_clip, resolve_encoder\n"
        "print(resolve_clip('builtin:tiny-clip').path)\n"
        "print(resolve_clip('builtin:random-clip').path)\n"
        "print(resolve_encoder('builtin:tiny-bert', 'text'))\n"
    )
    result = _run([sys.executable, "-c", script], cwd=ROOT, env=dict(os.environ, WITHSENSE_HOME=str(models.parent)))
    assert result.returncode == 0, result.stderr[-3000:]
    tiny, random_clip, bert = (Path(line) for line in result.stdout.strip().splitlines())
    assert tiny.resolve() == tiny_clip_path.resolve()
    assert tiny.parent == random_clip.parent == bert.parent == models
    assert (random_clip / "modules.json").is_file() and (bert / "config.json").is_file()


def test_the_image_gets_every_product_package_and_no_standins() -> None:
    """The Dockerfile copies packages by name: a new layer (services/, say) must be copied too."""
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    wanted = {pattern.rstrip("*") for pattern in packages["include"]}
    assert wanted == set(PRODUCT_PACKAGES)
    copied = {line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")}
    assert wanted <= copied
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    assert "evaluation/standins" in ignored
