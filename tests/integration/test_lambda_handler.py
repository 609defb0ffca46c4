"""The broker on AWS Lambda: the handler fed the events AWS sends (API Gateway REST API,
payload 1.0; HTTP API, payload 2.0; an ALB target group; a function URL), written from
AWS's documented formats, with the local OIDC provider, the moto server and a real
redis-server behind. Lambda instances themselves are real processes that import ``wsgi``
as Lambda's Python runtime does and are invoked event by event.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import pytest
import requests
import yaml

from identity.config.document import build_config
from service.demo.dev_idp import DevIdentityProvider
from service.lambda_handler import (
    LAMBDA_ENV,
    SHARED_STORES,
    Handler,
    lambda_config_problems,
    make_handler,
)
from tests.fakes import FakeClock
from tests.fixtures.apps import MakeApp, broker_config_dict
from tests.fixtures.configs import valid_config_dict
from tests.fixtures.moto_server import AwsWorld
from tests.fixtures.oidc_provider import ALICE_SUB

REPO = Path(__file__).resolve().parents[2]
PUBLIC_URL = "https://auth.example.chat"
SPA = "https://app.example.chat"
SPA_HOME = f"{SPA}/app/"
# An https public_url: the session cookie takes the __Host- prefix, the pre-login one once.
COOKIE = "__Host-chime_broker_session"
PRE_LOGIN_COOKIE = "__Host-chime_broker_session_login"
MOBILE_CLIENT = "mobile-app"
WEB_CLIENT = "broker-web"
WEB_SECRET = "broker-web-secret"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64)"

KINDS = ["rest", "http", "alb", "url"]
HOSTS = {
    "rest": "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com",
    "http": "f6g7h8i9j0.execute-api.us-east-1.amazonaws.com",
    "alb": "broker-alb-1234567890.us-east-1.elb.amazonaws.com",
    "url": "k1l2m3n4o5p6q7r8s9t0u1v2w3x4y5z6.lambda-url.us-east-1.on.aws",
}
CLIENT_IP = "198.51.100.7"


# -- the events AWS sends --------------------------------------------------------------------


@dataclass
class Request:
    """One HTTP request as a client sent it, and where AWS saw it come from."""

    method: str
    path: str
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    cookies: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    source_ip: str = CLIENT_IP
    forwarded_for: tuple[str, ...] = ()
    """What the client (or a proxy in front of AWS) put in ``X-Forwarded-For``."""
    edge: str | None = None
    """The CloudFront edge of an edge-optimized REST API, which appends itself."""


def _forwarded_for(request: Request) -> str:
    # API Gateway and ALBs append the address of the peer that connected to them.
    edge = [request.edge] if request.edge else []
    return ", ".join([*request.forwarded_for, request.source_ip, *edge])


def _request_id() -> str:
    return str(uuid.uuid4())


def rest_event(request: Request) -> dict[str, Any]:
    """API Gateway REST API, Lambda proxy integration (payload 1.0)."""
    headers = {
        "Host": HOSTS["rest"],
        "User-Agent": USER_AGENT,
        "X-Amzn-Trace-Id": "Root=1-5e1b4151-5ac6c58f5ac6c58f5ac6c58f",
        "X-Forwarded-For": _forwarded_for(request),
        "X-Forwarded-Port": "443",
        "X-Forwarded-Proto": "https",
        **request.headers,
    }
    if request.cookies:
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in request.cookies.items())
    pairs = parse_qsl(request.query, keep_blank_values=True)
    multi_query: dict[str, list[str]] = {}
    for key, value in pairs:
        multi_query.setdefault(key, []).append(value)
    return {
        "resource": "/{proxy+}",
        "path": request.path,
        "httpMethod": request.method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": {"proxy": request.path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "resourceId": "abc123",
            "resourcePath": "/{proxy+}",
            "httpMethod": request.method,
            "extendedRequestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "requestTime": "05/Dec/2026:12:00:00 +0000",
            "path": f"/prod{request.path}",
            "accountId": "123456789012",
            "protocol": "HTTP/1.1",
            "stage": "prod",
            "domainPrefix": HOSTS["rest"].split(".")[0],
            "requestTimeEpoch": 1796472000000,
            "requestId": _request_id(),
            "identity": {
                "cognitoIdentityPoolId": None,
                "accountId": None,
                "cognitoIdentityId": None,
                "caller": None,
                "sourceIp": request.source_ip,
                "principalOrgId": None,
                "accessKey": None,
                "cognitoAuthenticationType": None,
                "cognitoAuthenticationProvider": None,
                "userArn": None,
                "userAgent": USER_AGENT,
                "user": None,
            },
            "domainName": HOSTS["rest"],
            "apiId": HOSTS["rest"].split(".")[0],
        },
        "body": request.body.decode() if request.body else None,
        "isBase64Encoded": False,
    }


def http_event(request: Request, kind: str = "http") -> dict[str, Any]:
    """API Gateway HTTP API (payload 2.0); a function URL sends the same shape."""
    host = HOSTS[kind]
    headers = {
        "host": host,
        "user-agent": USER_AGENT,
        "x-amzn-trace-id": "Root=1-5e1b4151-5ac6c58f5ac6c58f5ac6c58f",
        "x-forwarded-for": _forwarded_for(request),
        "x-forwarded-port": "443",
        "x-forwarded-proto": "https",
        **{k.lower(): v for k, v in request.headers.items()},
    }
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": request.path,
        "rawQueryString": request.query,
        "headers": headers,
        "requestContext": {
            "accountId": "anonymous" if kind == "url" else "123456789012",
            "apiId": host.split(".")[0],
            "domainName": host,
            "domainPrefix": host.split(".")[0],
            "http": {
                "method": request.method,
                "path": request.path,
                "protocol": "HTTP/1.1",
                "sourceIp": request.source_ip,
                "userAgent": USER_AGENT,
            },
            "requestId": _request_id(),
            "routeKey": "$default",
            "stage": "$default",
            "time": "05/Dec/2026:12:00:00 +0000",
            "timeEpoch": 1796472000000,
        },
        "isBase64Encoded": False,
    }
    if request.cookies:
        event["cookies"] = [f"{k}={v}" for k, v in request.cookies.items()]
    if request.query:
        event["queryStringParameters"] = dict(parse_qsl(request.query, keep_blank_values=True))
    if request.body:
        # HTTP APIs hand the body over base64-encoded.
        event["body"] = base64.b64encode(request.body).decode()
        event["isBase64Encoded"] = True
    return event


def alb_event(request: Request) -> dict[str, Any]:
    """An ALB target group with multi-value headers on; query values arrive as the client
    encoded them."""
    headers: dict[str, list[str]] = {
        "host": [HOSTS["alb"]],
        "user-agent": [USER_AGENT],
        "x-amzn-trace-id": ["Root=1-5e1b4151-5ac6c58f5ac6c58f5ac6c58f"],
        "x-forwarded-for": [_forwarded_for(request)],
        "x-forwarded-port": ["443"],
        "x-forwarded-proto": ["https"],
        **{k.lower(): [v] for k, v in request.headers.items()},
    }
    if request.cookies:
        headers["cookie"] = ["; ".join(f"{k}={v}" for k, v in request.cookies.items())]
    query: dict[str, list[str]] = {}
    for pair in filter(None, request.query.split("&")):
        key, _, value = pair.partition("=")
        query.setdefault(key, []).append(value)
    return {
        "requestContext": {
            "elb": {
                "targetGroupArn": "arn:aws:elasticloadbalancing:us-east-1:123456789012:"
                "targetgroup/broker/6d0ecf831eec9f09"
            }
        },
        "httpMethod": request.method,
        "path": request.path,
        "multiValueQueryStringParameters": query,
        "multiValueHeaders": headers,
        "body": request.body.decode(),
        "isBase64Encoded": False,
    }


def event_for(kind: str, request: Request) -> dict[str, Any]:
    if kind == "rest":
        return rest_event(request)
    if kind == "alb":
        return alb_event(request)
    return http_event(request, kind)


# -- what the handler returns -----------------------------------------------------------------


@dataclass
class Answer:
    """A handler's result, read the way API Gateway or the ALB reads it."""

    kind: str
    result: dict[str, Any]

    @property
    def status(self) -> int:
        status: int = self.result["statusCode"]
        return status

    def headers(self, name: str) -> list[str]:
        if "multiValueHeaders" in self.result:
            source = self.result["multiValueHeaders"].items()
            return [v for k, values in source if k.lower() == name.lower() for v in values]
        return [v for k, v in self.result["headers"].items() if k.lower() == name.lower()]

    def header(self, name: str) -> str:
        (value,) = self.headers(name)
        return value

    @property
    def set_cookies(self) -> dict[str, str]:
        """Every cookie set, by name, as sent: 2.0 answers carry them in ``cookies``,
        1.0 and ALB answers in ``multiValueHeaders``."""
        if self.kind in ("http", "url"):
            assert "set-cookie" not in self.result["headers"]
            sent = self.result["cookies"]
        else:
            sent = self.headers("Set-Cookie")
        return {c.split("=", 1)[0]: c for c in sent}

    def cookie(self, name: str) -> str:
        return self.set_cookies[name].split(";", 1)[0].split("=", 1)[1]

    @property
    def text(self) -> str:
        assert self.result["isBase64Encoded"] is False, self.result
        body: str = self.result["body"]
        return body

    def json(self) -> Any:
        return json.loads(self.text)


