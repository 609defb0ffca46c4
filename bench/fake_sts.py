"""An instant (or delayed) fake of STS ``AssumeRole``, the call of ``exchange: sts``.

It speaks the query protocol botocore uses for STS (``POST /``, a form body with
``Action=AssumeRole``) and answers in the service's XML: credentials that last the
requested ``DurationSeconds`` (3600 when none is given), the assumed-role user and the
``SourceIdentity`` echoed back. Signatures, the role's trust policy and the tags' rules are
not checked: the benchmark measures the caller, not STS.

``FakeSts`` counts the calls it answered; its ``delay`` passes before every answer, as
`bench.fake_cognito.FakeCognito`'s does.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from bench.fake_cognito import StartResponse

__all__ = ["STS_OPERATIONS", "FakeSts", "is_query_request"]

STS_OPERATIONS = ("AssumeRole",)
DEFAULT_DURATION = 3600
_NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"
_FORM_TYPE = "application/x-www-form-urlencoded"


class _SenderError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def is_query_request(environ: Mapping[str, Any]) -> bool:
    """Whether a request to ``/`` is a query-protocol call (STS) rather than a JSON one."""
    return str(environ.get("CONTENT_TYPE", "")).startswith(_FORM_TYPE)


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeSts:
    """WSGI app for STS ``AssumeRole`` in the query protocol, with a call counter."""

    def __init__(self, *, delay: float = 0.0) -> None:
        self.delay = delay
        self._calls = 0
        self._lock = threading.Lock()

    def counts(self) -> dict[str, int]:
        """Calls answered so far, by operation name."""
        with self._lock:
            return {"AssumeRole": self._calls}

    def reset(self) -> None:
        """Set the counter back to zero."""
        with self._lock:
            self._calls = 0

    def assume_role(self, params: Mapping[str, str]) -> str:
        """The ``AssumeRoleResult`` element for one call (raises ``_SenderError``)."""
        role_arn = params.get("RoleArn", "")
        session_name = params.get("RoleSessionName", "")
        if not role_arn.startswith("arn:aws:iam::") or ":role/" not in role_arn:
            raise _SenderError("ValidationError", "RoleArn must be an IAM role ARN")
        if not 2 <= len(session_name) <= 64:
            raise _SenderError("ValidationError", "RoleSessionName must be 2 to 64 characters")
        try:
            duration = int(params.get("DurationSeconds", DEFAULT_DURATION))
        except ValueError:
            raise _SenderError("ValidationError", "DurationSeconds is not a number") from None
        if not 900 <= duration <= 43200:
            raise _SenderError("ValidationError", "DurationSeconds must be 900 to 43200")
        account = role_arn.split(":")[4]
        role_name = role_arn.rsplit("/", 1)[-1]
        role_id = "AROA" + secrets.token_hex(8).upper()
        source_identity = params.get("SourceIdentity")
        source = (
            f"<SourceIdentity>{escape(source_identity)}</SourceIdentity>" if source_identity else ""
        )
        return (
            "<AssumeRoleResult>"
            f"{source}"
            "<AssumedRoleUser>"
            f"<Arn>arn:aws:sts::{account}:assumed-role/{escape(role_name)}/"
            f"{escape(session_name)}</Arn>"
            f"<AssumedRoleId>{role_id}:{escape(session_name)}</AssumedRoleId>"
            "</AssumedRoleUser>"
            "<Credentials>"
            f"<AccessKeyId>ASIA{secrets.token_hex(8).upper()}</AccessKeyId>"
            f"<SecretAccessKey>{secrets.token_urlsafe(30)}</SecretAccessKey>"
            f"<SessionToken>{secrets.token_urlsafe(96)}</SessionToken>"
            f"<Expiration>{_iso(time.time() + duration)}</Expiration>"
            "</Credentials>"
            "<PackedPolicySize>6</PackedPolicySize>"
            "</AssumeRoleResult>"
        )

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        request_id = str(uuid.uuid4())
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        params = {
            k: v[-1] for k, v in parse_qs(raw.decode("utf-8"), keep_blank_values=True).items()
        }
        action = params.get("Action", "")
        status = "200 OK"
        try:
            if environ.get("REQUEST_METHOD") != "POST" or action not in STS_OPERATIONS:
                raise _SenderError("InvalidAction", f"unknown action {action!r}")
            result = self.assume_role(params)
            with self._lock:
                self._calls += 1
            body = (
                f'<AssumeRoleResponse xmlns="{_NAMESPACE}">{result}'
                f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
                "</AssumeRoleResponse>"
            )
        except _SenderError as error:
            status = "400 Bad Request"
            body = (
                f'<ErrorResponse xmlns="{_NAMESPACE}"><Error><Type>Sender</Type>'
                f"<Code>{error.code}</Code><Message>{escape(error.message)}</Message></Error>"
                f"<RequestId>{request_id}</RequestId></ErrorResponse>"
            )
        if self.delay:
            time.sleep(self.delay)
        payload = body.encode()
        start_response(
            status,
            [
                ("Content-Type", "text/xml"),
                ("Content-Length", str(len(payload))),
                ("x-amzn-RequestId", request_id),
            ],
        )
        return [payload]
