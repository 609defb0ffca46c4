"""Provider construction from the config: the kind registry, Logins keys, issuer spellings
and claim normalisation. Nothing here opens a connection."""

from __future__ import annotations

from typing import Any

import pytest

from identity.config.document import BrokerConfig
from identity.errors import ConfigError, InvalidToken
from identity.providers.amazon import AmazonTokenProvider
from identity.providers.apple import normalise_apple_claims
from identity.providers.base import TokenProvider
from identity.providers.cognito_user_pool import cognito_user_pool_login_key
from identity.providers.facebook import FacebookTokenProvider
from identity.providers.google import google_issuers
from identity.providers.id_token import IdTokenProvider, login_key_for_issuer
from identity.providers.oidc import ALGORITHMS as OIDC_ALGORITHMS
from identity.providers.oidc import OidcConfig
from tests.fixtures import apps
from tests.fixtures.providers import built_providers

# Reachable by nothing: a bug that sent a request would fail, not leak.
NOWHERE = "http://127.0.0.1:9"


def broker_config(*providers: dict[str, Any], region: str = "us-east-1") -> BrokerConfig:
    """A valid config holding ``providers`` (each gets exchange sts and its own user-id
    prefix unless given)."""
    entries = [
        {"exchange": "sts", "map": {"user_id": f"{p['name']}-{{sub}}"}, **p} for p in providers
    ]
    return apps.broker_config(aws__region=region, providers=entries)


EVERY_TOKEN_KIND = (
    {"name": "okta", "kind": "oidc", "issuer": "https://example.okta.com/oauth2/default",
     "client_id": "0oa1example"},
    {"name": "google", "kind": "google", "client_ids": ["1234-web.apps.googleusercontent.com"]},
    {"name": "apple", "kind": "apple", "client_ids": ["com.example.chat"]},
    {"name": "facebook", "kind": "facebook", "app_id": "1234567890", "app_secret": "s3cret",
     "debug_token_url": f"{NOWHERE}/debug_token"},
    {"name": "amazon", "kind": "amazon", "client_ids": ["amzn1.application-oa2-client.x"],
     "tokeninfo_url": f"{NOWHERE}/auth/o2/tokeninfo"},
    {"name": "pool", "kind": "cognito_user_pool", "user_pool_id": "eu-west-1_AbC123",
     "client_ids": ["5example"]},
)  # fmt: skip


def test_registry_builds_every_token_kind_keyed_by_name() -> None:
    providers = built_providers(broker_config(*EVERY_TOKEN_KIND)).token

    assert sorted(providers) == ["amazon", "apple", "facebook", "google", "okta", "pool"]
    for name, provider in providers.items():
        assert isinstance(provider, TokenProvider)
        assert provider.name == name
    assert {name: p.kind for name, p in providers.items()} == {
        "okta": "oidc",
        "google": "google",
        "apple": "apple",
        "facebook": "facebook",
        "amazon": "amazon",
        "pool": "cognito_user_pool",
    }
    id_token_kinds = {n for n, p in providers.items() if p.accepts_id_token}
    access_token_kinds = {n for n, p in providers.items() if p.accepts_access_token}
    assert id_token_kinds == {"okta", "google", "apple", "pool"}
    assert access_token_kinds == {"facebook", "amazon"}


def test_registry_leaves_saml_and_guest_providers_to_their_modules() -> None:
    config = broker_config(
        {"name": "okta", "kind": "oidc", "issuer": "https://idp.example.com", "client_id": "c"},
        {
            "name": "corp",
            "kind": "saml",
            "idp_metadata_url": "https://idp.example.com/saml/metadata",
            "sp_entity_id": "https://auth.example.chat/v1/saml/corp/metadata",
            "map": {"user_id": "corp-{name_id}"},
        },
        {
            "name": "guests",
            "kind": "guest",
            "allow_open_guests": True,
            "map": {"user_id": "guest-{random}"},
        },
    )

    assert list(built_providers(config).token) == ["okta"]


def test_registry_refuses_an_unknown_kind_naming_its_path() -> None:
    config = broker_config(
        {"name": "okta", "kind": "oidc", "issuer": "https://idp.example.com", "client_id": "c"}
    )
    # The config model refuses unknown kinds itself; the registry must not rely on that.
    ldap = OidcConfig.model_construct(name="dir", kind="ldap")
    config = config.model_copy(update={"providers": (*config.providers, ldap)})

    with pytest.raises(ConfigError) as raised:
        built_providers(config)

    assert raised.value.problems == ["providers[1].kind: unknown kind 'ldap'"]


def test_facebook_cannot_require_a_nonce() -> None:
    with pytest.raises(ConfigError) as raised:
        broker_config({**EVERY_TOKEN_KIND[3], "require_nonce": True})

    assert raised.value.problems == [
        "providers[0].require_nonce: a facebook provider has no id token to carry a nonce"
    ]


@pytest.mark.parametrize(
    ("issuer", "login_key"),
    [
        ("https://example.okta.com/oauth2/default", "example.okta.com/oauth2/default"),
        ("https://tenant.auth0.com/", "tenant.auth0.com"),
        ("http://127.0.0.1:8080", "127.0.0.1:8080"),
        ("https://accounts.google.com", "accounts.google.com"),
    ],
)
def test_generic_login_key_is_the_issuer_without_scheme(issuer: str, login_key: str) -> None:
    assert login_key_for_issuer(issuer) == login_key


