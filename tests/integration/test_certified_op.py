"""Sign-in through a certified OpenID Provider: panva's ``oidc-provider`` under Node
(``tests/fixtures/certified_op.py``), configured as real deployments configure it:
id tokens signed with RS256, ES256 or EdDSA (one client per algorithm), profile and
email claims only at userinfo (``conformIdTokenClaims``), refresh tokens only for
``offline_access`` with ``prompt=consent``.

A live broker (Werkzeug thread) and the moto server stand behind it; the browser is a
``requests`` cookie jar that posts the OP's login form. Refusals check what the browser or
app sees and that nothing reached AWS. Tokens the certified OP would never make (HS256,
a key used with another algorithm) come from the local Python IdP.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from identity.config.document import BrokerConfig
from identity.sessions import SessionRecord
from service.demo.dev_idp import DevIdentityProvider
from tests.fakes import FakeClock
from tests.fixtures.apps import MakeConfig
from tests.fixtures.certified_op import (
    MOBILE_REDIRECT_URI,
    SPA,
    SPA_HOME,
    CertifiedOp,
    OpClient,
    op_broker_config,
    op_provider,
    query_of,
)
from tests.fixtures.live_server import LiveServer, LoopbackSession
from tests.fixtures.oidc_provider import ALICE_SUB

MOBILE_REDIRECT = MOBILE_REDIRECT_URI
COOKIE = "chime_broker_session"


class OpBroker:
    """A live broker with one ``oidc`` provider per client registered at the OP."""

    def __init__(self, server: LiveServer, op: CertifiedOp, clients: Mapping[str, OpClient]):
        self.server = server
        self.op = op
        self.clients = clients
        self.http = LoopbackSession()

    def begin(self, provider: str) -> str:
        response = self.http.get(
            f"{self.server.url}/v1/login/{provider}", allow_redirects=False, timeout=10
        )
        assert response.status_code == 302, response.text
        return response.headers["Location"]

    def sign_in(self, provider: str, login: str) -> requests.Response:
        """The whole browser sign-in of ``login``; the broker's answer to the callback."""
        callback = self.op.sign_in(self.http, self.begin(provider), login)
        assert callback.startswith(f"{self.server.url}/v1/callback/{provider}?"), callback
        return self.http.get(callback, allow_redirects=False, timeout=10)

    def api(self, method: str, path: str) -> requests.Response:
        return self.http.request(
            method,
            f"{self.server.url}{path}",
            headers={"Origin": SPA},
            allow_redirects=False,
            timeout=10,
        )

    def session_record(self) -> SessionRecord:
        record = self.server.app.extensions["chime_broker"].broker.sessions.find(
            self.http.cookies.get(COOKIE)
        )
        assert record is not None
        return record  # type: ignore[no-any-return]


StartBroker = Callable[..., OpBroker]


def default_map(name: str) -> dict[str, str]:
    return {"user_id": f"{name}-{{sub}}", "display_name": "{name}"}


@pytest.fixture
def op_broker(
    certified_op: CertifiedOp,
    live_broker: Callable[..., LiveServer],
    make_config: MakeConfig,
    clock: FakeClock,
) -> StartBroker:
    """``op_broker({name: client_metadata}, map=..., scopes=..., **provider_keys)``: a
    broker whose providers each have their own client at the OP, registered for the
    broker's callback."""

    def start(
        clients: Mapping[str, Mapping[str, Any]],
        *,
        map: Mapping[str, Any] | None = None,
        scopes: tuple[str, ...] = ("openid", "email", "profile"),
        **provider_keys: Any,
    ) -> OpBroker:
        registered: dict[str, OpClient] = {}

        def config(url: str) -> BrokerConfig:
            providers = []
            for name, metadata in clients.items():
                client = certified_op.register_client(
                    redirect_uris=[f"{url}/v1/callback/{name}", MOBILE_REDIRECT], **metadata
                )
                registered[name] = client
                providers.append(
                    op_provider(
                        certified_op,
                        name,
                        client,
                        map=map or default_map(name),
                        scopes=scopes,
                        **provider_keys,
                    )
                )
            return op_broker_config(make_config, url, providers)

        server = live_broker(config, clock=clock)
        return OpBroker(server, certified_op, registered)

    return start


def header_alg(token: str) -> str:
    return str(jwt.get_unverified_header(token)["alg"])


# -- sign-in with each algorithm, claims only at userinfo ------------------------------------


