"""The package as pip builds it: every package under gateway/ is listed in pyproject.toml (they are
listed, not found, because the templates are mapped in from templates/), and a wheel holds every
template and loads them without the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parents[2]
# pip fetches the build backend (setuptools) into an isolated environment, then builds.
WHEEL_TIMEOUT: Final = 300.0
RENDER_TIMEOUT: Final = 60.0


def listed_packages() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages: list[str] = config["tool"]["setuptools"]["packages"]
    return packages


def test_every_package_is_listed() -> None:
    found = {".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "gateway").rglob("__init__.py")} | {
        "gateway.templates",
        "gateway.templates.service",
    }
    assert set(listed_packages()) == found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the sources, so no stale build/ folder can leak into it."""
    source = tmp_path_factory.mktemp("source")
    for name in ("gateway", "templates"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(source)],
        check=True,
        timeout=WHEEL_TIMEOUT,
        capture_output=True,
    )
    (built,) = out.glob("mcp_gateway-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_holds_every_module_and_template(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {str(path.relative_to(ROOT)) for path in (ROOT / "gateway").rglob("*.py")}
    templates = {f"gateway/templates/service/{path.name}" for path in (ROOT / "templates" / "service").glob("*.tmpl")}
    assert templates, "templates/service holds the templates"
    assert sources | templates | {"gateway/py.typed"} <= names


@pytest.mark.slow
def test_new_service_renders_from_the_wheel_alone(wheel: Path, tmp_path: Path) -> None:
    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)
    out = tmp_path / "out"
    out.mkdir()
    # The extracted wheel comes first on the path, ahead of this checkout's editable install.
    env = {**os.environ, "PYTHONPATH": str(installed)}
    script = (
        "import gateway, sys; from gateway.cli import main; "
        f"assert gateway.__file__.startswith({str(installed)!r}), gateway.__file__; "
        "sys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "new-service", "time", "--command", "mcp-server-time", "--out", str(out)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RENDER_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (out / "time" / "Dockerfile").read_text().startswith("# syntax=docker/dockerfile:1")