def invoke(handler: Handler, kind: str, request: Request) -> Answer:
    result = handler(event_for(kind, request), None)
    return Answer(kind, result)


def json_post(path: str, body: dict[str, Any], **kwargs: Any) -> Request:
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return Request("POST", path, headers=headers, body=json.dumps(body).encode(), **kwargs)


def assert_not_from_host(answer: Answer, kind: str) -> None:
    """Nothing the broker answered points at the host AWS gave it."""
    assert HOSTS[kind] not in json.dumps(answer.result)


# -- brokers ------------------------------------------------------------------------------------


def web_provider(idp: DevIdentityProvider) -> dict[str, Any]:
    idp.register_client(
        WEB_CLIENT,
        client_secret=WEB_SECRET,
        redirect_uris=[f"{PUBLIC_URL}/v1/callback/okta"],
    )
    return {
        "name": "okta",
        "kind": "oidc",
        "issuer": idp.issuer,
        "client_id": WEB_CLIENT,
        "client_secret": WEB_SECRET,
        "exchange": "sts",
        "map": {"user_id": "okta-{sub}", "display_name": "{name}"},
    }


def mobile_provider(idp: DevIdentityProvider) -> dict[str, Any]:
    idp.register_client(MOBILE_CLIENT)
    return {
        "name": "corp",
        "kind": "oidc",
        "issuer": idp.issuer,
        "client_id": MOBILE_CLIENT,
        "exchange": "cognito",
    }


