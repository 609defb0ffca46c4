"""The headers every answer carries, added as the header list goes to the server."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from service.logs import request_id_var
from service.security import HSTS, SECURITY_HEADERS, ResponseHeaders

ORIGIN = "https://app.example"


def answer(
    headers: list[tuple[str, str]], path: str = "/v1/token", **environ: str
) -> list[tuple[str, str]]:
    """The header list the server receives for an answer whose view set ``headers``."""

    def view(env: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", list(headers))
        return [b"{}"]

    sent: list[tuple[str, str]] = []

    def server(status: str, given: list[tuple[str, str]], exc_info: Any = None) -> Any:
        sent.extend(given)
        return lambda data: None

    app = ResponseHeaders(view, strict_transport=True, allowed_origins=frozenset({ORIGIN}))
    list(app({"PATH_INFO": path, **environ}, server))
    return sent


def names(headers: list[tuple[str, str]]) -> list[str]:
    return [name.lower() for name, _ in headers]


def test_every_default_is_added_once_and_a_views_own_is_kept() -> None:
    sent = answer(
        [("Content-Security-Policy", "default-src 'self'"), ("Cache-Control", "max-age=5")]
    )
    for name in [*SECURITY_HEADERS, "Cache-Control", "Strict-Transport-Security", "Vary"]:
        assert names(sent).count(name.lower()) == 1, name
    assert dict(sent)["Content-Security-Policy"] == "default-src 'self'"
    assert dict(sent)["Cache-Control"] == "max-age=5"
    assert dict(sent)["Strict-Transport-Security"] == HSTS


def test_the_api_varies_on_origin_also_beside_the_views_own_vary() -> None:
    assert dict(answer([("Vary", "Accept")]))["Vary"] == "Accept, Origin"
    assert dict(answer([("Vary", "origin")]))["Vary"] == "origin"
    assert "vary" not in names(answer([], path="/healthz"))


def test_cors_answers_only_an_allowed_origin_and_replaces_what_a_view_set() -> None:
    allowed = answer([("Access-Control-Allow-Origin", "*")], HTTP_ORIGIN=ORIGIN)
    assert names(allowed).count("access-control-allow-origin") == 1
    assert dict(allowed)["Access-Control-Allow-Origin"] == ORIGIN
    assert dict(allowed)["Access-Control-Allow-Credentials"] == "true"
    other = answer([], HTTP_ORIGIN="https://evil.example")
    assert "access-control-allow-origin" not in names(other)
    assert "access-control-allow-origin" not in names(
        answer([], path="/healthz", HTTP_ORIGIN=ORIGIN)
    )


def test_the_request_id_of_the_request_is_sent_once() -> None:
    token = request_id_var.set("req-0123456789")
    try:
        sent = answer([("X-Request-Id", "from-the-view")])
    finally:
        request_id_var.reset(token)
    assert [v for n, v in sent if n.lower() == "x-request-id"] == ["req-0123456789"]
    assert "x-request-id" not in names(answer([]))
