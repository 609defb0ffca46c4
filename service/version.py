"""The installed package's version, as ``chime-broker --version`` and the OpenAPI document
report it."""

from __future__ import annotations

DISTRIBUTION = "chime-identity-broker"


def package_version() -> str:
    """The installed package's version (``setup.cfg``), or ``unknown`` outside an install."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"
