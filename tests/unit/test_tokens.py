"""verify_jwt() and JwksCache against keys served by a real HTTP server on loopback."""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, padding, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from identity.errors import InvalidToken, UpstreamTimeout, UpstreamUnavailable
from identity.tokens import JwksCache, JwtPolicy, SharedSecret, verify_jwt
from tests.fakes import FakeClock

ISSUER = "https://issuer.example.test"
CLIENT_ID = "client-web"
OTHER_CLIENT = "client-of-someone-else"
SECRET = b"0123456789abcdef0123456789abcdef"


# ----------------------------------------------------------------------------- real parts


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    delay: float = 0.0
    # Without Content-Length the body ends when the connection closes (HTTP/1.0).
    declare_length: bool = True


@dataclass
class KeyServer:
    """A JWKS (and discovery) server on a free loopback port that counts requests."""

    routes: dict[str, Route] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    released: threading.Event = field(default_factory=threading.Event)
    base_url: str = ""

    def url(self, path: str) -> str:
        return self.base_url + path

    def serve_json(self, path: str, document: Any, status: int = 200) -> None:
        self.routes[path] = Route(status=status, body=json.dumps(document).encode())

    def serve_jwks(self, *jwks: Any, path: str = "/jwks") -> None:
        self.serve_json(path, {"keys": list(jwks)})


@pytest.fixture
def key_server() -> Iterator[KeyServer]:
    state = KeyServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits[self.path] = state.hits.get(self.path, 0) + 1
            route = state.routes.get(self.path, Route(status=404, body=b"{}"))
            if route.delay:
                state.released.wait(route.delay)
            self.send_response(route.status)
            self.send_header("Content-Type", "application/json")
            if route.declare_length:
                self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            self.wfile.write(route.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            # A client that timed out on a slow route has gone; that is the test's point.
            pass

    server = Server(("127.0.0.1", 0), Handler)
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.released.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rotated_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def attacker_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str | None, **extra: Any) -> dict[str, Any]:
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    if kid is not None:
        jwk["kid"] = kid
    return {**jwk, "use": "sig", "alg": "RS256", **extra}


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "use": "sig", "alg": "ES256"}


@pytest.fixture
def jwks(key_server: KeyServer, rsa_key: rsa.RSAPrivateKey, clock: FakeClock) -> JwksCache:
    key_server.serve_jwks(rsa_jwk(rsa_key, "rsa-1"))
    return JwksCache(jwks_url=key_server.url("/jwks"), clock=clock)


POLICY = JwtPolicy(issuers=(ISSUER,), audiences=(CLIENT_ID,))


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-1",
        "aud": CLIENT_ID,
        "iat": now,
        "exp": now + 300,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: Any, kid: str | None = "rsa-1", alg: str = "RS256", **overrides: Any) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers=headers)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segments(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())


def refused(
    token: Any, keys: JwksCache | SharedSecret, policy: JwtPolicy = POLICY, **kw: Any
) -> str:
    with pytest.raises(InvalidToken) as caught:
        verify_jwt(token, policy=policy, keys=keys, **kw)
    error = caught.value
    assert error.code == "invalid_token" and error.status == 401
    if isinstance(token, str) and len(token) > 20:
        assert token not in str(error.log_detail) and token not in error.detail
    return error.detail


# ----------------------------------------------------------------------------- acceptance