def test_sign_in_with_rs256_es256_and_eddsa_id_tokens_and_userinfo_claims(
    op_broker: StartBroker, aws: Any
) -> None:
    broker = op_broker(
        {
            "op-rs256": {"id_token_signed_response_alg": "RS256"},
            "op-es256": {"id_token_signed_response_alg": "ES256"},
            "op-eddsa": {"id_token_signed_response_alg": "EdDSA"},
            # userinfo answered as a JWT, verified like an id token
            "op-signed": {
                "id_token_signed_response_alg": "ES256",
                "userinfo_signed_response_alg": "EdDSA",
            },
        }
    )
    for name, client in broker.clients.items():
        # What the broker's client gets from the OP for alice: an id token with the
        # registered algorithm and no profile claims (those are at userinfo).
        tokens = broker.op.code_flow_tokens(client, "alice")
        alg = client.metadata["id_token_signed_response_alg"]
        assert header_alg(tokens["id_token"]) == alg
        assert "name" not in jwt.decode(tokens["id_token"], options={"verify_signature": False})

        done = broker.sign_in(name, "alice")
        assert done.status_code == 302, done.text
        assert done.headers["Location"] == SPA_HOME
        me = broker.api("GET", "/v1/session").json()
        assert me["provider"] == name
        assert me["user_id"] == f"{name}-alice"
        assert me["display_name"] == "Alice Liddell", name

    issued = broker.api("POST", "/v1/credentials")
    assert issued.status_code == 200, issued.text
    assert "AssumeRole" in aws.recorder.operations()


def test_require_email_verified_admits_the_verified_user_only(
    op_broker: StartBroker, aws: Any
) -> None:
    broker = op_broker(
        {"corp": {"id_token_signed_response_alg": "ES256"}},
        map={
            "user_id": "corp-{sub}",
            "display_name": "{name}",
            "tags": {"email": "{email}"},
            "require": {"email_verified": True},
        },
    )
    done = broker.sign_in("corp", "alice")
    assert done.status_code == 302 and done.headers["Location"] == SPA_HOME
    assert broker.session_record().tags["email"] == "alice@example.com"

    refused = OpBroker(broker.server, broker.op, broker.clients)
    answer = refused.sign_in("corp", "bob")
    assert answer.status_code == 302
    assert answer.headers["Location"] == f"{SPA_HOME}?error=access_denied"
    assert refused.http.cookies.get(COOKIE) is None
    assert aws.recorder.requests() == []


def test_a_userinfo_answer_for_another_subject_fails_the_login(
    op_broker: StartBroker, aws: Any
) -> None:
    broker = op_broker({"corp": {"id_token_signed_response_alg": "RS256"}})
    answer = broker.sign_in("corp", "mallory")
    assert answer.status_code == 302
    assert answer.headers["Location"] == f"{SPA_HOME}?error=upstream_error"
    assert broker.http.cookies.get(COOKIE) is None
    assert aws.recorder.requests() == []


# -- refresh tokens and re-checks --------------------------------------------------------------


def test_offline_access_brings_a_refresh_token_and_the_session_is_rechecked(
    op_broker: StartBroker, clock: FakeClock, aws: Any
) -> None:
    broker = op_broker(
        {"corp": {"id_token_signed_response_alg": "EdDSA"}},
        scopes=("openid", "email", "profile", "offline_access"),
    )
    sent = query_of(broker.begin("corp"))
    assert sent["prompt"] == "consent"
    assert "offline_access" in sent["scope"].split()

    assert broker.sign_in("corp", "alice").status_code == 302
    record = broker.session_record()
    assert record.refresh_token and not record.refresh_token_missing
    assert record.rechecked_at == clock.now
    assert broker.api("POST", "/v1/credentials").status_code == 200

    # After recheck_interval (15 minutes) the next refresh asks the OP's token endpoint.
    clock.advance(16 * 60)
    assert broker.api("POST", "/v1/credentials").status_code == 200
    rechecked = broker.session_record()
    assert rechecked.rechecked_at == clock.now

    # The OP forgets the grant: the next re-check is refused there, and the session ends.
    client = broker.clients["corp"]
    revoked = requests.post(
        broker.op.discovery()["revocation_endpoint"],
        data={"token": rechecked.refresh_token, "token_type_hint": "refresh_token"},
        auth=(client.client_id, client.client_secret),
        timeout=10,
    )
    assert revoked.status_code == 200, revoked.text
    clock.advance(16 * 60)
    aws.recorder.reset()
    refused = broker.api("POST", "/v1/credentials")
    assert refused.status_code == 401
    assert refused.json()["code"] == "reauthentication_required"
    assert aws.recorder.requests() == []


def test_a_login_without_the_refresh_token_it_asked_for_is_marked(
    op_broker: StartBroker,
) -> None:
    # A client the OP issues no refresh tokens to drops offline_access.
    broker = op_broker(
        {"corp": {"grant_types": ["authorization_code"]}},
        scopes=("openid", "email", "profile", "offline_access"),
    )
    assert broker.sign_in("corp", "alice").status_code == 302
    record = broker.session_record()
    assert record.refresh_token is None
    assert record.refresh_token_missing
    assert record.rechecked_at is None


