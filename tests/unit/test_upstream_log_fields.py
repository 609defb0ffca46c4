"""What an identity-provider call's warning names: the operation and the host, never the
path, the query or credentials a discovered URL may carry."""

from __future__ import annotations

from identity.http import _fields


def test_the_warning_names_host_and_port_only() -> None:
    fields = _fields(
        "token", "https://client:s3cret@idp.example.com:8443/oauth/token?code=abc", 0.5, "http_5xx"
    )
    assert fields["host"] == "idp.example.com:8443"
    assert "s3cret" not in repr(fields) and "code=abc" not in repr(fields)
    assert _fields("jwks", "https://idp.example.com/keys", 0.1, "timeout")["host"] == (
        "idp.example.com"
    )
