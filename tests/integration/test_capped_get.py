"""``identity.http.get_capped`` and ``json_object``, the bounded read of an identity
provider's JSON answer (discovery documents, userinfo), against a loopback HTTP server
that answers what each test asks of it and records what it was sent."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from werkzeug.wrappers import Request, Response

from identity.errors import UpstreamTimeout, UpstreamUnavailable
from identity.http import CappedAnswer, get_capped, json_object, upstream_session
from tests.fixtures.loopback import LoopbackServer

LIMIT = 64


@dataclass
class Upstream:
    """Answers ``/<name>`` with ``answers[name]``; ``/hang`` answers once ``release`` is set."""

    answers: dict[str, Response] = field(default_factory=dict)
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        self.seen.append((request.path, dict(request.headers)))
        if request.path == "/hang":
            self.release.wait(timeout=30)
        answer = self.answers.get(request.path.lstrip("/"), Response("missing", status=404))
        result: Iterable[bytes] = answer(environ, start_response)
        return result


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    app = Upstream()
    server = LoopbackServer(app, name="capped-upstream")
    app.url = f"http://127.0.0.1:{server.port}"
    yield app
    app.release.set()
    server.stop()


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with upstream_session(pool_maxsize=2, operation="userinfo") as s:
        yield s


def fetch(session: requests.Session, url: str, *, read_timeout: float = 5.0) -> CappedAnswer:
    return get_capped(
        session,
        url,
        headers={"Accept": "application/json", "Authorization": "Bearer at-123"},
        timeouts=(2.0, read_timeout),
        limit=LIMIT,
        upstream="the test IdP",
        where=f"test document {url}",
    )


def test_a_200_is_read_with_its_content_type_and_the_headers_asked_for(
    upstream: Upstream, session: requests.Session
) -> None:
    upstream.answers["doc"] = Response(
        b'{"issuer": "x"}', content_type="application/json; charset=utf-8"
    )
    answer = fetch(session, f"{upstream.url}/doc")
    assert answer == CappedAnswer(200, "application/json; charset=utf-8", b'{"issuer": "x"}')
    assert answer.body is not None and json_object(answer.body) == {"issuer": "x"}
    path, headers = upstream.seen[-1]
    assert path == "/doc"
    assert headers["Accept"] == "application/json"
    assert headers["Authorization"] == "Bearer at-123"


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_cap_is_none(
    upstream: Upstream, session: requests.Session, streamed: bool
) -> None:
    big = b'{"pad": "' + b"x" * LIMIT + b'"}'
    # A generator body has no Content-Length: the cap is enforced while reading.
    upstream.answers["big"] = Response(iter([big]) if streamed else big)
    answer = fetch(session, f"{upstream.url}/big")
    assert answer.status == 200 and answer.body is None


def test_a_redirect_is_not_followed_and_an_error_body_is_not_read(
    upstream: Upstream, session: requests.Session
) -> None:
    upstream.answers["moved"] = Response(b"see elsewhere", status=302, headers={"Location": "/doc"})
    upstream.answers["broken"] = Response(b'{"error": "busy"}', status=500)
    before = len(upstream.seen)
    assert fetch(session, f"{upstream.url}/moved").status == 302
    assert fetch(session, f"{upstream.url}/broken") == CappedAnswer(
        500, "text/plain; charset=utf-8", b""
    )
    assert [path for path, _ in upstream.seen[before:]] == ["/moved", "/broken"]


def test_no_answer_is_503_refused_and_504_timed_out(
    upstream: Upstream, session: requests.Session, closed_port: int
) -> None:
    with pytest.raises(UpstreamUnavailable) as refused:
        fetch(session, f"http://127.0.0.1:{closed_port}/doc")
    assert refused.value.code == "upstream_unavailable"
    assert str(refused.value) == "the test IdP is unreachable"
    assert refused.value.__cause__ is None
    with pytest.raises(UpstreamTimeout) as timed_out:
        fetch(session, f"{upstream.url}/hang", read_timeout=0.2)
    assert timed_out.value.code == "upstream_timeout"
    assert timed_out.value.log_detail == f"test document {upstream.url}/hang timed out"
    assert timed_out.value.__cause__ is None


@pytest.mark.parametrize(
    "body",
    [b"[1, 2]", b'"text"', b"<html>ok</html>", b"", b"\xff\xfe", b"[" * 100_000],
    ids=["list", "string", "html", "empty", "not-utf8", "too-deep"],
)
def test_json_object_is_none_for_anything_but_an_object(body: bytes) -> None:
    assert json_object(body) is None


def test_json_object_reads_an_object() -> None:
    assert json_object(b'{"sub": "alice", "n": [1]}') == {"sub": "alice", "n": [1]}