def test_login_keys_of_each_kind() -> None:
    providers = built_providers(broker_config(*EVERY_TOKEN_KIND)).token

    keys = {name: getattr(p, "login_key", None) for name, p in providers.items()}
    assert keys["okta"] == "example.okta.com/oauth2/default"
    assert keys["google"] == "accounts.google.com"
    assert keys["apple"] == "appleid.apple.com"
    assert keys["pool"] == "cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC123"


def test_user_pool_login_key_names_the_pools_region_not_the_brokers() -> None:
    pool = {"name": "pool", "kind": "cognito_user_pool", "user_pool_id": "ap-south-1_Zz9",
            "client_ids": ["c"]}  # fmt: skip
    provider = built_providers(broker_config(pool, region="us-east-1")).token["pool"]

    assert isinstance(provider, IdTokenProvider)
    assert provider.login_key == "cognito-idp.ap-south-1.amazonaws.com/ap-south-1_Zz9"
    assert provider.policy.issuers == (
        "https://cognito-idp.ap-south-1.amazonaws.com/ap-south-1_Zz9",
    )
    assert provider.policy.allowed_token_use == "id"
    assert cognito_user_pool_login_key("us-west-2", "us-west-2_A") == (
        "cognito-idp.us-west-2.amazonaws.com/us-west-2_A"
    )


def test_google_accepts_its_issuer_with_and_without_https() -> None:
    assert google_issuers("https://accounts.google.com") == (
        "https://accounts.google.com",
        "accounts.google.com",
    )
    google = built_providers(broker_config(EVERY_TOKEN_KIND[1])).token["google"]
    assert isinstance(google, IdTokenProvider)
    assert google.policy.issuers == ("https://accounts.google.com", "accounts.google.com")
    assert google.policy.audiences == ("1234-web.apps.googleusercontent.com",)


def test_oidc_audiences_default_to_the_client_id_and_algorithms_follow_discovery() -> None:
    okta, listed = (
        built_providers(
            broker_config(
                {"name": "okta", "kind": "oidc", "issuer": "https://idp.example.com",
                 "client_id": "web"},
                {"name": "okta2", "kind": "oidc", "issuer": "https://idp2.example.com",
                 "client_id": "web", "audiences": ["web", "ios"], "leeway": 5,
                 "require_nonce": True, "algorithms": ["ES256", "EdDSA"]},
            )
        ).token[name]
        for name in ("okta", "okta2")
    )  # fmt: skip

    assert isinstance(okta, IdTokenProvider) and isinstance(listed, IdTokenProvider)
    assert okta.policy.audiences == ("web",)
    assert okta.policy.issuers == ("https://idp.example.com",)
    # Every public-key algorithm, narrowed to the advertised ones when discovery is read.
    assert okta.policy.algorithms == OIDC_ALGORITHMS
    assert okta.keys.algorithms == frozenset(OIDC_ALGORITHMS)
    assert listed.policy.algorithms == ("ES256", "EdDSA")
    assert listed.keys.algorithms == {"ES256", "EdDSA"}
    assert (okta.policy.leeway, okta.policy.require_nonce) == (60, False)
    assert listed.policy.audiences == ("web", "ios")
    assert (listed.policy.leeway, listed.policy.require_nonce) == (5, True)


def test_apple_string_booleans_become_booleans() -> None:
    claims = {"sub": "001", "email_verified": "true", "is_private_email": "false", "x": "true"}

    normalised = normalise_apple_claims(claims)

    assert normalised["email_verified"] is True
    assert normalised["is_private_email"] is False
    assert normalised["x"] == "true"
    assert normalise_apple_claims({"sub": "1", "email_verified": False}) == {
        "sub": "1",
        "email_verified": False,
    }
    assert normalise_apple_claims({"sub": "1"}) == {"sub": "1"}


@pytest.mark.parametrize("value", ["True", "1", "yes", "", 1, 0, None, ["true"]])
def test_apple_boolean_claims_are_normalised_strictly(value: object) -> None:
    with pytest.raises(InvalidToken) as raised:
        normalise_apple_claims({"sub": "001", "email_verified": value})
    assert raised.value.detail == "malformed claim 'email_verified'"


def test_each_provider_refuses_the_other_token_type() -> None:
    providers = built_providers(broker_config(*EVERY_TOKEN_KIND)).token

    with pytest.raises(InvalidToken, match="takes an id_token"):
        providers["okta"].verify_access_token("an-access-token")
    with pytest.raises(InvalidToken, match="takes an access_token"):
        providers["facebook"].verify_id_token("a.b.c", nonce=None)


@pytest.mark.parametrize(
    "token",
    ["", "has space", "tab\there", "line\nbreak", "x" * 4097, "caf\u00e9", "nul\x00"],
    ids=["empty", "space", "tab", "newline", "too-long", "non-ascii", "nul"],
)
def test_malformed_access_tokens_are_refused_before_any_request(token: str) -> None:
    providers = built_providers(broker_config(*EVERY_TOKEN_KIND)).token
    facebook, amazon = providers["facebook"], providers["amazon"]
    assert isinstance(facebook, FacebookTokenProvider)
    assert isinstance(amazon, AmazonTokenProvider)

    for provider in (facebook, amazon):
        with pytest.raises(InvalidToken) as raised:
            provider.verify_access_token(token)
        assert raised.value.detail == "malformed token"


def test_facebook_provider_repr_hides_the_app_secret() -> None:
    facebook = built_providers(broker_config(EVERY_TOKEN_KIND[3])).token["facebook"]

    assert "s3cret" not in repr(facebook)