# -- the mobile path: id tokens at /v1/token --------------------------------------------------


def test_mobile_id_tokens_of_each_algorithm_are_exchanged(
    op_broker: StartBroker, certified_op: CertifiedOp, aws: Any
) -> None:
    mobile = {
        alg: certified_op.register_client(
            redirect_uris=[MOBILE_REDIRECT], id_token_signed_response_alg=alg
        )
        for alg in ("RS256", "ES256", "EdDSA")
    }
    broker = op_broker(
        {"corp": {}},
        audiences=["web-placeholder", *(c.client_id for c in mobile.values())],
        map={"user_id": "corp-{sub}"},
    )
    for alg, client in mobile.items():
        id_token = certified_op.code_flow_tokens(client, "alice")["id_token"]
        assert header_alg(id_token) == alg
        answer = requests.post(
            f"{broker.server.url}/v1/token",
            json={"provider": "corp", "id_token": id_token},
            timeout=10,
        )
        assert answer.status_code == 200, (alg, answer.text)
        assert answer.json()["user_id"] == "corp-alice"
    assert "AssumeRole" in aws.recorder.operations()


def test_pinned_algorithms_refuse_the_others(
    op_broker: StartBroker, certified_op: CertifiedOp, aws: Any
) -> None:
    mobile = certified_op.clients["mobile-es256"]
    broker = op_broker(
        {"corp": {}},
        audiences=[mobile.client_id],
        algorithms=["RS256", "EdDSA"],
        map={"user_id": "corp-{sub}"},
    )
    id_token = certified_op.code_flow_tokens(mobile, "alice")["id_token"]
    assert header_alg(id_token) == "ES256"
    answer = requests.post(
        f"{broker.server.url}/v1/token", json={"provider": "corp", "id_token": id_token}, timeout=10
    )
    assert answer.status_code == 401
    assert answer.json()["code"] == "invalid_token"
    assert aws.recorder.requests() == []


# -- tokens the certified OP would never sign (local Python IdP) -----------------------------


@pytest.fixture
def local_broker(
    live_broker: Callable[..., LiveServer],
    make_config: MakeConfig,
    oidc_provider: DevIdentityProvider,
    clock: FakeClock,
) -> LiveServer:
    """A broker whose ``corp`` provider (the local IdP) pins RS256, PS256 and ES256: each
    is allowed, so what refuses the tokens below is the key, not the list."""
    return live_broker(
        lambda url: make_config(
            service__public_url=url,
            providers=[
                {
                    "name": "corp",
                    "kind": "oidc",
                    "issuer": oidc_provider.issuer,
                    "client_id": "test-client",
                    "exchange": "sts",
                    "algorithms": ["RS256", "PS256", "ES256"],
                    "map": {"user_id": "corp-{sub}"},
                }
            ],
        ),
        clock=clock,
    )


def _hs256(idp: DevIdentityProvider) -> str:
    return idp.mint_id_token(
        {"sub": ALICE_SUB}, alg="HS256", key=b"a-shared-secret-of-at-least-32-bytes!"
    )


def _ps256_with_an_rs256_key(idp: DevIdentityProvider) -> str:
    # The key is RSA and its JWK says alg RS256: PS256 with it is refused.
    return idp.mint_id_token({"sub": ALICE_SUB}, alg="PS256")


def _es256_under_an_rsa_kid(idp: DevIdentityProvider) -> str:
    # Signed with an EC key, but naming the IdP's RSA key.
    return idp.mint_id_token(
        {"sub": ALICE_SUB}, alg="ES256", key=ec.generate_private_key(ec.SECP256R1())
    )


@pytest.mark.parametrize(
    "forge",
    [_hs256, _ps256_with_an_rs256_key, _es256_under_an_rsa_kid],
    ids=["hs256", "jwk-alg-mismatch", "key-type-mismatch"],
)
def test_hs256_and_key_algorithm_mismatches_are_refused_at_v1_token(
    forge: Callable[[DevIdentityProvider], str],
    local_broker: LiveServer,
    oidc_provider: DevIdentityProvider,
    aws: Any,
) -> None:
    good = requests.post(
        f"{local_broker.url}/v1/token",
        json={"provider": "corp", "id_token": oidc_provider.mint_id_token({"sub": ALICE_SUB})},
        timeout=10,
    )
    assert good.status_code == 200, good.text
    aws.recorder.reset()

    answer = requests.post(
        f"{local_broker.url}/v1/token",
        json={"provider": "corp", "id_token": forge(oidc_provider)},
        timeout=10,
    )
    assert answer.status_code == 401, answer.text
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    assert answer.json()["code"] == "invalid_token"
    assert aws.recorder.requests() == []
