"""What a newcomer meets first: the README's YAML and JSON snippets parse (and its provider
entries validate), ``make demo`` takes its ports, ``chime-broker --version`` answers, and
the LICENSE file is the license ``setup.cfg`` declares."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml

from identity.config.document import build_config, default_references
from tests.fixtures.configs import valid_config_dict

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
# A fenced block, at any indentation (inside a list item too): its language and its text.
_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.S | re.M
)


def readme_blocks(*languages: str) -> list[tuple[int, str, str]]:
    """``(line, language, text)`` of every fenced block of README.md in ``languages``."""
    text = README.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        if match["lang"] in languages:
            indent = len(match["indent"])
            body = "".join(line[indent:] for line in match["body"].splitlines(keepends=True))
            found.append((text.count("\n", 0, match.start()) + 1, match["lang"], body))
    return found


YAML_BLOCKS = readme_blocks("yaml", "yml")
JSON_BLOCKS = readme_blocks("json")


def test_the_readme_has_snippets_to_check() -> None:
    assert len(YAML_BLOCKS) >= 4
    assert JSON_BLOCKS


@pytest.mark.parametrize(
    ("line", "lang", "body"), YAML_BLOCKS, ids=[f"line-{b[0]}" for b in YAML_BLOCKS]
)
def test_every_yaml_snippet_parses(line: int, lang: str, body: str) -> None:
    try:
        document = yaml.safe_load(body)
    except yaml.YAMLError as e:
        pytest.fail(f"README.md line {line}: not YAML: {e}")
    assert document is not None, f"README.md line {line}: empty"


def _provider_entries(document: Any) -> list[dict[str, Any]]:
    """The provider entries a snippet shows whole: a list of entries with ``kind`` (a
    config excerpt may leave keys out)."""
    if isinstance(document, list) and all(
        isinstance(item, dict) and "kind" in item for item in document
    ):
        return document
    return []


PROVIDER_SNIPPETS = [
    (line, entries)
    for line, _, body in YAML_BLOCKS
    if (entries := _provider_entries(yaml.safe_load(body)))
]


def test_the_readme_shows_provider_entries() -> None:
    kinds = {entry["kind"] for _, entries in PROVIDER_SNIPPETS for entry in entries}
    assert "guest" in kinds


@pytest.mark.parametrize(
    ("line", "entries"), PROVIDER_SNIPPETS, ids=[f"line-{s[0]}" for s in PROVIDER_SNIPPETS]
)
def test_every_provider_entry_in_the_readme_is_valid_config(
    line: int, entries: list[dict[str, Any]]
) -> None:
    """Each entry, next to the valid base config, passes validation (references such as
    ``${env:…}`` stand in as placeholders, as in ``check --offline``)."""
    names = {entry.get("name") for entry in entries}
    base = [p for p in valid_config_dict()["providers"] if p["name"] not in names]
    document = valid_config_dict(providers=base + entries)
    build_config(document, references=default_references({}, placeholders=True))


@pytest.mark.parametrize(
    ("line", "lang", "body"), JSON_BLOCKS, ids=[f"line-{b[0]}" for b in JSON_BLOCKS]
)
def test_every_json_snippet_parses(line: int, lang: str, body: str) -> None:
    try:
        json.loads(body)
    except ValueError as e:
        pytest.fail(f"README.md line {line}: not JSON: {e}")


# -- make demo, --version, LICENSE ---------------------------------------------------------


def _make_demo(*variables: str) -> str:
    """The ``chime-broker demo`` command ``make -n demo`` would run."""
    make = shutil.which("make")
    if make is None:
        pytest.fail("make is missing: the project's commands are make targets")
    done = subprocess.run(
        [make, "-n", "-C", str(REPO), "demo", *variables],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    [command] = [line for line in done.stdout.splitlines() if "chime-broker demo" in line]
    return command.split("chime-broker", 1)[1].split()


def test_make_demo_passes_its_ports_on() -> None:
    assert _make_demo("PORT=1", "IDP_PORT=2") == ["demo", "--port", "1", "--idp-port", "2"]
    assert _make_demo("PORT=9000") == ["demo", "--port", "9000"]
    assert _make_demo() == ["demo"]


def test_chime_broker_version_prints_the_installed_version() -> None:
    command = Path(sys.executable).parent / "chime-broker"
    done = subprocess.run(
        [str(command), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"chime-broker {version('chime-identity-broker')}"
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    assert version("chime-identity-broker") == setup["metadata"]["version"]


# The first lines of each license's canonical text, by SPDX identifier.
_LICENSE_HEADINGS = {
    "Apache-2.0": ("Apache License", "Version 2.0, January 2004"),
    "MIT": ("MIT License",),
}


def test_the_license_file_is_the_license_setup_cfg_declares() -> None:
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    declared = setup["metadata"]["license"]
    assert declared in _LICENSE_HEADINGS, f"no canonical text known for {declared!r}"
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    opening = [line.strip() for line in text.splitlines() if line.strip()][:3]
    for heading in _LICENSE_HEADINGS[declared]:
        assert heading in opening
    assert "TERMS AND CONDITIONS" in text