def broker_overrides(idp: DevIdentityProvider) -> dict[str, Any]:
    return {
        "service__public_url": PUBLIC_URL,
        "service__allowed_origins": [SPA],
        "service__allowed_return_to": [SPA_HOME],
        "service__default_return_to": SPA_HOME,
        "providers": [web_provider(idp), mobile_provider(idp)],
    }


@pytest.fixture
def handler(aws: AwsWorld, oidc_provider: DevIdentityProvider, make_app: MakeApp) -> Handler:
    return make_handler(make_app(**broker_overrides(oidc_provider)))


def sign_in(handler: Handler, kind: str, idp: DevIdentityProvider) -> Answer:
    """A browser's whole sign-in through ``handler``; the answer to the callback."""
    begun = invoke(handler, kind, Request("GET", "/v1/login/okta"))
    assert begun.status == 302, begun.result
    [pre_login] = [name for name in begun.set_cookies if name.startswith(PRE_LOGIN_COOKIE)]
    pre_login_value = begun.cookie(pre_login)
    idp.next_login(ALICE_SUB)
    at_idp = requests.get(begun.header("Location"), allow_redirects=False, timeout=10)
    assert at_idp.status_code == 302, at_idp.text
    callback = urlsplit(at_idp.headers["Location"])
    assert f"{callback.scheme}://{callback.netloc}" == PUBLIC_URL
    request = Request(
        "GET", callback.path, query=callback.query, cookies={pre_login: pre_login_value}
    )
    return invoke(handler, kind, request)


