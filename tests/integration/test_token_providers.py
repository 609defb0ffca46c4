"""Mobile tokens become principals: id tokens signed by a real local OpenID Provider
(standing in for an OIDC IdP, Google, Apple and a Cognito user pool through their
issuer / JWKS overrides), access tokens checked at local fakes of Facebook's Graph API
and Login with Amazon."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pytest

from identity.errors import (
    BrokerError,
    InvalidToken,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from identity.models import Principal
from identity.providers.base import TokenProvider
from service.demo.dev_idp import DevIdentityProvider
from tests.fakes import (
    AMAZON_APP_ID,
    AMAZON_CLIENT_ID,
    FACEBOOK_APP_ID,
    FACEBOOK_APP_SECRET,
    AmazonApi,
    FacebookApi,
    Fault,
)
from tests.fixtures.apps import broker_config
from tests.fixtures.configs import REMOVE
from tests.fixtures.oidc_provider import ALICE_CLAIMS, ALICE_SUB, TEST_CLIENT_ID
from tests.fixtures.providers import built_providers

GOOGLE_WEB = "1234-web.apps.googleusercontent.com"
GOOGLE_IOS = "1234-ios.apps.googleusercontent.com"
APPLE_BUNDLE = "com.example.chat"
POOL_ID = "us-east-1_TestPool"
POOL_CLIENT = "5poolclient"
POOL_ISSUER = f"https://cognito-idp.us-east-1.amazonaws.com/{POOL_ID}"


def token_provider(
    entry: dict[str, Any], *, timeouts: dict[str, float] | None = None
) -> TokenProvider:
    """The provider the broker would build for one YAML ``providers`` entry."""
    config = broker_config(
        aws__timeouts=REMOVE if timeouts is None else timeouts,
        providers=[{"exchange": "sts", **entry}],
    )
    return built_providers(config).token[entry["name"]]


def refused(call: Callable[[], object], error: type[BrokerError] = InvalidToken) -> BrokerError:
    """The error ``call`` raises, checked to be an ``error``."""
    with pytest.raises(error) as raised:
        call()
    return raised.value


def assert_secret_free(error: BrokerError, *secrets: str) -> None:
    """Neither the client nor the log sees a token or secret, nor a chained requests error
    (whose text holds the URL with its query string)."""
    for secret in secrets:
        assert secret not in str(error)
        assert secret not in (error.log_detail or "")
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


# -- generic OIDC --------------------------------------------------------------------------


@pytest.fixture
def okta(oidc_provider: DevIdentityProvider) -> TokenProvider:
    return token_provider(
        {
            "name": "okta",
            "kind": "oidc",
            "issuer": oidc_provider.issuer,
            "client_id": TEST_CLIENT_ID,
            "audiences": [TEST_CLIENT_ID, "mobile-client"],
        }
    )


def test_oidc_id_token_becomes_a_principal(
    oidc_provider: DevIdentityProvider, okta: TokenProvider
) -> None:
    token = oidc_provider.mint_id_token(lifetime=600)

    principal = okta.verify_id_token(token, nonce=None)

    claims = dict(principal.claims)
    assert principal == Principal(
        provider="okta",
        issuer=oidc_provider.issuer,
        subject=ALICE_SUB,
        claims=claims,
        login_key=f"127.0.0.1:{oidc_provider.port}",
        login_token=token,
        token_expires_at=datetime.fromtimestamp(claims["exp"], UTC),
    )
    assert {k: claims[k] for k in ALICE_CLAIMS} == ALICE_CLAIMS
    assert claims["exp"] - claims["iat"] == 600


def test_oidc_discovery_and_keys_are_fetched_once(
    oidc_provider: DevIdentityProvider, okta: TokenProvider
) -> None:
    for _ in range(3):
        okta.verify_id_token(oidc_provider.mint_id_token(), nonce=None)

    assert oidc_provider.discovery_fetches == 1
    assert oidc_provider.jwks_fetches == 1


def test_oidc_accepts_every_listed_audience_and_nothing_else(
    oidc_provider: DevIdentityProvider, okta: TokenProvider
) -> None:
    mobile = okta.verify_id_token(oidc_provider.mint_id_token(audience="mobile-client"), nonce=None)
    assert mobile.claims["aud"] == "mobile-client"

    error = refused(
        lambda: okta.verify_id_token(
            oidc_provider.mint_id_token(audience="someone-elses-client"), nonce=None
        )
    )
    assert (error.code, error.status, error.detail) == (
        "invalid_token",
        401,
        "audience not accepted",
    )


def test_oidc_nonce_is_checked_and_can_be_required(oidc_provider: DevIdentityProvider) -> None:
    strict = token_provider(
        {
            "name": "okta",
            "kind": "oidc",
            "issuer": oidc_provider.issuer,
            "client_id": TEST_CLIENT_ID,
            "require_nonce": True,
        }
    )
    token = oidc_provider.mint_id_token({"nonce": "n-0S6_WzA2Mj"})

    assert strict.verify_id_token(token, nonce="n-0S6_WzA2Mj").subject == ALICE_SUB
    assert refused(lambda: strict.verify_id_token(token, nonce=None)).detail == "nonce required"
    assert refused(lambda: strict.verify_id_token(token, nonce="other")).detail == "nonce mismatch"


def test_oidc_provider_unreachable_is_upstream_unavailable(
    oidc_provider: DevIdentityProvider, closed_port: int
) -> None:
    okta = token_provider(
        {
            "name": "okta",
            "kind": "oidc",
            "issuer": f"http://127.0.0.1:{closed_port}",
            "client_id": TEST_CLIENT_ID,
        }
    )

    token = oidc_provider.mint_id_token()

    error = refused(lambda: okta.verify_id_token(token, nonce=None), UpstreamUnavailable)
    assert (error.code, error.status) == ("upstream_unavailable", 503)


# -- Google, Apple, Cognito user pools -----------------------------------------------------


@pytest.fixture
def google(oidc_provider: DevIdentityProvider) -> TokenProvider:
    # Google's real issuer, the local provider's keys.
    return token_provider(
        {
            "name": "google",
            "kind": "google",
            "client_ids": [GOOGLE_WEB, GOOGLE_IOS],
            "jwks_url": oidc_provider.url("/jwks"),
        }
    )


@pytest.fixture
def apple(oidc_provider: DevIdentityProvider) -> TokenProvider:
    return token_provider(
        {
            "name": "apple",
            "kind": "apple",
            "client_ids": [APPLE_BUNDLE],
            "jwks_url": oidc_provider.url("/jwks"),
        }
    )


@pytest.fixture
def user_pool(oidc_provider: DevIdentityProvider) -> TokenProvider:
    return token_provider(
        {
            "name": "pool",
            "kind": "cognito_user_pool",
            "user_pool_id": POOL_ID,
            "client_ids": [POOL_CLIENT],
            "jwks_url": oidc_provider.url("/jwks"),
        }
    )


@pytest.mark.parametrize("iss", ["https://accounts.google.com", "accounts.google.com"])
def test_google_accepts_both_spellings_of_its_issuer(
    oidc_provider: DevIdentityProvider, google: TokenProvider, iss: str
) -> None:
    token = oidc_provider.mint_id_token({"iss": iss, "sub": "1099"}, audience=GOOGLE_WEB)

    principal = google.verify_id_token(token, nonce=None)

    assert (principal.provider, principal.issuer, principal.subject) == ("google", iss, "1099")
    assert principal.login_key == "accounts.google.com"
    assert principal.login_token == token


def test_google_issuer_override_accepts_the_schemeless_spelling_only(
    oidc_provider: DevIdentityProvider,
) -> None:
    google = token_provider(
        {
            "name": "google",
            "kind": "google",
            "client_ids": [GOOGLE_WEB],
            "issuer": oidc_provider.issuer,
            "jwks_url": oidc_provider.url("/jwks"),
        }
    )
    bare = oidc_provider.issuer.removeprefix("http://")

    for iss in (oidc_provider.issuer, bare):
        token = oidc_provider.mint_id_token({"iss": iss}, audience=GOOGLE_WEB)
        assert google.verify_id_token(token, nonce=None).issuer == iss
    for iss in (f"https://{bare}", "https://accounts.google.com"):
        token = oidc_provider.mint_id_token({"iss": iss}, audience=GOOGLE_WEB)
        error = refused(partial(google.verify_id_token, token, nonce=None))
        assert error.detail == "issuer not accepted"


def test_google_token_for_several_clients_needs_an_authorized_party_of_ours(
    oidc_provider: DevIdentityProvider, google: TokenProvider
) -> None:
    claims = {"iss": "https://accounts.google.com"}
    ours = oidc_provider.mint_id_token(
        {**claims, "azp": GOOGLE_IOS}, audience=[GOOGLE_WEB, GOOGLE_IOS]
    )
    theirs = oidc_provider.mint_id_token(
        {**claims, "azp": "other.apps.googleusercontent.com"},
        audience=[GOOGLE_WEB, "other.apps.googleusercontent.com"],
    )

    assert google.verify_id_token(ours, nonce=None).claims["azp"] == GOOGLE_IOS
    error = refused(lambda: google.verify_id_token(theirs, nonce=None))
    assert error.detail == "authorized party not accepted"


def test_apple_string_booleans_arrive_as_booleans(
    oidc_provider: DevIdentityProvider, apple: TokenProvider
) -> None:
    token = oidc_provider.mint_id_token(
        {
            "iss": "https://appleid.apple.com",
            "sub": "001234.abcdef",
            "email": "x7@privaterelay.appleid.com",
            "email_verified": "true",
            "is_private_email": "false",
        },
        audience=APPLE_BUNDLE,
    )

    principal = apple.verify_id_token(token, nonce=None)

    assert (principal.issuer, principal.subject) == ("https://appleid.apple.com", "001234.abcdef")
    assert principal.login_key == "appleid.apple.com"
    assert principal.claims["email_verified"] is True
    assert principal.claims["is_private_email"] is False


def test_apple_boolean_claims_are_not_guessed(
    oidc_provider: DevIdentityProvider, apple: TokenProvider
) -> None:
    token = oidc_provider.mint_id_token(
        {"iss": "https://appleid.apple.com", "email_verified": "TRUE"}, audience=APPLE_BUNDLE
    )

    assert refused(lambda: apple.verify_id_token(token, nonce=None)).detail == (
        "malformed claim 'email_verified'"
    )


def test_cognito_user_pool_id_token_becomes_a_principal(
    oidc_provider: DevIdentityProvider, user_pool: TokenProvider
) -> None:
    token = oidc_provider.mint_id_token(
        {"iss": POOL_ISSUER, "token_use": "id", "cognito:username": "alice"},
        audience=POOL_CLIENT,
    )

    principal = user_pool.verify_id_token(token, nonce=None)

    assert (principal.issuer, principal.subject) == (POOL_ISSUER, ALICE_SUB)
    assert principal.login_key == f"cognito-idp.us-east-1.amazonaws.com/{POOL_ID}"
    assert principal.claims["cognito:username"] == "alice"


@pytest.mark.parametrize(
    ("claims", "omit", "detail"),
    [
        # An access token as Cognito issues it: client_id, no aud.
        (
            {"token_use": "access", "client_id": POOL_CLIENT},
            ("aud",),
            "missing required claim 'aud'",
        ),
        # Even with our aud, token_use decides.
        ({"token_use": "access"}, (), "token use not accepted"),
        ({}, (), "token use not accepted"),
    ],
    ids=["access-token", "access-token-with-aud", "no-token-use"],
)
def test_cognito_user_pool_refuses_anything_but_id_tokens(
    oidc_provider: DevIdentityProvider,
    user_pool: TokenProvider,
    claims: dict[str, Any],
    omit: tuple[str, ...],
    detail: str,
) -> None:
    token = oidc_provider.mint_id_token(
        {"iss": POOL_ISSUER, **claims}, audience=POOL_CLIENT, omit=omit
    )

    assert refused(lambda: user_pool.verify_id_token(token, nonce=None)).detail == detail


def test_an_id_token_for_one_provider_is_refused_by_another(
    oidc_provider: DevIdentityProvider,
    okta: TokenProvider,
    google: TokenProvider,
    apple: TokenProvider,
    user_pool: TokenProvider,
) -> None:
    # All four trust the same keys here, so only iss and aud tell their tokens apart.
    tokens = {
        "okta": oidc_provider.mint_id_token(audience=TEST_CLIENT_ID),
        "google": oidc_provider.mint_id_token(
            {"iss": "https://accounts.google.com"}, audience=GOOGLE_WEB
        ),
        "apple": oidc_provider.mint_id_token(
            {"iss": "https://appleid.apple.com"}, audience=APPLE_BUNDLE
        ),
        "pool": oidc_provider.mint_id_token(
            {"iss": POOL_ISSUER, "token_use": "id"}, audience=POOL_CLIENT
        ),
    }
    # Same audience, other issuer: Apple's iss on a token for our Google client.
    tokens["apple-iss-google-aud"] = oidc_provider.mint_id_token(
        {"iss": "https://appleid.apple.com"}, audience=GOOGLE_WEB
    )
    providers = {"okta": okta, "google": google, "apple": apple, "pool": user_pool}

    for owner, token in tokens.items():
        for name, provider in providers.items():
            if name == owner:
                assert provider.verify_id_token(token, nonce=None).provider == name
                continue
            error = refused(partial(provider.verify_id_token, token, nonce=None))
            assert error.code == "invalid_token"
            assert error.detail in ("issuer not accepted", "audience not accepted")


# -- Facebook ------------------------------------------------------------------------------


def facebook_provider(
    api: FacebookApi, *, timeouts: dict[str, float] | None = None, **overrides: Any
) -> TokenProvider:
    entry = {
        "name": "facebook",
        "kind": "facebook",
        "app_id": FACEBOOK_APP_ID,
        "app_secret": FACEBOOK_APP_SECRET,
        "debug_token_url": api.debug_token_url,
        "userinfo_url": f"{api.url}/me",
        **overrides,
    }
    return token_provider(entry, timeouts=timeouts)


def test_facebook_access_token_becomes_a_principal(facebook_api: FacebookApi) -> None:
    expires_at = int(time.time()) + 5000
    facebook_api.add_token(
        "EAAfb-ada",
        user_id="10228",
        expires_at=expires_at,
        profile={"name": "Ada Lovelace", "email": "ada@example.com", "birthday": "12/10/1815"},
    )
    facebook = facebook_provider(facebook_api)

    principal = facebook.verify_access_token("EAAfb-ada")

    assert principal == Principal(
        provider="facebook",
        issuer="https://www.facebook.com",
        subject="10228",
        claims={"sub": "10228", "name": "Ada Lovelace", "email": "ada@example.com"},
        login_key="graph.facebook.com",
        login_token="EAAfb-ada",
        token_expires_at=datetime.fromtimestamp(expires_at, UTC),
    )
    # debug_token was asked with this app's app access token; /me with the user's token as
    # a header (not in the URL) and the app secret proof.
    (inspection,) = facebook_api.requests_to("/debug_token")
    assert inspection.query == {
        "input_token": "EAAfb-ada",
        "access_token": f"{FACEBOOK_APP_ID}|{FACEBOOK_APP_SECRET}",
    }
    (me,) = facebook_api.requests_to("/me")
    assert me.headers["Authorization"] == "Bearer EAAfb-ada"
    assert "access_token" not in me.query
    assert me.query["fields"] == "id,name,email"
    assert (
        me.query["appsecret_proof"]
        == hmac.new(FACEBOOK_APP_SECRET.encode(), b"EAAfb-ada", hashlib.sha256).hexdigest()
    )


def test_facebook_token_that_never_expires(facebook_api: FacebookApi) -> None:
    facebook_api.add_token("EAAfb-forever", user_id="10229", expires_at=0)

    principal = facebook_provider(facebook_api).verify_access_token("EAAfb-forever")

    assert principal.subject == "10229"
    assert principal.token_expires_at is None
    assert principal.claims == {"sub": "10229"}


def test_facebook_token_given_to_another_app_is_refused(facebook_api: FacebookApi) -> None:
    facebook_api.add_token("EAAfb-other", user_id="10228", app_id="9999999999")

    error = refused(lambda: facebook_provider(facebook_api).verify_access_token("EAAfb-other"))

    assert (error.code, error.status) == ("invalid_token", 401)
    assert error.detail == "token was issued to another app"
    assert facebook_api.requests_to("/me") == []


@pytest.mark.parametrize(
    ("register", "detail"),
    [
        ({"is_valid": False}, "token is not valid"),
        ({"expires_at": 1_600_000_000}, "token is not valid"),
        (None, "token refused by the identity provider"),
    ],
    ids=["invalidated", "expired", "unknown"],
)
def test_facebook_invalid_expired_and_unknown_tokens_are_refused(
    facebook_api: FacebookApi, register: dict[str, Any] | None, detail: str
) -> None:
    if register is not None:
        facebook_api.add_token("EAAfb-bad", user_id="10228", **register)

    error = refused(lambda: facebook_provider(facebook_api).verify_access_token("EAAfb-bad"))

    assert (error.code, error.detail) == ("invalid_token", detail)
    assert_secret_free(error, "EAAfb-bad", FACEBOOK_APP_SECRET)


def test_facebook_expiry_is_checked_even_when_debug_token_says_valid(
    facebook_api: FacebookApi,
) -> None:
    facebook_api.add_token("EAAfb-stale", user_id="10228")
    # A Graph API answer that still says valid for a token past its expires_at.
    facebook_api.fault = Fault(
        status=200,
        body=(
            b'{"data": {"app_id": "%s", "type": "USER", "is_valid": true,'
            b' "expires_at": 1600000000, "user_id": "10228"}}' % FACEBOOK_APP_ID.encode()
        ),
    )

    error = refused(lambda: facebook_provider(facebook_api).verify_access_token("EAAfb-stale"))

    assert error.detail == "token expired"


def test_facebook_inspection_endpoint_down_is_upstream_unavailable(
    facebook_api: FacebookApi, closed_port: int
) -> None:
    facebook = facebook_provider(
        facebook_api, debug_token_url=f"http://127.0.0.1:{closed_port}/debug_token"
    )

    error = refused(lambda: facebook.verify_access_token("EAAfb-ada"), UpstreamUnavailable)

    assert (error.code, error.status) == ("upstream_unavailable", 503)
    assert_secret_free(error, "EAAfb-ada", FACEBOOK_APP_SECRET)


@pytest.mark.parametrize(
    ("fault", "detail"),
    [
        (Fault(status=500, body=b'{"error": {"code": 1}}'), "facebook: debug_token failed"),
        (Fault(status=503, body=b"<html>busy</html>"), "facebook: debug_token failed"),
        (Fault(status=200, body=b"<html>ok</html>"), "facebook: debug_token answer is not JSON"),
        (Fault(status=200, body=b"[1, 2]"), "facebook: debug_token answer is not a JSON object"),
        (
            Fault(status=200, body=b'{"pad": "' + b"x" * (1024 * 1024) + b'"}'),
            "facebook: debug_token answer too large",
        ),
        (Fault(status=302, body=b""), "facebook: debug_token failed"),
    ],
    ids=["500", "503-html", "not-json", "not-object", "over-1MiB", "redirect"],
)
def test_facebook_inspection_failures_are_upstream_errors(
    facebook_api: FacebookApi, fault: Fault, detail: str
) -> None:
    facebook_api.add_token("EAAfb-ada", user_id="10228")
    facebook_api.fault = fault

    error = refused(
        lambda: facebook_provider(facebook_api).verify_access_token("EAAfb-ada"), UpstreamError
    )

    assert (error.code, error.status, error.detail) == ("upstream_error", 502, detail)
    assert_secret_free(error, "EAAfb-ada", FACEBOOK_APP_SECRET)


def test_facebook_inspection_timeout_is_upstream_timeout(facebook_api: FacebookApi) -> None:
    facebook_api.add_token("EAAfb-ada", user_id="10228")
    facebook_api.fault = Fault(delay=2.0)
    facebook = facebook_provider(facebook_api, timeouts={"connect": 1.0, "read": 0.2})

    error = refused(lambda: facebook.verify_access_token("EAAfb-ada"), UpstreamTimeout)

    assert (error.code, error.status) == ("upstream_timeout", 504)
    assert_secret_free(error, "EAAfb-ada", FACEBOOK_APP_SECRET)


def test_facebook_wrong_app_secret_is_refused(facebook_api: FacebookApi) -> None:
    facebook_api.add_token("EAAfb-ada", user_id="10228")

    facebook = facebook_provider(facebook_api, app_secret="not-the-secret")

    assert refused(lambda: facebook.verify_access_token("EAAfb-ada")).code == "invalid_token"


# -- Login with Amazon -----------------------------------------------------------------------


def amazon_provider(api: AmazonApi, **overrides: Any) -> TokenProvider:
    return token_provider(
        {
            "name": "amazon",
            "kind": "amazon",
            "client_ids": [AMAZON_CLIENT_ID],
            "tokeninfo_url": api.tokeninfo_url,
            "userinfo_url": api.userinfo_url,
            **overrides,
        }
    )


def test_amazon_access_token_becomes_a_principal(amazon_api: AmazonApi) -> None:
    amazon_api.add_token(
        "Atza|ada",
        user_id="amzn1.account.ADA",
        expires_in=3000,
        profile={"name": "Ada Lovelace", "email": "ada@example.com", "postal_code": "98101"},
    )
    before = time.time()

    principal = amazon_provider(amazon_api).verify_access_token("Atza|ada")

    assert principal.provider == "amazon"
    assert principal.issuer == "https://www.amazon.com"
    assert principal.subject == "amzn1.account.ADA"
    assert principal.login_key == "www.amazon.com"
    assert principal.login_token == "Atza|ada"
    assert principal.claims == {
        "sub": "amzn1.account.ADA",
        "name": "Ada Lovelace",
        "email": "ada@example.com",
    }
    assert principal.token_expires_at is not None
    assert before + 3000 <= principal.token_expires_at.timestamp() <= time.time() + 3000
    (info,) = amazon_api.requests_to("/auth/o2/tokeninfo")
    assert info.query == {"access_token": "Atza|ada"}
    (profile,) = amazon_api.requests_to("/user/profile")
    assert profile.headers["Authorization"] == "Bearer Atza|ada"
    assert profile.query == {}


def test_amazon_cookies_are_not_carried_from_one_user_to_the_next(amazon_api: AmazonApi) -> None:
    amazon_api.add_token("Atza|ada", user_id="amzn1.account.ADA")
    amazon_api.add_token("Atza|bob", user_id="amzn1.account.BOB")
    amazon = amazon_provider(amazon_api)

    assert amazon.verify_access_token("Atza|ada").subject == "amzn1.account.ADA"
    assert amazon.verify_access_token("Atza|bob").subject == "amzn1.account.BOB"

    assert len(amazon_api.requests) == 4
    assert [r.headers.get("Cookie") for r in amazon_api.requests] == [None] * 4


def test_amazon_token_matched_by_its_application_id(amazon_api: AmazonApi) -> None:
    amazon_api.add_token(
        "Atza|ios", user_id="amzn1.account.ADA", aud="amzn1.application-oa2-client.ios"
    )

    amazon = amazon_provider(amazon_api, client_ids=[AMAZON_APP_ID])

    assert amazon.verify_access_token("Atza|ios").subject == "amzn1.account.ADA"


def test_amazon_token_given_to_another_app_is_refused(amazon_api: AmazonApi) -> None:
    amazon_api.add_token(
        "Atza|other",
        user_id="amzn1.account.ADA",
        aud="amzn1.application-oa2-client.someone-else",
        app_id="amzn1.application.someone-else",
    )

    error = refused(lambda: amazon_provider(amazon_api).verify_access_token("Atza|other"))

    assert (error.code, error.status) == ("invalid_token", 401)
    assert error.detail == "token was issued to another app"
    assert amazon_api.requests_to("/user/profile") == []


@pytest.mark.parametrize("expires_in", [None, 0], ids=["unknown", "expired"])
def test_amazon_unknown_or_expired_token_is_refused(
    amazon_api: AmazonApi, expires_in: int | None
) -> None:
    if expires_in is not None:
        amazon_api.add_token("Atza|old", user_id="amzn1.account.ADA", expires_in=expires_in)

    error = refused(lambda: amazon_provider(amazon_api).verify_access_token("Atza|old"))

    assert (error.code, error.status) == ("invalid_token", 401)
    assert_secret_free(error, "Atza|old")


def test_amazon_tokeninfo_down_is_upstream_unavailable(
    amazon_api: AmazonApi, closed_port: int
) -> None:
    amazon = amazon_provider(
        amazon_api, tokeninfo_url=f"http://127.0.0.1:{closed_port}/auth/o2/tokeninfo"
    )

    error = refused(lambda: amazon.verify_access_token("Atza|ada"), UpstreamUnavailable)

    assert (error.code, error.status) == ("upstream_unavailable", 503)
    assert_secret_free(error, "Atza|ada")


def test_amazon_profile_of_another_user_is_an_upstream_error(amazon_api: AmazonApi) -> None:
    amazon_api.add_token(
        "Atza|mixed", user_id="amzn1.account.ADA", profile={"user_id": "amzn1.account.BOB"}
    )

    error = refused(
        lambda: amazon_provider(amazon_api).verify_access_token("Atza|mixed"), UpstreamError
    )

    assert error.detail == "amazon: profile does not match the token"
