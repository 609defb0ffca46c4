"""Pages for people: a browser sign-in that fails where no app is known to go back to.

A failed login whose transaction is known goes back to its ``return_to`` with
``?error=<code>``. When the answer names no usable transaction (stale, used, forged, from
another browser) or the login cannot begin, a browser would otherwise land on raw JSON: a
request to a sign-in route whose ``Accept`` lists ``text/html`` gets a small page instead,
with the problem's status, saying what happened in words and linking back to the app
(``service.default_return_to``). API clients keep ``application/problem+json``.

The page has no script and nothing inline: its CSP allows only the stylesheet served at
``/pages/style.css`` (in every mode).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Final
from urllib.parse import urlsplit

from flask import Blueprint, Response, g, request

from identity import errors
from identity.login_transactions import SignInNotUsable, SignInProblem
from service.runtime import runtime

bp = Blueprint("pages", __name__)

STYLESHEET: Final = "/pages/style.css"
PROBLEM_PAGE_CSP: Final = (
    "default-src 'none'; style-src 'self'; img-src data:; form-action 'none'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
# Where a person's browser arrives during a sign-in (endpoint names of the blueprints).
SIGN_IN_ROUTES: Final = frozenset({"login.login", "login.callback", "saml.acs"})
_HTML_TYPES: Final = frozenset({"text/html", "application/xhtml+xml"})
_API_TYPES: Final = frozenset({"application/json", "application/problem+json"})


@dataclass(frozen=True)
class Words:
    """What the page says: a heading and one explanation."""

    heading: str
    explanation: str


_START_AGAIN = "Go back to the app and sign in again."

_BY_REASON: Final[dict[SignInProblem, Words]] = {
    "no_state": Words(
        "This sign-in request is not valid",
        "The answer that reached this page does not name a sign-in started here: it was "
        "altered or forged, or it was not made by this service. " + _START_AGAIN,
    ),
    "unknown": Words(
        "This sign-in link is stale or already used",
        "Each sign-in link works once, for ten minutes. This one was already used, has "
        "expired, or was never issued here. That happens when you go back in the browser "
        "after signing in, or open an old sign-in link. " + _START_AGAIN,
    ),
    "used": Words(
        "This sign-in link was already used",
        "Each sign-in link works once; it was opened twice, for example by going back in "
        "the browser. " + _START_AGAIN,
    ),
    "expired": Words(
        "This sign-in expired",
        "The identity provider answered more than ten minutes after the sign-in began. "
        + _START_AGAIN,
    ),
    "other_browser": Words(
        "This sign-in was started in another browser",
        "Finish it in the browser where it began, or sign in again here.",
    ),
    "other_provider": Words(
        "This sign-in was started with another identity provider",
        "The answer came back from a different provider than the one the sign-in began "
        "with. " + _START_AGAIN,
    ),
}

_UPSTREAM = Words(
    "The identity provider cannot be reached",
    "It did not answer, or answered with an error. Wait a moment, then sign in again.",
)
_UNREADABLE = Words(
    "The identity provider's answer could not be read",
    "It was not sent the way this service expects. " + _START_AGAIN,
)
_UNKNOWN = Words(
    "No such sign-in option",
    "This service does not know that identity provider. " + _START_AGAIN,
)

_BY_CODE: Final[dict[str, Words]] = {
    "invalid_request": Words(
        "This sign-in request is not valid",
        "It is incomplete or malformed, or there is nowhere to go back to. " + _START_AGAIN,
    ),
    "invalid_token": Words(
        "The identity provider's answer was refused",
        "It could not be verified, or it does not answer a sign-in started here. " + _START_AGAIN,
    ),
    "access_denied": Words(
        "The sign-in was refused",
        "The identity provider or this service's sign-in rules refused it.",
    ),
    "reauthentication_required": Words(
        "Your sign-in has expired", "Please sign in again at the identity provider."
    ),
    "unmappable_identity": Words(
        "This account cannot be used here",
        "The identity provider's answer does not name a user this service can admit.",
    ),
    "rate_limited": Words("Too many attempts", "Wait a moment, then sign in again."),
    "unknown_provider": _UNKNOWN,
    "not_found": _UNKNOWN,
    "payload_too_large": _UNREADABLE,
    "unsupported_media_type": _UNREADABLE,
    "upstream_error": _UPSTREAM,
    "upstream_unavailable": _UPSTREAM,
    "upstream_timeout": _UPSTREAM,
}


def words_for(error: errors.BrokerError) -> Words:
    """What the page says about ``error``: by the sign-in problem when it is one, else by
    its code."""
    if isinstance(error, SignInNotUsable):
        return _BY_REASON[error.reason]
    found = _BY_CODE.get(error.code)
    if found is not None:
        return found
    return Words(error.title, "The sign-in could not be completed. " + _START_AGAIN)


def wants_page() -> bool:
    """Whether this request is a person's browser on a sign-in route: ``Accept`` lists
    ``text/html`` (or XHTML) and prefers it at least as much as JSON. ``*/*`` alone is an
    API client's default and keeps the problem document."""
    rule = request.url_rule
    if rule is None or rule.endpoint not in SIGN_IN_ROUTES:
        return False
    accept = request.accept_mimetypes
    html_q = max((q for value, q in accept if value.lower() in _HTML_TYPES), default=0)
    api_q = max((q for value, q in accept if value.lower() in _API_TYPES), default=0)
    return html_q > 0 and html_q >= api_q


def _way_back() -> str | None:
    """The app's page to go back to: ``service.default_return_to`` (else the first allowed
    ``return_to``) when it is a web page."""
    url = runtime().config.service.effective_default_return_to
    if url is None or urlsplit(url).scheme not in ("http", "https"):
        return None
    return url


def _stylesheet_url() -> str:
    """The stylesheet's path below ``service.public_url`` (which may have a path)."""
    prefix = urlsplit(runtime().config.service.public_url).path.rstrip("/")
    return prefix + STYLESHEET


_PAGE: Final = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{heading} · Chime Identity Broker</title>
  <link rel="icon" href="data:,">
  <link rel="stylesheet" href="{stylesheet}">
</head>
<body>
  <main>
    <header>
      <h1>Sign-in</h1>
    </header>
    <section class="card" id="problem" data-code="{code}">
      <h2 id="heading">{heading}</h2>
      <p id="explanation">{explanation}</p>
      <p id="detail" class="detail muted">{detail} <code>{code}</code></p>
      {way_back}
    </section>
    <footer class="muted">Request id <code id="request-id">{request_id}</code></footer>
  </main>
</body>
</html>
"""

_BACK_LINK: Final = (
    '<p class="actions"><a id="back" class="button primary" href="{url}">Back to the app</a></p>'
)
_CLOSE: Final = '<p id="close">You can close this window and sign in again from the app.</p>'


def problem_page(error: errors.BrokerError, detail: str) -> Response:
    """``error`` as the page, with its status; ``detail`` is the problem's (safe) detail."""
    words = words_for(error)
    back = _way_back()
    way_back = _BACK_LINK.format(url=html.escape(back, quote=True)) if back else _CLOSE
    body = _PAGE.format(
        heading=html.escape(words.heading),
        explanation=html.escape(words.explanation),
        detail=html.escape(detail),
        code=html.escape(error.code, quote=True),
        way_back=way_back,
        stylesheet=html.escape(_stylesheet_url(), quote=True),
        request_id=html.escape(str(g.get("request_id") or "")),
    )
    response = Response(body, status=error.status, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = PROBLEM_PAGE_CSP
    response.headers["Cache-Control"] = "no-store"
    response.vary.add("Accept")
    return response


@cache
def _stylesheet() -> bytes:
    return resources.files("service").joinpath("page.css").read_bytes()


@bp.get(STYLESHEET)
def stylesheet() -> Response:
    """The pages' stylesheet, in every mode."""
    response = Response(_stylesheet(), content_type="text/css; charset=utf-8")
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response