# -- every event kind ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_healthz(kind: str, handler: Handler) -> None:
    answer = invoke(handler, kind, Request("GET", "/healthz"))
    assert answer.status == 200
    assert answer.header("Content-Type").startswith("application/json")
    assert answer.json()["status"] == "ok"


@pytest.mark.parametrize("kind", KINDS)
def test_a_mobile_id_token_is_exchanged(
    kind: str, aws: AwsWorld, oidc_provider: DevIdentityProvider, handler: Handler
) -> None:
    token = oidc_provider.mint_id_token({"sub": "user-123"}, audience=MOBILE_CLIENT)
    answer = invoke(handler, kind, json_post("/v1/token", {"provider": "corp", "id_token": token}))

    assert answer.status == 200, answer.result
    body = answer.json()
    assert body["user_id"] == "user-123"
    assert body["broker_session"]["token"].startswith("cbs_")
    assert set(body["credentials"]) >= {"access_key_id", "secret_access_key", "session_token"}
    login_key = oidc_provider.issuer.split("://", 1)[1]
    assert aws.recorder.calls("GetId") == [
        {"IdentityPoolId": aws.identity_pool_id, "Logins": {login_key: token}}
    ]
    assert aws.recorder.calls("GetCredentialsForIdentity") == [
        {"IdentityId": body["identity_id"], "Logins": {login_key: token}}
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_problems_come_back_as_text(kind: str, handler: Handler) -> None:
    refused = invoke(handler, kind, json_post("/v1/token", {"provider": "nobody"}))
    assert refused.status == 400
    assert refused.header("Content-Type").startswith("application/problem+json")
    assert refused.json()["code"] == "invalid_request"
    missing = invoke(handler, kind, Request("GET", "/nowhere"))
    assert missing.status == 404 and missing.json()["code"]
    metrics = invoke(handler, kind, Request("GET", "/metrics"))
    assert metrics.header("Content-Type").startswith("text/plain")
    assert "chime_broker_requests_total" in metrics.text


@pytest.mark.parametrize("kind", KINDS)
def test_the_login_redirect_sets_its_cookie_and_names_the_public_url(
    kind: str, handler: Handler, oidc_provider: DevIdentityProvider
) -> None:
    answer = invoke(
        handler, kind, Request("GET", "/v1/login/okta", query=urlencode({"return_to": SPA_HOME}))
    )

    assert answer.status == 302
    location = answer.header("Location")
    assert location.startswith(oidc_provider.url("/authorize"))
    params = parse_qs(urlsplit(location).query)
    assert params["redirect_uri"] == [f"{PUBLIC_URL}/v1/callback/okta"]
    [pre_login] = [v for k, v in answer.set_cookies.items() if k.startswith(PRE_LOGIN_COOKIE)]
    flags = [p.strip().lower() for p in pre_login.split(";")]
    assert {"secure", "httponly", "samesite=none", "path=/"} <= set(flags)
    assert answer.text  # the redirect's HTML body, as text rather than base64
    assert_not_from_host(answer, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_a_browser_session_refreshes_with_its_cookie_and_origin(
    kind: str, aws: AwsWorld, handler: Handler, oidc_provider: DevIdentityProvider
) -> None:
    done = sign_in(handler, kind, oidc_provider)
    assert done.status == 302, done.result
    assert done.header("Location") == SPA_HOME
    assert_not_from_host(done, kind)
    session = done.cookie(COOKIE)
    flags = [p.strip().lower() for p in done.set_cookies[COOKIE].split(";")]
    assert {"secure", "httponly", "samesite=lax"} <= set(flags)
    aws.recorder.reset()

    refreshed = invoke(
        handler,
        kind,
        Request("POST", "/v1/credentials", headers={"Origin": SPA}, cookies={COOKIE: session}),
    )

    assert refreshed.status == 200, refreshed.result
    assert refreshed.json()["user_id"] == f"okta-{ALICE_SUB}"
    assert refreshed.header("Access-Control-Allow-Origin") == SPA
    assert [c["RoleArn"] for c in aws.recorder.calls("AssumeRole")] == [aws.user_role_arn]
    aws.recorder.reset()
    elsewhere = invoke(
        handler,
        kind,
        Request(
            "POST",
            "/v1/credentials",
            headers={"Origin": "https://evil.example"},
            cookies={COOKIE: session},
        ),
    )
    assert elsewhere.status == 403 and elsewhere.json()["code"] == "origin_not_allowed"
    assert aws.recorder.requests() == []


# -- the client's address -------------------------------------------------------------------

OPEN_GUESTS = {
    "name": "lobby",
    "kind": "guest",
    "exchange": "sts",
    "allow_open_guests": True,
    "map": {"user_id": "lobby-{random}"},
}
PER_MINUTE = 10  # open-guest sign-ins per client address and minute


def guest(source_ip: str, *forwarded_for: str) -> Request:
    return json_post(
        "/v1/guest", {"provider": "lobby"}, source_ip=source_ip, forwarded_for=forwarded_for
    )


@pytest.mark.parametrize("kind", KINDS)
def test_rate_limits_count_the_address_aws_saw_not_what_the_client_wrote(
    kind: str, aws: AwsWorld, make_app: MakeApp, clock: FakeClock
) -> None:
    # A clock that stands still keeps every sign-in inside one rate-limit minute.
    handler = make_handler(make_app(providers=[OPEN_GUESTS], clock=clock))
    for n in range(PER_MINUTE):
        # A new made-up X-Forwarded-For each time changes nothing.
        answer = invoke(handler, kind, guest(CLIENT_IP, f"203.0.113.{n}"))
        assert answer.status == 200, answer.result

    refused = invoke(handler, kind, guest(CLIENT_IP, "203.0.113.99"))
    assert refused.status == 429 and refused.json()["code"] == "rate_limited"
    assert invoke(handler, kind, guest("192.0.2.44")).status == 200


def test_behind_an_edge_optimized_api_the_client_is_the_source_ip(
    aws: AwsWorld, make_app: MakeApp, clock: FakeClock
) -> None:
    handler = make_handler(make_app(providers=[OPEN_GUESTS], clock=clock))
    for n in range(PER_MINUTE + 1):
        request = guest(CLIENT_IP, f"203.0.113.{n}")
        request.edge = f"130.176.1.{n}"
        answer = invoke(handler, "rest", request)
    assert answer.status == 429


@pytest.mark.parametrize("kind", KINDS)
def test_trusted_proxies_count_the_proxies_in_front_of_aws(
    kind: str, aws: AwsWorld, make_app: MakeApp, clock: FakeClock
) -> None:
    """A CloudFront distribution in front: AWS sees CloudFront connect, and CloudFront's
    own entry (the last before AWS's) names the client; what the client wrote does not."""
    handler = make_handler(
        make_app(providers=[OPEN_GUESTS], clock=clock, service__trusted_proxies=1)
    )
    cloudfront = "130.176.0.10"
    for n in range(PER_MINUTE):
        answer = invoke(handler, kind, guest(cloudfront, f"203.0.113.{n}", CLIENT_IP))
        assert answer.status == 200, answer.result

    refused = invoke(handler, kind, guest(cloudfront, "203.0.113.99", CLIENT_IP))
    assert refused.status == 429
    assert invoke(handler, kind, guest(cloudfront, CLIENT_IP, "192.0.2.44")).status == 200


# -- the start-up rule for the store ------------------------------------------------------------


@pytest.mark.parametrize(
    ("store", "refused"),
    [
        ("memory://", True),
        ("sqlite:///state.db", True),
        ("redis://127.0.0.1:6379/0", False),
        ("rediss://cache.example.internal:6380/0", False),
        ("dynamodb://broker-state", False),
    ],
)
def test_only_stores_every_lambda_instance_shares_are_accepted(store: str, refused: bool) -> None:
    config = build_config(valid_config_dict(store=store), env={})
    assert lambda_config_problems(config, {}) == []
    problems = lambda_config_problems(config, {LAMBDA_ENV: "chime-broker"})
    if not refused:
        assert problems == []
        return
    (problem,) = problems
    scheme = store.split("://")[0]
    assert problem.startswith(f"store: {scheme}:// is not shared between AWS Lambda instances")
    assert "redis://, rediss://, dynamodb://" in problem


def readme_lambda_section() -> str:
    """The README's "AWS Lambda" section, its lines joined."""
    text = (REPO / "README.md").read_text()
    return " ".join(text.split("\n### AWS Lambda\n", 1)[1].split("\n#", 1)[0].split())


README_HANDLER = re.findall(r"the handler is `([\w.]+)`", readme_lambda_section())[0]


def test_the_readme_names_the_stores_that_the_rule_accepts_and_refuses() -> None:
    section = readme_lambda_section()
    (shared,) = re.findall(r"every instance shares: ([^.]*)\.", section)
    assert tuple(re.findall(r"`(\w+)://`", shared)) == SHARED_STORES
    (refused,) = re.findall(r"\. ([^.]*) are refused at start-up", section)
    schemes = re.findall(r"`(\w+)://`", refused)
    assert schemes == ["memory", "sqlite"]
    for scheme in schemes:
        url = "memory://" if scheme == "memory" else "sqlite:///state.db"
        config = build_config(valid_config_dict(store=url), env={})
        assert lambda_config_problems(config, {LAMBDA_ENV: "chime-broker"})


# -- Lambda instances: real processes -----------------------------------------------------------

# What Lambda's Python runtime does with the handler it is given in _HANDLER: import its module
# (the cold start; an exception there is the function's init error), then call the handler
# once per event.
RUNTIME = """
import importlib, json, os, sys
module_name, _, function = os.environ["_HANDLER"].rpartition(".")
try:
    module = importlib.import_module(module_name)
except Exception as e:
    print(json.dumps({"errorType": type(e).__name__, "errorMessage": str(e)}), flush=True)
    sys.exit(1)
handler = getattr(module, function)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    result = handler(json.loads(line), None)
    loaded = [name for name in ("gevent", "gunicorn") if name in sys.modules]
    print(json.dumps({"result": result, "loaded": loaded}), flush=True)
"""


class LambdaInstance:
    """One Lambda instance of the function: a process that has imported ``wsgi``."""

    def __init__(self, config: Path) -> None:
        env = {
            **os.environ,
            LAMBDA_ENV: "chime-broker",
            "_HANDLER": README_HANDLER,
            "BROKER_CONFIG": str(config),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-c", RUNTIME],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._in = self.process.stdin
        self._out = self.process.stdout
        self._errors: str | None = None
        self.started = json.loads(self._out.readline() or "{}")

    def invoke(self, kind: str, request: Request) -> tuple[Answer, list[str]]:
        self._in.write(json.dumps(event_for(kind, request)) + "\n")
        self._in.flush()
        line = self._out.readline()
        assert line, f"the instance exited: {self.stop()}"
        reply = json.loads(line)
        return Answer(kind, reply["result"]), reply["loaded"]

    def stop(self) -> str:
        """Stop the instance (once); what it wrote on stderr."""
        if self._errors is None:
            if self.process.poll() is None:
                self._in.close()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
            assert self.process.stderr is not None
            self._errors = self.process.stderr.read()
            for stream in (self._in, self._out, self.process.stderr):
                stream.close()
        return self._errors


@pytest.fixture
def instances() -> Iterator[list[LambdaInstance]]:
    """Lambda instances a test starts (``instances.append``); each is stopped after it."""
    started: list[LambdaInstance] = []
    yield started
    for instance in started:
        instance.stop()


def write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / f"broker-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("store", ["memory://", "sqlite:///{tmp}/state.db"])
def test_a_store_of_one_instance_is_refused_at_the_cold_start(
    store: str, tmp_path: Path, instances: list[LambdaInstance]
) -> None:
    config = write_config(tmp_path, valid_config_dict(store=store.format(tmp=tmp_path)))
    instance = LambdaInstance(config)
    instances.append(instance)

    assert instance.started["errorType"] == "LambdaStartupError"
    message = instance.started["errorMessage"]
    assert "not shared between AWS Lambda instances" in message
    assert "redis://, rediss://, dynamodb://" in message
    errors = instance.stop()
    assert instance.process.returncode == 1
    assert errors.splitlines() == [f"{config}: 1 problem(s)", f"  {message}"]
    assert not (tmp_path / "state.db").exists()


@pytest.mark.slow
def test_an_instance_serves_without_gevent_or_gunicorn(
    tmp_path: Path, redis_url: str, instances: list[LambdaInstance]
) -> None:
    instance = LambdaInstance(write_config(tmp_path, valid_config_dict(store=redis_url)))
    instances.append(instance)
    assert instance.started == {"ready": True}, instance.stop()

    answer, loaded = instance.invoke("http", Request("GET", "/healthz"))

    assert answer.status == 200 and answer.json()["status"] == "ok"
    assert loaded == []


@pytest.fixture(params=["redis", "dynamodb"])
def shared_store_url(request: pytest.FixtureRequest) -> str:
    """A store every instance reaches: a real redis-server, or a DynamoDB table in moto."""
    name = "redis_url" if request.param == "redis" else "dynamodb_store_url"
    url: str = request.getfixturevalue(name)
    return url


@pytest.mark.slow
def test_a_session_from_one_cold_start_is_refreshed_by_another(
    tmp_path: Path,
    aws: AwsWorld,
    oidc_provider: DevIdentityProvider,
    shared_store_url: str,
    instances: list[LambdaInstance],
) -> None:
    config = write_config(
        tmp_path,
        broker_config_dict(aws, store=shared_store_url, **broker_overrides(oidc_provider)),
    )
    first, second = LambdaInstance(config), LambdaInstance(config)
    instances += [first, second]
    assert first.started == second.started == {"ready": True}, first.stop() + second.stop()
    token = oidc_provider.mint_id_token({"sub": "user-123"}, audience=MOBILE_CLIENT)

    opened, _ = first.invoke(
        "http", json_post("/v1/token", {"provider": "corp", "id_token": token})
    )
    assert opened.status == 200, opened.result
    session = opened.json()["broker_session"]["token"]
    aws.recorder.reset()
    bearer = {"Authorization": f"Bearer {session}"}
    refreshed, _ = second.invoke("rest", Request("POST", "/v1/credentials", headers=bearer))

    assert refreshed.status == 200, refreshed.result
    assert refreshed.json()["identity_id"] == opened.json()["identity_id"]
    assert refreshed.json()["user_id"] == "user-123"
    assert [c["IdentityId"] for c in aws.recorder.calls("GetCredentialsForIdentity")] == [
        opened.json()["identity_id"]
    ]
