"""``return_to_matches`` with RFC 8252 loopback entries: any port for native logins only."""

from __future__ import annotations

import pytest

from identity.config.types import return_to_matches


@pytest.mark.parametrize(
    ("entry", "url", "native", "matches"),
    [
        ("http://127.0.0.1/", "http://127.0.0.1:49152/", True, True),
        ("http://127.0.0.1/", "http://127.0.0.1:1/callback?x=1", True, True),
        ("http://[::1]/", "http://[::1]:8080/", True, True),
        ("http://127.0.0.1/", "http://127.0.0.1/", True, True),
        ("http://127.0.0.1/", "http://127.0.0.1:49152/", False, False),
        ("http://[::1]/", "http://[::1]:8080/", False, False),
        ("http://127.0.0.1/", "http://[::1]:8080/", True, False),
        ("http://127.0.0.1/", "http://localhost:8080/", True, False),
        ("http://127.0.0.1/", "https://127.0.0.1:8080/", True, False),
        ("http://127.0.0.1/", "http://127.0.0.1:8080@evil.example/", True, False),
        ("http://127.0.0.1/", "http://user@127.0.0.1:8080/", True, False),
        ("http://127.0.0.1/", "http://127.0.0.1:99999/", True, False),
        ("http://127.0.0.1/", "http://127.0.0.1:/", True, False),
        ("http://127.0.0.1/", "http://127.0.0.1:8080/../x", True, False),
        ("http://127.0.0.1/app/", "http://127.0.0.1:8080/app/", True, False),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8081/", True, False),
        ("http://localhost/", "http://localhost:8080/", True, False),
    ],
)
def test_loopback_entries_match_any_port_only_for_native_logins(
    entry: str, url: str, native: bool, matches: bool
) -> None:
    assert return_to_matches(entry, url, loopback_any_port=native) is matches
