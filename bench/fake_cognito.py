"""An instant (or delayed) fake of the three Cognito Identity calls the broker makes.

It speaks the service's JSON protocol (``POST /``, ``X-Amz-Target:
AWSCognitoIdentityService.<Operation>``, ``application/x-amz-json-1.1``) well enough for
botocore: ``GetId``, ``GetCredentialsForIdentity`` (credentials that expire an hour
ahead, as Cognito's do) and ``GetOpenIdTokenForDeveloperIdentity``. Identity ids are
stable per user, as Cognito's are. Signatures and tokens are not checked: the benchmark
measures the caller, not Cognito.

``FakeCognito`` is a plain WSGI app that counts calls per operation; ``delay`` seconds
pass before every answer (``gevent.sleep`` once the process is monkey-patched, so one
process holds any number of calls in flight).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["OPERATIONS", "FakeCognito"]

TARGET_PREFIX = "AWSCognitoIdentityService."
OPERATIONS = ("GetId", "GetCredentialsForIdentity", "GetOpenIdTokenForDeveloperIdentity")
CREDENTIAL_LIFETIME = 3600
_JSON_TYPE = "application/x-amz-json-1.1"
_NAMESPACE = uuid.UUID("6f1c2f4e-7a55-4c1e-9d4b-0c0ffee0be9c")

StartResponse = Callable[..., Any]


class _ClientError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def _subject(login_key: str, value: str) -> str:
    """Who a Logins entry names: a JWT's ``iss`` and ``sub`` (not verified), else the
    value itself (a developer provider's user id)."""
    parts = value.split(".")
    if len(parts) == 3:
        try:
            padded = parts[1] + "=" * (-len(parts[1]) % 4)
            claims = json.loads(base64.urlsafe_b64decode(padded))
            return f"{claims.get('iss')}|{claims.get('sub')}"
        except (ValueError, binascii.Error):
            pass
    return f"{login_key}|{value}"


class FakeCognito:
    """WSGI app for the Cognito Identity JSON protocol, with per-operation counters."""

    def __init__(self, *, delay: float = 0.0, region: str = "us-east-1") -> None:
        self.delay = delay
        self.region = region
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def counts(self) -> dict[str, int]:
        """Calls answered so far, by operation name."""
        with self._lock:
            return {op: self._counts[op] for op in OPERATIONS}

    def reset(self) -> None:
        """Set every counter back to zero."""
        with self._lock:
            self._counts.clear()

    def _identity_id(self, pool: str, logins: Mapping[str, str]) -> str:
        users = sorted(_subject(key, value) for key, value in logins.items())
        return f"{self.region}:{uuid.uuid5(_NAMESPACE, pool + '|' + '|'.join(users))}"

    def answer(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """The response body for one call (raises ``_ClientError`` for a bad one)."""
        if operation == "GetId":
            logins = params.get("Logins") or {}
            if not params.get("IdentityPoolId") or not logins:
                raise _ClientError("InvalidParameterException", "IdentityPoolId and Logins")
            return {"IdentityId": self._identity_id(params["IdentityPoolId"], logins)}
        if operation == "GetCredentialsForIdentity":
            identity_id = params.get("IdentityId")
            if not identity_id:
                raise _ClientError("InvalidParameterException", "IdentityId is required")
            return {
                "IdentityId": identity_id,
                "Credentials": {
                    "AccessKeyId": "ASIA" + secrets.token_hex(8).upper(),
                    "SecretKey": secrets.token_urlsafe(30),
                    "SessionToken": secrets.token_urlsafe(96),
                    "Expiration": int(time.time()) + CREDENTIAL_LIFETIME,
                },
            }
        if operation == "GetOpenIdTokenForDeveloperIdentity":
            pool = params.get("IdentityPoolId")
            logins = params.get("Logins") or {}
            if not pool or not logins:
                raise _ClientError("InvalidParameterException", "IdentityPoolId and Logins")
            identity_id = params.get("IdentityId") or self._identity_id(pool, logins)
            return {"IdentityId": identity_id, "Token": secrets.token_urlsafe(200)}
        raise _ClientError("UnknownOperationException", f"unknown operation {operation!r}")

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        operation = target[len(TARGET_PREFIX) :] if target.startswith(TARGET_PREFIX) else ""
        status = "200 OK"
        try:
            if environ.get("REQUEST_METHOD") != "POST" or not operation:
                raise _ClientError("UnknownOperationException", "POST / with X-Amz-Target")
            length = int(environ.get("CONTENT_LENGTH") or 0)
            raw = environ["wsgi.input"].read(length) if length else b"{}"
            try:
                params = json.loads(raw)
            except ValueError:
                raise _ClientError("SerializationException", "body is not JSON") from None
            body = self.answer(operation, params)
            with self._lock:
                self._counts[operation] += 1
        except _ClientError as error:
            status = "400 Bad Request"
            body = {"__type": error.kind, "message": error.message}
        if self.delay:
            time.sleep(self.delay)
        payload = json.dumps(body).encode()
        start_response(
            status,
            [
                ("Content-Type", _JSON_TYPE),
                ("Content-Length", str(len(payload))),
                ("x-amzn-RequestId", str(uuid.uuid4())),
            ],
        )
        return [payload]
