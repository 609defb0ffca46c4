"""The broker as an operator installs it: the wheel alone, without the ``[test]`` extra, in a
fresh virtual environment; ``serve`` must vend from gevent workers importing only what the
wheel declares, and ``demo`` without moto must say what to install."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.serve import corp_config, serving, vend_as_ada

# The first test also builds the wheel and installs its dependencies from the index.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
ABSENT_PACKAGE_WARNING = "is absent from the `packages` configuration"


@dataclass(frozen=True)
class Installed:
    cli: Path
    build_output: str
    install_output: str


def _run(command: list[str], cwd: Path) -> str:
    result = subprocess.run(
        command, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=600
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment without anything that would let the checkout be imported."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, **(extra or {})}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("install")
    wheels = root / "wheels"
    build_output = _run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(wheels), str(REPO)],
        cwd=root,
    )
    [wheel] = wheels.glob("chime_identity_broker-*.whl")
    venv = root / "venv"
    # The environment gets no pip of its own: this pip installs into it (--python), which
    # saves bootstrapping one and resolves with a current pip.
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    install_output = _run(
        [
            *(sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")),
            *("install", "-v", str(wheel)),
        ],
        cwd=root,
    )
    yield Installed(venv / "bin" / "chime-broker", build_output, install_output)


def test_building_and_installing_the_wheel_warns_of_no_missing_package(
    installed: Installed,
) -> None:
    assert ABSENT_PACKAGE_WARNING not in installed.build_output
    assert ABSENT_PACKAGE_WARNING not in installed.install_output


def test_installed_serve_vends_from_gevent_workers(
    installed: Installed, tmp_path: Path, aws: Any, oidc_provider: Any
) -> None:
    config = corp_config(aws, oidc_provider, tmp_path)
    with serving(str(installed.cli), config, workers=1, env=_clean_env(), cwd=tmp_path) as (
        base,
        stderr,
    ):
        vend_as_ada(base, aws, oidc_provider)
    assert "ModuleNotFoundError" not in stderr[0]
    assert "gevent" in stderr[0].lower()


def test_installed_demo_without_moto_says_what_to_install(
    installed: Installed, tmp_path: Path
) -> None:
    result = subprocess.run(
        [str(installed.cli), "demo", "--port", "0"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "pip install 'chime-identity-broker[demo]'" in result.stderr
    assert "Traceback" not in result.stderr


_READ_PAGE_CSS = (
    "from importlib import resources; "
    "print(resources.files('service').joinpath('page.css').read_text()[:200])"
)


def test_the_installed_wheel_has_its_version_and_the_pages_stylesheet(
    installed: Installed, tmp_path: Path
) -> None:
    def run(*command: str) -> str:
        done = subprocess.run(
            list(command),
            cwd=tmp_path,
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    printed = run(str(installed.cli), "--version")
    assert printed.strip() == f"chime-broker {setup['metadata']['version']}"
    stylesheet = run(str(installed.cli.parent / "python"), "-c", _READ_PAGE_CSS)
    assert stylesheet.startswith("/* The broker's own pages")
