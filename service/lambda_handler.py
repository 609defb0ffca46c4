"""The broker on AWS Lambda, behind API Gateway (REST and HTTP APIs), an Application Load
Balancer or a function URL: ``make_handler(app)`` turns the app into a Lambda handler, and
``lambda_config_problems`` is the start-up rule for the store.

Lambda is recognised by ``AWS_LAMBDA_FUNCTION_NAME``. The app is built once per instance
(at the module import that is Lambda's cold start), so its AWS clients and store connections
serve every invocation that instance receives.

The client's address is the one AWS saw connect: ``requestContext.identity.sourceIp`` (REST
API), ``requestContext.http.sourceIp`` (HTTP API, function URL), or the entry an ALB appends
to ``X-Forwarded-For``. Entries a client wrote into ``X-Forwarded-For`` itself are believed
only as far as ``service.trusted_proxies`` says, which then counts the proxies in front of
API Gateway or the ALB (a CloudFront distribution, say).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from flask import Flask

    from identity.config.document import BrokerConfig

LAMBDA_ENV: Final = "AWS_LAMBDA_FUNCTION_NAME"
SHARED_STORES: Final = ("redis", "rediss", "dynamodb")
"""The store schemes every Lambda instance of one function can share."""

TEXT_TYPES: Final = (
    "text/",
    "application/json",
    "application/problem+json",
    "application/xml",
    "application/samlmetadata+xml",
)
"""Content types that go back to AWS as text; anything else is base64 (none of the broker's
own responses is binary)."""

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


class LambdaStartupError(RuntimeError):
    """The function cannot start; the message lists every problem, one per line."""


def on_lambda(environ: Mapping[str, str]) -> bool:
    """Whether this process is a Lambda function instance."""
    return bool(environ.get(LAMBDA_ENV))


def lambda_config_problems(config: BrokerConfig, environ: Mapping[str, str]) -> list[str]:
    """What stops ``config`` from serving on Lambda (nothing when not on Lambda): a store
    that lives inside one instance, when each instance would then have its own."""
    if not on_lambda(environ):
        return []
    scheme = config.store_scheme.lower()
    if scheme in SHARED_STORES:
        return []
    shared = ", ".join(f"{s}://" for s in SHARED_STORES)
    return [
        f"store: {scheme}:// is not shared between AWS Lambda instances (each instance "
        "would have its own sessions and sign-ins, and a request landing on another "
        f"would not find them); use one of {shared}"
    ]


def _entries(header: str | None) -> list[str]:
    return [e.strip() for e in (header or "").split(",") if e.strip()]


def _peer_and_forwarded(environ: WSGIEnvironment) -> tuple[str, list[str]]:
    """The address AWS saw connect, and the ``X-Forwarded-For`` entries in front of it."""
    forwarded = _entries(environ.get("HTTP_X_FORWARDED_FOR"))
    context = environ.get("apig_wsgi.request_context") or {}
    if "elb" in context:
        # An ALB appends the address of its peer; nothing else in the event names it.
        return (forwarded[-1], forwarded[:-1]) if forwarded else ("", [])
    source = (context.get("http") or context.get("identity") or {}).get("sourceIp") or ""
    # API Gateway appends the peer's address (CloudFront, for an edge-optimized API, adds
    # its own after it): what precedes the last mention of the peer came from in front.
    for index in range(len(forwarded) - 1, -1, -1):
        if forwarded[index] == source:
            return source, forwarded[:index]
    return source, forwarded


def _from_event(app: WSGIApplication) -> WSGIApplication:
    """``app`` with the client address taken from the event rather than from headers."""

    def wsgi(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        peer, forwarded = _peer_and_forwarded(environ)
        environ["REMOTE_ADDR"] = peer
        if forwarded:
            environ["HTTP_X_FORWARDED_FOR"] = ", ".join(forwarded)
        else:
            environ.pop("HTTP_X_FORWARDED_FOR", None)
        return app(environ, start_response)

    return wsgi


def make_handler(app: Flask) -> Handler:
    """The Lambda handler for ``app``: API Gateway REST (payload 1.0) and HTTP (1.0 or 2.0)
    APIs, ALB target groups and function URLs. Cookies come back in ``cookies`` (2.0) or
    ``multiValueHeaders`` (1.0 and ALB; an ALB target group needs multi-value headers on
    for a response that sets two cookies)."""
    from apig_wsgi import make_lambda_handler

    return make_lambda_handler(
        _from_event(app), binary_support=True, non_binary_content_type_prefixes=TEXT_TYPES
    )
