"""Structured JSON logs with a request id, and a redactor that keeps secrets out of them.

Every record passes through :class:`Redactor`: the config's secret values, anything shaped
like a JWT, a SAML document, an AWS key or an ``Authorization`` value is replaced before the
record is formatted, whatever logger emitted it (ours, Werkzeug's, botocore's, gunicorn's).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from identity.times import rfc3339

if TYPE_CHECKING:
    from flask import Flask

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)

_PATTERNS = [
    # compact JWS/JWE (id tokens, invites, developer OpenID tokens)
    re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){0,2}"),
    # AWS access key ids
    re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b"),
    # Authorization header values and bearer tokens
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"),
    # named secret fields in query strings, forms and JSON
    re.compile(
        r"(?i)(\"?(?:access_token|id_token|refresh_token|code_verifier|client_secret|"
        r"secret_access_key|session_token|SessionToken|SecretKey|SecretAccessKey|Token|"
        r"SAMLResponse|SAMLRequest|password|invite|code)\"?\s*[=:]\s*\"?)[^\"&\s,}]+"
    ),
    # base64 blobs long enough to be an assertion or a session token
    re.compile(r"[A-Za-z0-9+/]{200,}={0,2}"),
]
# The names the named-field pattern looks for, and the literal prefixes of the others.
_FIELD_NAMES = (
    "access_token", "id_token", "refresh_token", "code_verifier", "client_secret",
    "secret_access_key", "session_token", "sessiontoken", "secretkey", "secretaccesskey",
    "token", "samlresponse", "samlrequest", "password", "invite", "code",
)  # fmt: skip
_NAMED_FIELDS = tuple(name + sep for name in _FIELD_NAMES for sep in ("=", ":"))
_PREFIXES = ("eyj", "akia", "asia", "aroa", "aida", "bearer", "basic")
# What the named-field pattern allows between a name and its "=" or ":": quotes and what
# ``\s`` matches (in ASCII text).
_GAP = str.maketrans("", "", "".join(c for c in map(chr, range(128)) if re.match(r'[\s"]', c)))
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{200,}")
# The shortest text any pattern or secret can match (``code=x``).
_SHORTEST_MATCH = 6
REDACTED = "[redacted]"


def _clean(joined: str, texts: Sequence[str]) -> bool:
    """True when no pattern can match in any of ``texts`` (``joined``: them joined by NUL,
    which is neither a gap the named-field pattern allows nor part of a run).

    Each pattern has a necessary condition that substring searches check in a fraction of
    the time its regex takes (an alternation costs microseconds per character); most log
    text meets none. Text outside ASCII, where case-insensitive matching has more forms
    than ``str.lower`` gives, always goes to the patterns.
    """
    if not joined.isascii():
        return False
    lowered = joined.lower()
    if any(prefix in lowered for prefix in _PREFIXES):
        return False
    if "=" in lowered or ":" in lowered:
        closed = lowered.translate(_GAP)
        if any(named in closed for named in _NAMED_FIELDS):
            return False
    return not any(len(text) >= 200 and _BASE64_RUN.search(text) for text in texts)


def replace_patterns(text: str) -> str:
    """``text`` with whatever any pattern matches replaced: the slow path, which the quick
    check spares text that cannot match."""
    for pattern in _PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        else:
            text = pattern.sub(REDACTED, text)
    return text


class Redactor(logging.Filter):
    """Rewrites each record's message and arguments with secrets replaced."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: list[str] = []
        self.add_secrets(secrets)

    def add_secrets(self, secrets: Iterable[str]) -> None:
        for secret in secrets:
            if secret and len(secret) >= 6 and secret not in self._secrets:
                self._secrets.append(secret)
        self._secrets.sort(key=len, reverse=True)

    def redact(self, text: str) -> str:
        if len(text) < _SHORTEST_MATCH:
            return text
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if _clean(text, (text,)):
            return text
        return replace_patterns(text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.args = None
        fields = getattr(record, "fields", None)
        texts = [message]
        if isinstance(fields, dict):
            texts += [v for v in fields.values() if isinstance(v, str)]
        # The message and every field are checked together; only a record that may hold a
        # secret is rewritten piece by piece.
        joined = "\x00".join(texts)
        if any(secret in joined for secret in self._secrets) or not _clean(joined, texts):
            message = self.redact(message)
            if isinstance(fields, dict):
                record.fields = {
                    k: self.redact(v) if isinstance(v, str) else v for k, v in fields.items()
                }
        record.msg = message
        if record.exc_info:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, extra fields."""

    # built once: json.dumps with options builds a new encoder at every call
    _encoder = json.JSONEncoder(default=str, separators=(",", ":"))

    @staticmethod
    def _time(record: logging.LogRecord) -> str:
        # rfc3339 formats each second once; the milliseconds go before its "Z".
        return f"{rfc3339(record.created)[:-1]}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return self._encoder.encode(entry)


_REDACTOR = Redactor()
_NOISY = ("botocore", "urllib3", "boto3", "werkzeug")


def json_handler() -> logging.Handler:
    """The one handler: JSON lines on stderr, every record through the redactor."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_REDACTOR)
    handler._chime_broker = True  # type: ignore[attr-defined]
    return handler


def configure_logging(secrets: Iterable[str] = (), *, level: int = logging.INFO) -> Redactor:
    """Send every logger's records through the redactor to one JSON handler on stderr.

    Idempotent: called once per app, it only adds the new secrets.
    """
    _REDACTOR.add_secrets(secrets)
    # The JSON lines name none of these: a record need not look them up (the caller's
    # frame, above all, is a walk up the stack; see the logging HOWTO, "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    if not any(getattr(h, "_chime_broker", False) for h in root.handlers):
        root.addHandler(json_handler())
        root.setLevel(level)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return _REDACTOR


def gunicorn_logconfig() -> dict[str, Any]:
    """gunicorn's ``logconfig_dict``: its error log through the broker's JSON handler. Its
    access log too, kept at warning: the broker writes each request's access line itself
    (``chime_broker.access``, with the route and the request id), so a request is logged
    once."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"json": {"()": "service.logs.json_handler"}},
        "formatters": {},
        "root": {"level": "INFO", "handlers": ["json"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": True},
        },
    }


def redactor() -> Redactor:
    """The process-wide redactor (tests add handlers with it)."""
    return _REDACTOR


def init_app(app: Flask) -> None:
    """One structured line per request: method, route, status, duration, client address."""
    from flask import Response, g, request

    access = logging.getLogger("chime_broker.access")

    @app.after_request
    def log_request(response: Response) -> Response:
        req = request._get_current_object()  # type: ignore[attr-defined]
        started = getattr(g._get_current_object(), "request_started", None)
        rule = req.url_rule
        method = req.method
        fields: dict[str, Any] = {
            "method": method,
            "route": rule.rule if rule else None,
            "status": response.status_code,
            "client": req.remote_addr,
            "scheme": req.scheme,
        }
        if started is not None:
            fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
        access.info("%s %s %s", method, req.path, response.status_code, extra={"fields": fields})
        return response