def test_a_valid_token_is_verified_and_its_claims_returned(
    jwks: JwksCache, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = sign(rsa_key, name="Ada")

    verified = verify_jwt(token, policy=POLICY, keys=jwks)

    assert verified["sub"] == "user-1" and verified["name"] == "Ada"
    assert jwks.fetch_count == 1


def test_the_jwks_is_fetched_once_for_many_verifications(
    jwks: JwksCache, key_server: KeyServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    for n in range(20):
        verify_jwt(sign(rsa_key, sub=f"user-{n}"), policy=POLICY, keys=jwks)

    assert jwks.fetch_count == 1 and key_server.hits == {"/jwks": 1}


def test_either_spelling_of_a_two_spelling_issuer_is_accepted(
    jwks: JwksCache, rsa_key: rsa.RSAPrivateKey
) -> None:
    policy = JwtPolicy(issuers=(ISSUER, "issuer.example.test"), audiences=(CLIENT_ID,))

    for issuer in (ISSUER, "issuer.example.test"):
        assert verify_jwt(sign(rsa_key, iss=issuer), policy=policy, keys=jwks)["iss"] == issuer


# ----------------------------------------------------------------------------- algorithms


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused_in_any_spelling(
    jwks: JwksCache, alg: str, rsa_key: rsa.RSAPrivateKey
) -> None:
    unsigned = segments({"alg": alg, "kid": "rsa-1", "typ": "JWT"}, claims()) + "."
    assert refused(unsigned, jwks) == "malformed token"

    # Even with some signature bytes attached, the algorithm alone refuses it.
    with_signature = segments({"alg": alg, "kid": "rsa-1"}, claims()) + "." + b64url(b"x" * 32)
    assert refused(with_signature, jwks) == "algorithm not allowed"
    assert jwks.fetch_count == 0


def test_a_token_without_alg_is_refused(jwks: JwksCache) -> None:
    token = segments({"kid": "rsa-1"}, claims()) + "." + b64url(b"x" * 256)

    assert refused(token, jwks) == "algorithm not allowed"


def test_hs256_signed_with_the_providers_public_key_is_refused(
    jwks: JwksCache, rsa_key: rsa.RSAPrivateKey
) -> None:
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = segments({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}, claims())
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()

    assert refused(signing_input + "." + b64url(mac), jwks) == "algorithm not allowed"


def test_es256_is_accepted_only_where_the_policy_pins_it(
    key_server: KeyServer,
    clock: FakeClock,
    ec_key: ec.EllipticCurvePrivateKey,
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    key_server.serve_jwks(ec_jwk(ec_key, "ec-1"), rsa_jwk(rsa_key, "rsa-1"))
    es_policy = JwtPolicy(issuers=(ISSUER,), audiences=(CLIENT_ID,), algorithms=("ES256",))
    es_keys = JwksCache(jwks_url=key_server.url("/jwks"), algorithms=("ES256",), clock=clock)
    rs_keys = JwksCache(jwks_url=key_server.url("/jwks"), clock=clock)
    token = sign(ec_key, kid="ec-1", alg="ES256")

    assert verify_jwt(token, policy=es_policy, keys=es_keys)["sub"] == "user-1"
    assert refused(token, rs_keys) == "algorithm not allowed"
    # An RS256 token cannot ride on an ES256-only cache and policy either.
    assert refused(sign(rsa_key), es_keys, policy=es_policy) == "algorithm not allowed"


def test_a_header_alg_the_key_does_not_serve_is_refused(
    key_server: KeyServer, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    key_server.serve_jwks(rsa_jwk(rsa_key, "rsa-1"))  # the JWK declares alg RS256
    policy = JwtPolicy(issuers=(ISSUER,), audiences=(CLIENT_ID,), algorithms=("RS256", "PS256"))
    keys = JwksCache(jwks_url=key_server.url("/jwks"), algorithms=("RS256", "PS256"), clock=clock)

    assert verify_jwt(sign(rsa_key), policy=policy, keys=keys)
    assert refused(sign(rsa_key, alg="PS256"), keys, policy) == (
        "algorithm does not match the signing key"
    )


def test_a_flipped_signature_byte_is_refused(jwks: JwksCache, rsa_key: rsa.RSAPrivateKey) -> None:
    head, body, signature = sign(rsa_key).split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[len(raw) // 2] ^= 0x01

    assert refused(f"{head}.{body}.{b64url(bytes(raw))}", jwks) == "signature verification failed"


def test_a_token_signed_by_another_key_under_our_kid_is_refused(
    jwks: JwksCache, attacker_key: rsa.RSAPrivateKey
) -> None:
    assert refused(sign(attacker_key, kid="rsa-1"), jwks) == "signature verification failed"


def test_a_crit_header_is_refused(jwks: JwksCache, rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(
        claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1", "crit": ["exp"]}
    )

    assert refused(token, jwks) == "critical header not supported"


# ----------------------------------------------------------------------------- key sources


def test_keys_embedded_in_the_header_are_never_used(
    jwks: JwksCache, key_server: KeyServer, attacker_key: rsa.RSAPrivateKey
) -> None:
    attacker_jwk = rsa_jwk(attacker_key, "attacker")
    key_server.serve_jwks(attacker_jwk, path="/attacker-jwks")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(attacker_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(attacker_key, hashes.SHA256())
    )
    x5c = [base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()]
    offers: list[dict[str, Any]] = [
        {"jwk": attacker_jwk},
        {"jku": key_server.url("/attacker-jwks")},
        {"x5u": key_server.url("/attacker-jwks")},
        {"x5c": x5c},
    ]

    for offer in offers:
        # Under the attacker's own kid the key is unknown; under ours the signature fails.
        for kid, detail in (
            ("attacker", "unknown signing key"),
            ("rsa-1", "signature verification failed"),
        ):
            token = jwt.encode(
                claims(), attacker_key, algorithm="RS256", headers={"kid": kid, **offer}
            )
            assert refused(token, jwks) == detail
    assert key_server.hits.get("/attacker-jwks") is None


def test_an_unknown_kid_refetches_at_most_once_per_interval(
    key_server: KeyServer,
    clock: FakeClock,
    rsa_key: rsa.RSAPrivateKey,
    rotated_key: rsa.RSAPrivateKey,
) -> None:
    key_server.serve_jwks(rsa_jwk(rsa_key, "rsa-1"))
    keys = JwksCache(jwks_url=key_server.url("/jwks"), min_refresh_interval=60, clock=clock)
    verify_jwt(sign(rsa_key), policy=POLICY, keys=keys)
    assert keys.fetch_count == 1

    assert refused(sign(rotated_key, kid="unknown-1"), keys) == "unknown signing key"
    assert keys.fetch_count == 2
    clock.advance(30)
    assert refused(sign(rotated_key, kid="unknown-2"), keys) == "unknown signing key"
    assert refused(sign(rotated_key, kid="unknown-3"), keys) == "unknown signing key"
    assert keys.fetch_count == 2

    key_server.serve_jwks(rsa_jwk(rsa_key, "rsa-1"), rsa_jwk(rotated_key, "rsa-2"))
    assert refused(sign(rotated_key, kid="rsa-2"), keys) == "unknown signing key"
    assert keys.fetch_count == 2

    clock.advance(31)
    assert verify_jwt(sign(rotated_key, kid="rsa-2"), policy=POLICY, keys=keys)
    assert keys.fetch_count == 3
    assert verify_jwt(sign(rsa_key), policy=POLICY, keys=keys)
    assert keys.fetch_count == 3


def test_a_key_published_just_after_a_fetch_is_found_by_one_refetch(
    jwks: JwksCache,
    key_server: KeyServer,
    rsa_key: rsa.RSAPrivateKey,
    rotated_key: rsa.RSAPrivateKey,
) -> None:
    verify_jwt(sign(rsa_key), policy=POLICY, keys=jwks)
    key_server.serve_jwks(rsa_jwk(rsa_key, "rsa-1"), rsa_jwk(rotated_key, "rsa-2"))

    assert verify_jwt(sign(rotated_key, kid="rsa-2"), policy=POLICY, keys=jwks)
    assert jwks.fetch_count == 2


def test_concurrent_unknown_kids_cause_a_single_refetch(
    jwks: JwksCache, rsa_key: rsa.RSAPrivateKey, rotated_key: rsa.RSAPrivateKey
) -> None:
    verify_jwt(sign(rsa_key), policy=POLICY, keys=jwks)
    tokens = [sign(rotated_key, kid=f"unknown-{n}") for n in range(16)]
    details: list[str] = []
    start = threading.Barrier(len(tokens))

    def attempt(token: str) -> None:
        start.wait()
        try:
            verify_jwt(token, policy=POLICY, keys=jwks)
        except InvalidToken as e:
            details.append(e.detail)

    threads = [threading.Thread(target=attempt, args=(t,)) for t in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert details == ["unknown signing key"] * len(tokens)
    assert jwks.fetch_count == 2


def test_concurrent_callers_on_a_cold_cache_share_one_fetch(
    key_server: KeyServer, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    key_server.routes["/jwks"] = Route(
        body=json.dumps({"keys": [rsa_jwk(rsa_key, "rsa-1")]}).encode(), delay=0.05
    )
    keys = JwksCache(jwks_url=key_server.url("/jwks"), clock=clock)
    tokens = [sign(rsa_key, sub=f"user-{n}") for n in range(16)]
    subjects: list[str] = []
    start = threading.Barrier(len(tokens))

    def attempt(token: str) -> None:
        start.wait()
        subjects.append(verify_jwt(token, policy=POLICY, keys=keys)["sub"])

    threads = [threading.Thread(target=attempt, args=(t,)) for t in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(subjects) == sorted(f"user-{n}" for n in range(16))
    assert keys.fetch_count == 1 and key_server.hits == {"/jwks": 1}


def test_keys_are_refetched_after_the_ttl_and_dropped_keys_stop_working(
    key_server: KeyServer,
    clock: FakeClock,
    rsa_key: rsa.RSAPrivateKey,
    rotated_key: rsa.RSAPrivateKey,
) -> None:
    key_server.serve_jwks(rsa_jwk(rsa_key, "rsa-1"))
    keys = JwksCache(jwks_url=key_server.url("/jwks"), ttl=3600, clock=clock)
    verify_jwt(sign(rsa_key), policy=POLICY, keys=keys)
    key_server.serve_jwks(rsa_jwk(rotated_key, "rsa-2"))

    clock.advance(3599)
    assert verify_jwt(sign(rsa_key), policy=POLICY, keys=keys)
    assert keys.fetch_count == 1
    clock.advance(2)
    assert verify_jwt(sign(rotated_key, kid="rsa-2"), policy=POLICY, keys=keys)
    assert keys.fetch_count == 2
    assert refused(sign(rsa_key), keys) == "unknown signing key"


def test_jwks_entries_not_for_signing_or_not_for_the_pinned_algorithms_are_skipped(
    key_server: KeyServer, clock: FakeClock, rsa_key: rsa.RSAPrivateKey, ec_key: Any
) -> None:
    key_server.serve_jwks(
        rsa_jwk(rsa_key, "enc-key", use="enc"),
        rsa_jwk(rsa_key, "rs384-key", alg="RS384"),
        rsa_jwk(rsa_key, "encrypt-ops", key_ops=["encrypt"]),
        ec_jwk(ec_key, "ec-key"),
        {"kty": "oct", "kid": "hmac-key", "k": b64url(SECRET)},
        {"kty": "RSA", "kid": "broken", "n": "AQAB"},
        "not-a-jwk",
        rsa_jwk(rsa_key, "good"),
    )
    keys = JwksCache(jwks_url=key_server.url("/jwks"), clock=clock)

    assert verify_jwt(sign(rsa_key, kid="good"), policy=POLICY, keys=keys)
    for kid in ("enc-key", "rs384-key", "encrypt-ops", "hmac-key", "broken"):
        assert refused(sign(rsa_key, kid=kid), keys) == "unknown signing key"
    assert refused(sign(ec_key, kid="ec-key", alg="ES256"), keys) == "algorithm not allowed"


def test_a_token_without_kid_uses_the_only_key_of_a_one_key_set(
    key_server: KeyServer,
    clock: FakeClock,
    rsa_key: rsa.RSAPrivateKey,
    rotated_key: rsa.RSAPrivateKey,
) -> None:
    key_server.serve_jwks(rsa_jwk(rsa_key, None))
    single = JwksCache(jwks_url=key_server.url("/jwks"), clock=clock)
    assert verify_jwt(sign(rsa_key, kid=None), policy=POLICY, keys=single)

    key_server.serve_jwks(rsa_jwk(rsa_key, "rsa-1"), rsa_jwk(rotated_key, "rsa-2"), path="/two")
    several = JwksCache(jwks_url=key_server.url("/two"), clock=clock)
    assert refused(sign(rsa_key, kid=None), several) == "unknown signing key"


def test_a_shared_secret_verifies_hs256_invites(
    jwks: JwksCache, rsa_key: rsa.RSAPrivateKey
) -> None:
    policy = JwtPolicy(issuers=(ISSUER,), audiences=(CLIENT_ID,), algorithms=("HS256",))
    secret = SharedSecret(SECRET)

    assert verify_jwt(sign(SECRET, kid=None, alg="HS256"), policy=policy, keys=secret)
    assert refused(sign(b"x" * 32, kid=None, alg="HS256"), secret, policy) == (
        "signature verification failed"
    )
    assert refused(sign(rsa_key), secret, policy) == "algorithm not allowed"
    assert refused(sign(SECRET, kid=None, alg="HS256"), jwks) == "algorithm not allowed"
    assert "0123" not in repr(secret)


# ----------------------------------------------------------------------------- JWKS outages


def test_an_outage_with_cached_keys_still_verifies(
    key_server: KeyServer, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    key_server.serve_jwks(rsa_jwk(rsa_key, "rsa-1"))
    keys = JwksCache(jwks_url=key_server.url("/jwks"), ttl=3600, clock=clock)
    verify_jwt(sign(rsa_key), policy=POLICY, keys=keys)
    key_server.serve_json("/jwks", {"error": "down"}, status=500)
    clock.advance(4000)

    assert verify_jwt(sign(rsa_key), policy=POLICY, keys=keys)
    assert keys.fetch_count == 2
    # The failed refresh backs off: no fetch per request while the outage lasts.
    assert verify_jwt(sign(rsa_key), policy=POLICY, keys=keys)
    assert keys.fetch_count == 2


OVERSIZED_JWKS = b'{"keys": [' + b'{"kty": "RSA", "n": "AQAB", "e": "AQAB"},' * 30000 + b"{}]}"


@pytest.mark.parametrize(
    "route",
    [
        Route(status=503, body=b"{}"),
        Route(body=b"<html>not json</html>"),
        Route(body=b'["keys"]'),
        Route(body=b'{"keys": "none"}'),
        Route(body=b'{"keys": []}'),
        Route(body=OVERSIZED_JWKS),
        Route(body=OVERSIZED_JWKS, declare_length=False),
    ],
    ids=[
        "http-503",
        "not-json",
        "not-object",
        "keys-not-list",
        "no-keys",
        "over-1mb",
        "over-1mb-undeclared",
    ],
)
def test_an_outage_without_cached_keys_is_503(
    key_server: KeyServer, clock: FakeClock, rsa_key: rsa.RSAPrivateKey, route: Route
) -> None:
    key_server.routes["/jwks"] = route
    keys = JwksCache(jwks_url=key_server.url("/jwks"), min_refresh_interval=60, clock=clock)

    with pytest.raises(UpstreamUnavailable) as caught:
        verify_jwt(sign(rsa_key), policy=POLICY, keys=keys)
    assert caught.value.status == 503 and caught.value.code == "upstream_unavailable"
    assert caught.value.retry_after == 60

    clock.advance(20)
    with pytest.raises(UpstreamUnavailable) as again:
        verify_jwt(sign(rsa_key), policy=POLICY, keys=keys)
    assert again.value.retry_after == 40 and keys.fetch_count == 1

    key_server.serve_jwks(rsa_jwk(rsa_key, "rsa-1"))
    clock.advance(40)
    assert verify_jwt(sign(rsa_key), policy=POLICY, keys=keys)
    assert keys.fetch_count == 2


def test_a_malformed_refresh_keeps_the_cached_keys(
    key_server: KeyServer, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    key_server.serve_jwks(rsa_jwk(rsa_key, "rsa-1"))
    keys = JwksCache(jwks_url=key_server.url("/jwks"), ttl=10, clock=clock)
    verify_jwt(sign(rsa_key), policy=POLICY, keys=keys)
    key_server.routes["/jwks"] = Route(body=b'{"keys": [{"kty": "oct", "k": "AAAA"}]}')
    clock.advance(11)

    assert verify_jwt(sign(rsa_key), policy=POLICY, keys=keys)
    assert keys.fetch_count == 2


def test_an_unknown_kid_during_an_outage_is_503_not_invalid(
    key_server: KeyServer,
    clock: FakeClock,
    rsa_key: rsa.RSAPrivateKey,
    rotated_key: rsa.RSAPrivateKey,
) -> None:
    key_server.serve_jwks(rsa_jwk(rsa_key, "rsa-1"))
    keys = JwksCache(jwks_url=key_server.url("/jwks"), clock=clock)
    verify_jwt(sign(rsa_key), policy=POLICY, keys=keys)
    key_server.routes["/jwks"] = Route(status=502)

    with pytest.raises(UpstreamUnavailable):
        verify_jwt(sign(rotated_key, kid="rsa-2"), policy=POLICY, keys=keys)
    assert verify_jwt(sign(rsa_key), policy=POLICY, keys=keys)


def test_an_unreachable_jwks_is_503(clock: FakeClock, rsa_key: rsa.RSAPrivateKey) -> None:
    with socket_closed_port() as port:
        keys = JwksCache(jwks_url=f"http://127.0.0.1:{port}/jwks", clock=clock)

        with pytest.raises(UpstreamUnavailable) as caught:
            verify_jwt(sign(rsa_key), policy=POLICY, keys=keys)
    assert caught.value.status == 503


def test_a_jwks_that_does_not_answer_in_time_is_504(
    key_server: KeyServer, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    key_server.routes["/jwks"] = Route(body=b'{"keys": []}', delay=5)
    keys = JwksCache(jwks_url=key_server.url("/jwks"), read_timeout=0.2, clock=clock)

    with pytest.raises(UpstreamTimeout) as caught:
        verify_jwt(sign(rsa_key), policy=POLICY, keys=keys)
    assert caught.value.status == 504


@contextlib.contextmanager
def socket_closed_port() -> Iterator[int]:
    """A loopback port with nothing listening on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    yield port


# ----------------------------------------------------------------------------- discovery


def test_discovery_resolves_the_jwks_uri_once(
    key_server: KeyServer, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    issuer = key_server.url("/tenant")
    key_server.serve_jwks(rsa_jwk(rsa_key, "rsa-1"), path="/tenant/keys")
    key_server.serve_json(
        "/tenant/.well-known/openid-configuration",
        {"issuer": issuer, "jwks_uri": key_server.url("/tenant/keys")},
    )
    keys = JwksCache(issuer=issuer, ttl=10, clock=clock)
    policy = JwtPolicy(issuers=(issuer,), audiences=(CLIENT_ID,))

    assert verify_jwt(sign(rsa_key, iss=issuer), policy=policy, keys=keys)
    clock.advance(11)
    assert verify_jwt(sign(rsa_key, iss=issuer), policy=policy, keys=keys)

    assert key_server.hits == {"/tenant/.well-known/openid-configuration": 1, "/tenant/keys": 2}
    discovery = keys.discovery()
    assert discovery is not None and discovery["jwks_uri"] == key_server.url("/tenant/keys")


@pytest.mark.parametrize(
    "document",
    [
        {"issuer": "https://someone-else.example", "jwks_uri": "JWKS"},
        {"issuer": "ISSUER", "jwks_uri": "http://keys.example.net/jwks"},
        {"issuer": "ISSUER"},
    ],
    ids=["other-issuer", "plain-http-jwks", "no-jwks-uri"],
)
def test_a_discovery_document_that_cannot_be_trusted_is_a_failed_fetch(
    key_server: KeyServer, clock: FakeClock, rsa_key: rsa.RSAPrivateKey, document: dict[str, str]
) -> None:
    issuer = key_server.url("/tenant")
    key_server.serve_jwks(rsa_jwk(rsa_key, "rsa-1"), path="/tenant/keys")
    replacements = {"ISSUER": issuer, "JWKS": key_server.url("/tenant/keys")}
    key_server.serve_json(
        "/tenant/.well-known/openid-configuration",
        {k: replacements.get(v, v) for k, v in document.items()},
    )
    keys = JwksCache(issuer=issuer, clock=clock)

    with pytest.raises(UpstreamUnavailable):
        verify_jwt(
            sign(rsa_key, iss=issuer),
            policy=JwtPolicy(issuers=(issuer,), audiences=(CLIENT_ID,)),
            keys=keys,
        )
    assert key_server.hits.get("/tenant/keys") is None and keys.fetch_count == 0


ALL_ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "EdDSA")


def serve_discovery(key_server: KeyServer, **members: Any) -> str:
    issuer = key_server.url("/tenant")
    key_server.serve_json(
        "/tenant/.well-known/openid-configuration",
        {"issuer": issuer, "jwks_uri": key_server.url("/tenant/keys"), **members},
    )
    return issuer


def test_discovery_narrows_the_algorithms_to_those_advertised(
    key_server: KeyServer,
    clock: FakeClock,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    key_server.serve_jwks(rsa_jwk(rsa_key, "rsa-1"), ec_jwk(ec_key, "ec-1"), path="/tenant/keys")
    issuer = serve_discovery(
        key_server, id_token_signing_alg_values_supported=["ES256", "HS256", "none"]
    )
    keys = JwksCache(issuer=issuer, algorithms=ALL_ASYMMETRIC, follow_discovery=True, clock=clock)
    policy = JwtPolicy(issuers=(issuer,), audiences=(CLIENT_ID,), algorithms=ALL_ASYMMETRIC)

    assert verify_jwt(sign(ec_key, kid="ec-1", alg="ES256", iss=issuer), policy=policy, keys=keys)
    assert keys.algorithms == {"ES256"}
    # The provider does not sign with RS256: its RSA key is not used, whatever it signs.
    assert refused(sign(rsa_key, iss=issuer), keys, policy) == "algorithm not allowed"


def test_a_discovery_document_without_algorithms_means_rs256(
    key_server: KeyServer,
    clock: FakeClock,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    key_server.serve_jwks(rsa_jwk(rsa_key, "rsa-1"), ec_jwk(ec_key, "ec-1"), path="/tenant/keys")
    issuer = serve_discovery(key_server)
    keys = JwksCache(issuer=issuer, algorithms=ALL_ASYMMETRIC, follow_discovery=True, clock=clock)
    policy = JwtPolicy(issuers=(issuer,), audiences=(CLIENT_ID,), algorithms=ALL_ASYMMETRIC)

    assert verify_jwt(sign(rsa_key, iss=issuer), policy=policy, keys=keys)
    assert refused(sign(ec_key, kid="ec-1", alg="ES256", iss=issuer), keys, policy) == (
        "algorithm not allowed"
    )


def test_a_provider_advertising_only_hmac_or_none_is_unusable(
    key_server: KeyServer, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    key_server.serve_jwks(rsa_jwk(rsa_key, "rsa-1"), path="/tenant/keys")
    issuer = serve_discovery(key_server, id_token_signing_alg_values_supported=["HS256", "none"])
    keys = JwksCache(issuer=issuer, algorithms=ALL_ASYMMETRIC, follow_discovery=True, clock=clock)
    policy = JwtPolicy(issuers=(issuer,), audiences=(CLIENT_ID,), algorithms=ALL_ASYMMETRIC)
    with pytest.raises(UpstreamUnavailable):
        verify_jwt(sign(rsa_key, iss=issuer), policy=policy, keys=keys)


def test_pinned_algorithms_ignore_what_discovery_advertises(
    key_server: KeyServer, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    key_server.serve_jwks(rsa_jwk(rsa_key, "rsa-1"), path="/tenant/keys")
    issuer = serve_discovery(key_server, id_token_signing_alg_values_supported=["ES256"])
    keys = JwksCache(issuer=issuer, algorithms=("RS256",), clock=clock)
    policy = JwtPolicy(issuers=(issuer,), audiences=(CLIENT_ID,))
    assert verify_jwt(sign(rsa_key, iss=issuer), policy=policy, keys=keys)


def test_a_signed_answer_without_exp_passes_only_where_exp_is_not_required(
    jwks: JwksCache, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(
        {k: v for k, v in claims().items() if k not in ("exp", "iat")},
        rsa_key,
        algorithm="RS256",
        headers={"kid": "rsa-1"},
    )
    assert refused(token, jwks) == "missing required claim 'exp'"
    policy = JwtPolicy(
        issuers=(ISSUER,),
        audiences=(CLIENT_ID,),
        required_claims=("iss", "sub", "aud"),
        require_exp=False,
    )
    assert verify_jwt(token, policy=policy, keys=jwks)["sub"] == claims()["sub"]


def test_ed448_keys_are_not_used(key_server: KeyServer, clock: FakeClock) -> None:
    key = ed448.Ed448PrivateKey.generate()
    key_server.serve_jwks({**OKPAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "ed448"})
    keys = JwksCache(jwks_url=key_server.url("/jwks"), algorithms=("EdDSA",), clock=clock)
    policy = JwtPolicy(issuers=(ISSUER,), audiences=(CLIENT_ID,), algorithms=("EdDSA",))
    with pytest.raises(UpstreamUnavailable):
        verify_jwt(sign(key, kid="ed448", alg="EdDSA"), policy=policy, keys=keys)


def test_key_urls_must_be_https_outside_loopback() -> None:
    with pytest.raises(ValueError, match="https"):
        JwksCache(jwks_url="http://keys.example.net/jwks")
    with pytest.raises(ValueError, match="exactly one"):
        JwksCache(jwks_url="https://a.example/jwks", issuer="https://a.example")
    with pytest.raises(ValueError, match="asymmetric"):
        JwksCache(jwks_url="https://a.example/jwks", algorithms=("HS256",))


# ----------------------------------------------------------------------------- claims


def test_time_claims_are_enforced_with_leeway(jwks: JwksCache, rsa_key: rsa.RSAPrivateKey) -> None:
    now = int(time.time())

    assert refused(sign(rsa_key, exp=now - 61), jwks) == "token expired"
    assert verify_jwt(sign(rsa_key, exp=now - 30), policy=POLICY, keys=jwks)
    assert refused(sign(rsa_key, nbf=now + 120), jwks) == "token not yet valid"
    assert verify_jwt(sign(rsa_key, nbf=now + 30), policy=POLICY, keys=jwks)
    assert refused(sign(rsa_key, iat=now + 3600, exp=now + 7200), jwks) == (
        "token issued in the future"
    )
    assert refused(sign(rsa_key, exp=None), jwks) == "missing required claim 'exp'"


def test_an_injected_now_is_the_one_clock_for_every_time_claim(
    jwks: JwksCache, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = sign(rsa_key, iat=2_000_000_000, nbf=2_000_000_000, exp=2_000_000_300)

    assert verify_jwt(token, policy=POLICY, keys=jwks, now=2_000_000_100)
    assert refused(token, jwks, now=2_000_000_400) == "token expired"
    assert refused(token, jwks, now=1_999_999_000) == "token not yet valid"


def test_exp_is_required_even_when_a_policy_forgets_it(
    jwks: JwksCache, rsa_key: rsa.RSAPrivateKey
) -> None:
    policy = JwtPolicy(issuers=(ISSUER,), audiences=(CLIENT_ID,), required_claims=("iss", "aud"))

    assert refused(sign(rsa_key, exp=None), jwks, policy) == "missing required claim 'exp'"


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("exp", "9999999999"),
        ("exp", float("inf")),
        ("exp", float("nan")),
        ("exp", True),
        ("nbf", "0"),
        ("iat", [1]),
    ],
)
def test_time_claims_must_be_numbers(
    jwks: JwksCache, rsa_key: rsa.RSAPrivateKey, claim: str, value: Any
) -> None:
    assert refused(sign(rsa_key, **{claim: value}), jwks) == f"malformed claim '{claim}'"


def test_max_age_refuses_old_tokens(jwks: JwksCache, rsa_key: rsa.RSAPrivateKey) -> None:
    policy = JwtPolicy(issuers=(ISSUER,), audiences=(CLIENT_ID,), max_age=600, leeway=0)
    now = int(time.time())

    assert verify_jwt(sign(rsa_key, iat=now - 500), policy=policy, keys=jwks)
    assert refused(sign(rsa_key, iat=now - 700), jwks, policy) == "token too old"


def test_issuer_and_audience_must_be_ours(jwks: JwksCache, rsa_key: rsa.RSAPrivateKey) -> None:
    assert refused(sign(rsa_key, iss="https://evil.example"), jwks) == "issuer not accepted"
    assert refused(sign(rsa_key, iss=None), jwks) == "missing required claim 'iss'"
    assert refused(sign(rsa_key, aud=OTHER_CLIENT), jwks) == "audience not accepted"
    assert refused(sign(rsa_key, aud=None), jwks) == "missing required claim 'aud'"
    assert refused(sign(rsa_key, aud=[]), jwks) == "missing required claim 'aud'"
    assert refused(sign(rsa_key, sub=None), jwks) == "missing required claim 'sub'"


def test_several_audiences_need_our_azp(jwks: JwksCache, rsa_key: rsa.RSAPrivateKey) -> None:
    audiences = [CLIENT_ID, OTHER_CLIENT]

    assert refused(sign(rsa_key, aud=audiences), jwks) == "authorized party not accepted"
    assert refused(sign(rsa_key, aud=audiences, azp=OTHER_CLIENT), jwks) == (
        "authorized party not accepted"
    )
    assert verify_jwt(sign(rsa_key, aud=audiences, azp=CLIENT_ID), policy=POLICY, keys=jwks)
    # One audience: azp may name another client of the same app (Google's Android flow).
    assert verify_jwt(sign(rsa_key, azp="android-client"), policy=POLICY, keys=jwks)


def test_azp_check_can_be_turned_off(jwks: JwksCache, rsa_key: rsa.RSAPrivateKey) -> None:
    policy = JwtPolicy(issuers=(ISSUER,), audiences=(CLIENT_ID,), check_azp=False)

    assert verify_jwt(sign(rsa_key, aud=[CLIENT_ID, OTHER_CLIENT]), policy=policy, keys=jwks)


def test_nonce_must_match_when_given_and_be_given_when_required(
    jwks: JwksCache, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = sign(rsa_key, nonce="n-0S6_WzA2Mj")
    required = JwtPolicy(issuers=(ISSUER,), audiences=(CLIENT_ID,), require_nonce=True)

    assert verify_jwt(token, policy=POLICY, keys=jwks, nonce="n-0S6_WzA2Mj")
    assert refused(token, jwks, nonce="n-other") == "nonce mismatch"
    assert refused(sign(rsa_key), jwks, nonce="n-0S6_WzA2Mj") == "nonce mismatch"
    assert refused(token, jwks, required) == "nonce required"
    assert verify_jwt(token, policy=required, keys=jwks, nonce="n-0S6_WzA2Mj")


def test_cognito_access_tokens_are_refused_where_id_tokens_are_expected(
    jwks: JwksCache, rsa_key: rsa.RSAPrivateKey
) -> None:
    policy = JwtPolicy(issuers=(ISSUER,), audiences=(CLIENT_ID,), allowed_token_use="id")

    assert verify_jwt(sign(rsa_key, token_use="id"), policy=policy, keys=jwks)
    assert refused(sign(rsa_key, token_use="access"), jwks, policy) == "token use not accepted"
    assert refused(sign(rsa_key), jwks, policy) == "token use not accepted"


# ----------------------------------------------------------------------------- malformed input


def test_a_1mb_token_is_refused_before_anything_else(jwks: JwksCache) -> None:
    token = "eyJhbGciOiJSUzI1NiJ9." + "A" * (1024 * 1024) + ".AAAA"

    assert refused(token, jwks) == "token too large"
    assert jwks.fetch_count == 0


def test_the_size_limit_is_the_policys(jwks: JwksCache, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_key, padding="x" * 2000)
    small = JwtPolicy(issuers=(ISSUER,), audiences=(CLIENT_ID,), max_token_bytes=1024)

    assert verify_jwt(token, policy=POLICY, keys=jwks)
    assert refused(token, jwks, small) == "token too large"


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "a.b",
        "a.b.c.d",
        "!!!.$$$.%%%",
        "eyJhbGciOiJSUzI1NiJ9..sig",
        "eyJhbGciOiJSUzI1NiJ9.eyJ9. AAAA",
        "eyJhbGciOiJSUzI1NiJ9=.e30.AAAA",
        b64url(b"not json") + ".e30.AAAA",
        b64url(b'["alg", "RS256"]') + ".e30.AAAA",
        b64url(b'"RS256"') + ".e30.AAAA",
        b64url(b"\xff\xfe{}") + ".e30.AAAA",
        b64url(b"[" * 5000 + b"]" * 5000) + ".e30.AAAA",
        "A.e30.AAAA",
        b64url(b'{"alg": "RS256", "kid": 7}') + ".e30.AAAA",
        "ёжик.e30.AAAA",
    ],
)
def test_garbage_is_a_malformed_token(jwks: JwksCache, garbage: str) -> None:
    assert refused(garbage, jwks) == "malformed token"
    assert jwks.fetch_count == 0


@pytest.mark.parametrize("not_a_string", [None, 42, b"a.b.c", {"alg": "none"}])
def test_a_token_that_is_not_a_string_is_malformed(jwks: JwksCache, not_a_string: Any) -> None:
    assert refused(not_a_string, jwks) == "malformed token"


def test_a_correctly_signed_token_with_a_garbage_payload_is_malformed(
    jwks: JwksCache, rsa_key: rsa.RSAPrivateKey
) -> None:
    signing_input = b64url(b'{"alg":"RS256","kid":"rsa-1"}') + "." + b64url(b"[1, 2]")
    signature = rsa_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())

    assert refused(signing_input + "." + b64url(signature), jwks) == "malformed token"


# ----------------------------------------------------------------------------- policy rules


@pytest.mark.parametrize(
    "kwargs",
    [
        {"algorithms": ("none",)},
        {"algorithms": ("HS256", "RS256")},
        {"algorithms": ("RS256", "ES256K")},
        {"algorithms": ()},
        {"issuers": ()},
        {"audiences": ("",)},
        {"leeway": -1},
        {"max_token_bytes": 0},
    ],
)
def test_a_policy_that_could_not_be_safe_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="JwtPolicy"):
        JwtPolicy(**{"issuers": (ISSUER,), "audiences": (CLIENT_ID,), **kwargs})


def test_a_shared_secret_needs_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SharedSecret(b"short")
