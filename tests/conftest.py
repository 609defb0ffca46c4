"""Shared fixtures: real parts started on free loopback ports, each stopped by its fixture."""

from __future__ import annotations

import socket

import pytest

pytest_plugins = [
    "tests.fixtures.redis_server",
    "tests.fixtures.moto_server",
    "tests.fixtures.dynamodb",
    "tests.fixtures.pool_proxy",
    "tests.fixtures.fault_proxy",
    "tests.fixtures.oidc_provider",
    "tests.fixtures.certified_op",
    "tests.fixtures.saml_idp",
    "tests.fixtures.pysaml2_idp",
    "tests.fixtures.apps",
    "tests.fixtures.live_server",
    "tests.fixtures.logs",
    "tests.fixtures.records",
    "tests.fakes",
]


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def closed_port() -> int:
    """A loopback port with no listener: connecting to it is refused."""
    return free_port()
