"""The broker's configuration: what loads, what is refused, and how problems are reported."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from identity.config.document import (
    BrokerConfig,
    build_config,
    load_config,
    parse_config,
)
from identity.config.models import (
    AwsConfig,
    ChimeConfig,
    CognitoConfig,
    MapConfig,
    ServiceConfig,
    StsConfig,
    Timeouts,
)
from identity.errors import ConfigError, UnmappableIdentity
from identity.mapping import build_mappers
from identity.models import Principal
from identity.providers.google import GoogleConfig
from identity.providers.guest import GuestConfig, InviteConfig
from identity.providers.oidc import OidcConfig
from identity.providers.saml_config import SamlConfig
from tests.fixtures.configs import REMOVE, provider_dict, valid_config_dict

REPO = Path(__file__).resolve().parents[2]

# One valid production config; every broken case below is this text with a small edit,
# so the line numbers in the expected messages are this text's.
BASE = textwrap.dedent("""\
    mode: production
    aws:
      region: us-east-1
      cognito:
        identity_pool_id: us-east-1:11111111-2222-3333-4444-555555555555
        developer_provider_name: login.example.chat
      sts:
        role_arn: arn:aws:iam::111122223333:role/ChimeUser
    chime:
      app_instance_arn: arn:aws:chime:us-east-1:111122223333:app-instance/abcd-1234
    service:
      public_url: https://auth.example.chat
      secret_key: ${env:BROKER_SECRET_KEY}
      allowed_origins: [https://app.example.chat]
      allowed_return_to: [https://app.example.chat/]
    store: memory://
    providers:
      - name: okta
        kind: oidc
        issuer: https://example.okta.com
        client_id: spa
        exchange: cognito_developer
        map:
          user_id: okta-{sub}
          tags: {department: "{dept}"}
      - name: google
        kind: google
        client_ids: [web.apps.googleusercontent.com]
        exchange: cognito
      - name: guests
        kind: guest
        exchange: sts
        allow_open_guests: true
    """)
ENV = {"BROKER_SECRET_KEY": "k" * 40}
GOOGLE = """\
  - name: google
    kind: google
    client_ids: [web.apps.googleusercontent.com]
    exchange: cognito
"""
SHARE = "(set allow_shared_user_ids on both to share ids deliberately)"


def variant(*edits: tuple[str, str]) -> str:
    """BASE with each ``(old, new)`` applied; ``old`` must occur exactly once."""
    text = BASE
    for old, new in edits:
        assert text.count(old) == 1, f"{old!r} is not unique in BASE"
        text = text.replace(old, new)
    return text


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env=ENV if env is None else env)
    return caught.value.problems


def test_base_is_valid() -> None:
    config = parse_config(BASE, env=ENV)
    assert [p.name for p in config.providers] == ["okta", "google", "guests"]
    assert config.service.secret_key is not None
    assert config.service.secret_key.get_secret_value() == "k" * 40


BROKEN = [
    pytest.param(
        variant(("  region: us-east-1", "  region: [us-east-1")),
        ["<config> (line 4): expected ',' or ']', but got ':'"],
        id="yaml-syntax-flow",
    ),
    pytest.param(
        variant(("mode: production", "mode: production: x")),
        ["<config> (line 1): mapping values are not allowed here"],
        id="yaml-syntax-mapping",
    ),
    pytest.param(
        variant(("store: memory://", "store: !!python/object/apply:os.system [echo hi]")),
        ["<config> (line 16): unsupported YAML tag '!!python/object/apply:os.system'"],
        id="python-tag",
    ),
    pytest.param(
        variant(("store: memory://", "store: !vault secret/store")),
        ["<config> (line 16): unsupported YAML tag '!vault'"],
        id="custom-tag",
    ),
    pytest.param(
        variant(("store: memory://", "store: memory://\nstore: memory://")),
        ["<config> (line 17): duplicate key 'store'"],
        id="duplicate-key",
    ),
    pytest.param(
        "- mode\n- aws\n",
        ["<config>: the configuration must be a mapping of keys to values"],
        id="not-a-mapping",
    ),
    pytest.param(
        "",
        ["<config>: the configuration must be a mapping of keys to values"],
        id="empty-file",
    ),
    pytest.param(
        variant(("providers:\n", "provders:\n")),
        ["provders (line 17): unknown key (did you mean 'providers'?)", "providers: required"],
        id="top-level-typo",
    ),
    pytest.param(
        variant(("  region: us-east-1", "  regoin: us-east-1")),
        [
            "aws.region (line 2): required",
            "aws.regoin (line 3): unknown key (did you mean 'region'?)",
        ],
        id="nested-typo",
    ),
    pytest.param(
        variant(("    issuer: https://example.okta.com", "    isuer: https://example.okta.com")),
        [
            "providers[0].issuer (line 18): required",
            "providers[0].isuer (line 20): unknown key for kind 'oidc' (did you mean 'issuer'?)",
        ],
        id="provider-typo",
    ),
    pytest.param(
        variant(
            (
                "    client_ids: [web.apps.googleusercontent.com]",
                "    client_id: web.apps.googleusercontent.com",
            )
        ),
        [
            "providers[1].client_ids (line 26): required",
            "providers[1].client_id (line 28): unknown key for kind 'google' "
            "(did you mean 'client_ids'?)",
        ],
        id="key-of-another-kind",
    ),
    pytest.param(
        variant(("  sts:\n", "  sts:\n    duration_seconds: soon\n")),
        ["aws.sts.duration_seconds (line 8): expected a whole number, got 'soon'"],
        id="wrong-type-int",
    ),
    pytest.param(
        variant(("chime:\n", "chime:\n  provision_users: maybe\n")),
        ["chime.provision_users (line 10): expected true or false, got 'maybe'"],
        id="wrong-type-bool",
    ),
    pytest.param(
        variant(
            (
                "  allowed_origins: [https://app.example.chat]",
                "  allowed_origins: https://app.example.chat",
            )
        ),
        ["service.allowed_origins (line 14): expected a list, got 'https://app.example.chat'"],
        id="wrong-type-list",
    ),
    pytest.param(
        variant(("    exchange: cognito\n", "    exchange: cognito\n    map:\n")),
        ["providers[1].map (line 30): expected a mapping, got nothing (null)"],
        id="wrong-type-null-mapping",
    ),
    pytest.param(
        variant(("mode: production", "mode: prod")),
        ["mode (line 1): expected 'production' or 'demo', got 'prod'"],
        id="mode",
    ),
    pytest.param(
        variant(("${env:BROKER_SECRET_KEY}", "${BROKER_SECRET_KEY}")),
        [
            "service.secret_key (line 13): '${BROKER_SECRET_KEY}' is not a reference: "
            "write ${env:NAME}, ${ssm:/PATH/NAME} or ${secretsmanager:NAME-OR-ARN[#KEY]} "
            "(or $${ for a literal ${)"
        ],
        id="env-reference-syntax",
    ),
    pytest.param(
        variant(("  sts:\n", "  sts:\n    duration_seconds: 600\n")),
        ["aws.sts.duration_seconds (line 8): must be at least 900"],
        id="sts-duration-range",
    ),
    pytest.param(
        variant(("  sts:\n", "  timeouts: {connect: 0}\n  sts:\n")),
        ["aws.timeouts.connect (line 7): must be more than 0"],
        id="timeout-range",
    ),
    pytest.param(
        variant(("  public_url:", "  session_lifetime: 8 hours\n  public_url:")),
        [
            "service.session_lifetime (line 12): expected a duration such as "
            "'8h', '15m', '30s', '1d' or a number of seconds"
        ],
        id="duration-syntax",
    ),
    pytest.param(
        variant(("  public_url:", "  session_lifetime: 10s\n  public_url:")),
        ["service.session_lifetime (line 12): must be from 1m to 365d"],
        id="duration-range",
    ),
    pytest.param(
        variant(("  public_url:", "  max_body: 64 kilobytes\n  public_url:")),
        [
            "service.max_body (line 12): expected a size such as '64KiB', '1MiB' "
            "or a number of bytes"
        ],
        id="size-syntax",
    ),
    pytest.param(
        variant(("app-instance/abcd-1234", "app-instances/abcd-1234")),
        [
            "chime.app_instance_arn (line 10): "
            "'arn:aws:chime:us-east-1:111122223333:app-instances/abcd-1234' is not an app "
            "instance ARN (arn:aws:chime:REGION:ACCOUNT:app-instance/ID)"
        ],
        id="app-instance-arn",
    ),
    pytest.param(
        variant(("arn:aws:chime:us-east-1", "arn:aws:chime:eu-west-1")),
        [
            "chime.app_instance_arn (line 10): the app instance is in eu-west-1 "
            "but aws.region is us-east-1"
        ],
        id="app-instance-region",
    ),
    pytest.param(
        variant(("identity_pool_id: us-east-1:", "identity_pool_id: eu-west-1:")),
        [
            "aws.cognito.identity_pool_id (line 5): the pool is in eu-west-1 "
            "but aws.region is us-east-1"
        ],
        id="identity-pool-region",
    ),
    pytest.param(
        variant(("role/ChimeUser", "user/ChimeUser")),
        [
            "aws.sts.role_arn (line 8): 'arn:aws:iam::111122223333:user/ChimeUser' is not "
            "an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)"
        ],
        id="role-arn",
    ),
    pytest.param(
        variant(("issuer: https://example.okta.com", "issuer: http://example.okta.com")),
        [
            "providers[0].issuer (line 20): must use https "
            "(plain http only on 127.0.0.1, ::1 or localhost)"
        ],
        id="issuer-https",
    ),
    pytest.param(
        variant(("public_url: https://auth.example.chat", "public_url: http://auth.example.chat")),
        [
            "service.public_url (line 12): must use https "
            "(plain http only on 127.0.0.1, ::1 or localhost)"
        ],
        id="public-url-https",
    ),
    pytest.param(
        variant(
            (
                "    allow_open_guests: true\n",
                "    invite: {issuer: app, audience: broker, jwks_url: http://app.example.chat/k}\n",
            )
        ),
        [
            "providers[2].invite.jwks_url (line 33): must use https "
            "(plain http only on 127.0.0.1, ::1 or localhost)"
        ],
        id="invite-jwks-https",
    ),
    pytest.param(
        variant(("  secret_key: ${env:BROKER_SECRET_KEY}\n", "")),
        ["service.secret_key (line 11): required outside mode demo (at least 32 characters)"],
        id="secret-key-required",
    ),
    pytest.param(
        variant(("${env:BROKER_SECRET_KEY}", "too-short")),
        ["service.secret_key (line 13): must be at least 32 characters"],
        id="secret-key-short",
    ),
    pytest.param(
        variant(
            (
                "  secret_key: ${env:BROKER_SECRET_KEY}\n",
                "  secret_key:\n    - ${env:BROKER_SECRET_KEY}\n    - too-short\n",
            )
        ),
        ["service.secret_key[1] (line 15): must be at least 32 characters"],
        id="secret-key-list-short",
    ),
    pytest.param(
        variant(
            (
                "  cognito:\n"
                "    identity_pool_id: us-east-1:11111111-2222-3333-4444-555555555555\n"
                "    developer_provider_name: login.example.chat\n",
                "",
            )
        ),
        [
            "providers[0].exchange (line 19): exchange: cognito_developer needs aws.cognito "
            "(identity_pool_id and developer_provider_name)",
            "providers[1].exchange (line 26): exchange: cognito needs aws.cognito.identity_pool_id",
        ],
        id="cognito-needs-pool",
    ),
    pytest.param(
        variant(("    developer_provider_name: login.example.chat\n", "")),
        [
            "providers[0].exchange (line 21): exchange: cognito_developer needs "
            "aws.cognito.developer_provider_name"
        ],
        id="developer-provider-name",
    ),
    pytest.param(
        variant(("  sts:\n    role_arn: arn:aws:iam::111122223333:role/ChimeUser\n", "")),
        [
            "providers[2].exchange (line 30): exchange: sts needs a role: "
            "set role_arn here or aws.sts.role_arn"
        ],
        id="sts-needs-role",
    ),
    pytest.param(
        variant(
            (
                "  - name: guests\n",
                "  - name: corp\n    kind: saml\n    idp_metadata_url: https://idp.example.com/md\n"
                "    sp_entity_id: urn:corp\n    exchange: cognito\n"
                '    map: {user_id: "corp-{name_id}"}\n'
                "  - name: guests\n",
            )
        ),
        [
            "providers[2].exchange (line 34): SAML providers cannot use exchange: cognito "
            "(the identity pool cannot verify them); use cognito_developer or sts"
        ],
        id="saml-not-cognito",
    ),
    pytest.param(
        variant(("    exchange: sts\n    allow_open", "    exchange: cognito\n    allow_open")),
        [
            "providers[2].exchange (line 32): guest providers cannot use exchange: cognito "
            "(the identity pool cannot verify them); use cognito_developer or sts"
        ],
        id="guest-not-cognito",
    ),
    pytest.param(
        variant(
            ("    exchange: cognito\n", '    exchange: cognito\n    map: {user_id: "g-{sub}"}\n')
        ),
        [
            "providers[1].map.user_id (line 30): with exchange: cognito the identity pool maps "
            "the claim to chime.user_tag, so user_id must be one bare top-level claim such as "
            "'{sub}'"
        ],
        id="cognito-bare-claim",
    ),
    pytest.param(
        variant(
            (
                "    exchange: cognito\n",
                "    exchange: cognito\n    map: {require: {hd: example.com}}\n",
            )
        ),
        [
            "providers[1].map.require (line 30): cannot be enforced with exchange: cognito "
            "(any app holding the token can call Cognito itself); use cognito_developer or sts"
        ],
        id="cognito-no-require",
    ),
    pytest.param(
        variant(("user_id: okta-{sub}", "user_id: okta-{email|lower}")),
        [
            "providers[0].map.user_id (line 24): 'okta-{email|lower}' reads email, which users "
            "or admins can change; identity is (issuer, sub): use '{sub}' (or "
            "allow_mutable_user_id: true when nothing stable exists)",
            "providers[0].map.user_id (line 24): 'okta-{email|lower}' uses lower, which can give "
            "two users one id (case folding, or sha256:N with N under 16)",
        ],
        id="mutable-claims",
    ),
    pytest.param(
        variant(("user_id: okta-{sub}", "user_id: okta-user")),
        [
            "providers[0].map.user_id (line 24): 'okta-user' reads no claim: "
            "every user would get the same id"
        ],
        id="constant-user-id",
    ),
    pytest.param(
        variant(("user_id: okta-{sub}", "user_id: okta/{sub}")),
        [
            "providers[0].map.user_id (line 24): 'okta/{sub}' has '/', which a Chime user id "
            "cannot hold (ASCII letters, digits and : - _ . @ only)"
        ],
        id="user-id-literal",
    ),
    pytest.param(
        variant(("user_id: okta-{sub}", "user_id: okta-{sub|upper}")),
        [
            "providers[0].map.user_id (line 24): '{sub|upper}' uses unknown filter 'upper' "
            "(known: lower, sha256:N)"
        ],
        id="unknown-filter",
    ),
    pytest.param(
        variant(("user_id: okta-{sub}", "user_id: okta-{random}")),
        ["providers[0].map.user_id (line 24): '{random}' is only available to guest providers"],
        id="random-outside-guests",
    ),
    pytest.param(
        variant(("  - name: okta", "  - name: Okta_Corp")),
        [
            "providers[0].name (line 18): 'Okta_Corp' must be 1 to 32 characters of a-z, 0-9 "
            "and '-' (it is used in URLs)"
        ],
        id="provider-name",
    ),
    pytest.param(
        variant(("  - name: guests", "  - name: okta")),
        ["providers[2].name (line 30): 'okta' is already the name of providers[0]"],
        id="duplicate-provider-name",
    ),
    pytest.param(
        variant(("    kind: oidc", "    kind: okta")),
        [
            "providers[0].kind (line 19): unknown kind 'okta'; expected one of oidc, google, "
            "apple, facebook, amazon, cognito_user_pool, saml, guest"
        ],
        id="unknown-kind",
    ),
    pytest.param(
        variant(("    kind: oidc\n", "")),
        ["providers[0].kind (line 18): required"],
        id="missing-kind",
    ),
    pytest.param(
        variant(
            (
                "    exchange: cognito\n",
                '    exchange: cognito_developer\n    map: {user_id: "okta-{sub}"}\n',
            )
        ),
        [
            "providers[1].map.user_id (line 30): user id prefix 'okta-' overlaps 'okta-', the "
            "prefix of provider 'okta': prefixes must be distinct and none may start another "
            f"{SHARE}"
        ],
        id="namespace-same-prefix",
    ),
    pytest.param(
        variant(
            (
                "    exchange: cognito\n",
                '    exchange: cognito_developer\n    map: {user_id: "OKTA-g-{sub}"}\n',
            )
        ),
        [
            "providers[1].map.user_id (line 30): user id prefix 'OKTA-g-' overlaps 'okta-', the "
            "prefix of provider 'okta': prefixes must be distinct and none may start another "
            f"{SHARE}"
        ],
        id="namespace-nested-prefix",
    ),
    pytest.param(
        variant(("user_id: okta-{sub}", 'user_id: "{sub|sha256:32}"')),
        [
            "providers[1].map.user_id (line 26): has no user id prefix, like provider 'okta': "
            f"at most one provider may go without one {SHARE}"
        ],
        id="namespace-two-unprefixed",
    ),
    pytest.param(
        variant(('tags: {department: "{dept}"}', "tags: {" + "k" * 129 + ': "{dept}"}')),
        [f"providers[0].map.tags.{'k' * 129} (line 25): tag key is longer than 128 characters"],
        id="tag-key-length",
    ),
    pytest.param(
        variant(('tags: {department: "{dept}"}', 'tags: {My_Applications_User_Id: "{dept}"}')),
        [
            "providers[0].map.tags.My_Applications_User_Id (line 25): is chime.user_tag, "
            "which the broker sets to the user id"
        ],
        id="tag-key-is-user-tag",
    ),
    pytest.param(
        variant(('tags: {department: "{dept}"}', 'tags: {"aws:team": "{dept}"}')),
        [
            "providers[0].map.tags['aws:team'] (line 25): tag key 'aws:team' uses the reserved "
            "prefix 'aws:'"
        ],
        id="tag-key-reserved",
    ),
    pytest.param(
        variant(
            (
                'tags: {department: "{dept}"}',
                "tags: {" + ", ".join(f"t{i}: x" for i in range(50)) + "}",
            )
        ),
        [
            "providers[0].map.tags (line 25): 50 tags plus chime.user_tag is more than the 50 STS "
            "allows"
        ],
        id="too-many-tags",
    ),
    pytest.param(
        variant(('tags: {department: "{dept}"}', 'tags: {team: "a*b"}')),
        [
            "providers[0].map.tags.team (line 25): 'a*b' is not a valid STS tag value (letters, "
            "digits, spaces and _ . : / = + - @; at most 256 characters)"
        ],
        id="static-tag-value",
    ),
    pytest.param(
        variant(('tags: {department: "{dept}"}', 'tags: {on: "{dept}"}')),
        ["providers[0].map.tags.True (line 25): key True is not a string: quote it"],
        id="yaml-boolean-key",
    ),
    pytest.param(
        variant(('tags: {department: "{dept}"}', "require: {groups: {one_of: [chat]}}")),
        [
            "providers[0].map.require.groups (line 25): unknown condition 'one_of'; "
            "use any_of or all_of"
        ],
        id="require-condition",
    ),
    pytest.param(
        variant(("store: memory://", "store: postgres://db/broker")),
        [
            "store (line 16): unknown store URL scheme 'postgres': expected one of memory://, "
            "sqlite://, redis://, rediss://, dynamodb://"
        ],
        id="store-scheme",
    ),
    pytest.param(
        variant(("store: memory://", "store: sqlite://broker.db")),
        [
            "store (line 16): sqlite store URL has a host ('broker.db'); use "
            "sqlite:///relative/path.db or sqlite:////absolute/path.db"
        ],
        id="store-sqlite-slashes",
    ),
    pytest.param(
        BASE[: BASE.index("providers:")] + "providers: []\n",
        ["providers (line 17): lists no provider: a broker without providers signs nobody in"],
        id="no-providers",
    ),
    pytest.param(
        variant(
            ("mode: production", "mode: demo"),
            ("public_url: https://auth.example.chat", "public_url: http://127.0.0.1:8000"),
            (GOOGLE, ""),
        ),
        ["providers[0].issuer (line 20): mode demo talks to loopback hosts only"],
        id="demo-issuer-loopback",
    ),
    pytest.param(
        variant(
            ("mode: production", "mode: demo"),
            ("issuer: https://example.okta.com", "issuer: http://localhost:9000"),
            (GOOGLE, ""),
        ),
        [
            "service.public_url (line 12): mode demo runs on loopback only: "
            "use http://127.0.0.1:PORT"
        ],
        id="demo-public-url-loopback",
    ),
    pytest.param(
        variant(
            (
                "allowed_origins: [https://app.example.chat]",
                "allowed_origins: [https://app.example.chat/]",
            )
        ),
        [
            "service.allowed_origins[0] (line 14): an origin has no path: write 'https://app.example.chat'"
        ],
        id="origin-path",
    ),
    pytest.param(
        variant(("allowed_origins: [https://app.example.chat]", "allowed_origins: ['null']")),
        [
            "service.allowed_origins[0] (line 14): 'null' is not an origin: "
            "list each allowed origin exactly"
        ],
        id="origin-null",
    ),
    pytest.param(
        variant(
            (
                "allowed_return_to: [https://app.example.chat/]",
                "allowed_return_to: [https://app.example.chat]",
            )
        ),
        [
            "service.allowed_return_to[0] (line 15): needs a path after the origin, such as "
            "'https://app.example.chat/' (without one it would also match other hosts)"
        ],
        id="return-to-needs-path",
    ),
    pytest.param(
        variant(
            (
                "allowed_return_to: [https://app.example.chat/]",
                "allowed_return_to: [myapp:/cb, 'javascript:alert(1)']",
            )
        ),
        [
            "service.allowed_return_to[0] (line 15): a native app's custom scheme must be a "
            "reverse domain name such as 'com.example.app' (RFC 8252, 7.1)",
            "service.allowed_return_to[1] (line 15): the javascript: scheme is never a safe "
            "place to return to",
        ],
        id="return-to-schemes",
    ),
    pytest.param(
        variant(
            (
                "  allowed_return_to: [https://app.example.chat/]\n",
                "  allowed_return_to: [https://app.example.chat/]\n"
                "  default_return_to: https://evil.example/\n",
            )
        ),
        ["service.default_return_to (line 16): is not covered by service.allowed_return_to"],
        id="default-return-to",
    ),
    pytest.param(
        variant(("  public_url:", '  cookie_name: "a b"\n  public_url:')),
        ["service.cookie_name (line 12): 'a b' is not a valid cookie name"],
        id="cookie-name",
    ),
    pytest.param(
        variant(("    allow_open_guests: true\n", "")),
        [
            "providers[2].invite (line 30): required outside mode demo, "
            "unless allow_open_guests: true"
        ],
        id="guest-invite-required",
    ),
    pytest.param(
        variant(
            (
                "    allow_open_guests: true\n",
                "    invite: {issuer: app, audience: broker, jwks_url: https://app.example.chat/k,"
                " shared_secret: " + "s" * 40 + "}\n",
            )
        ),
        ["providers[2].invite (line 33): needs exactly one of jwks_url or shared_secret"],
        id="guest-invite-keys",
    ),
    pytest.param(
        variant(
            (
                "    allow_open_guests: true\n",
                '    allow_open_guests: true\n    map: {user_id: "guest-{name}"}\n',
            )
        ),
        [
            "providers[2].map.user_id (line 34): guests without an invite have no verified "
            "claims: the user id must use '{random}'"
        ],
        id="open-guest-random",
    ),
    pytest.param(
        variant(
            (
                "    exchange: sts\n    allow_open_guests: true\n",
                "    exchange: cognito_developer\n    credential_ttl: 900\n"
                "    allow_open_guests: true\n",
            )
        ),
        [
            "providers[2].credential_ttl (line 33): applies to exchange: sts only "
            "(Cognito always issues one-hour credentials)"
        ],
        id="guest-ttl-sts-only",
    ),
    pytest.param(
        variant(
            (
                "    exchange: cognito_developer\n",
                "    exchange: cognito_developer\n"
                "    custom_role_arn: arn:aws:iam::111122223333:role/X\n",
            )
        ),
        ["providers[0].custom_role_arn (line 23): applies to exchange: cognito only"],
        id="custom-role-arn",
    ),
    pytest.param(
        variant(
            (
                "    allow_open_guests: true\n",
                "    allow_open_guests: true\n    require_nonce: true\n",
            )
        ),
        ["providers[2].require_nonce (line 34): a guest provider has no id token to carry a nonce"],
        id="nonce-without-id-token",
    ),
    pytest.param(
        variant(
            (
                "  - name: guests\n",
                "  - name: corp\n    kind: saml\n    sp_entity_id: urn:corp\n    exchange: sts\n"
                '    map: {user_id: "corp-{name_id}"}\n  - name: guests\n',
            )
        ),
        ["providers[2].idp_metadata_file (line 30): required (or idp_metadata_url)"],
        id="saml-metadata",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BROKEN)
def test_broken_config_is_refused_with_exact_messages(text: str, expected: list[str]) -> None:
    assert problems(text) == expected


def test_there_are_enough_broken_cases() -> None:
    assert len(BROKEN) >= 35


def test_missing_environment_variable_names_the_key() -> None:
    assert problems(BASE, env={}) == [
        "service.secret_key (line 13): environment variable 'BROKER_SECRET_KEY' is not set"
    ]


def test_python_tags_are_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    text = variant(
        ("store: memory://", f"store: !!python/object/apply:os.system ['touch {marker}']")
    )
    assert problems(text) == [
        "<config> (line 16): unsupported YAML tag '!!python/object/apply:os.system'"
    ]
    assert not marker.exists()


def test_every_problem_is_reported_at_once() -> None:
    text = variant(
        ("mode: production", "mode: prod"),
        ("  region: us-east-1", "  region: us-east-1\n  colour: blue"),
        ("user_id: okta-{sub}", 'user_id: "{email}"'),
        ("    client_ids: [web.apps.googleusercontent.com]\n", ""),
        ("    exchange: sts\n", "    exchange: cognito\n"),
    )
    assert problems(text) == [
        "mode (line 1): expected 'production' or 'demo', got 'prod'",
        "aws.colour (line 4): unknown key",
        "providers[0].map.user_id (line 25): '{email}' reads email, which users or admins can "
        "change; identity is (issuer, sub): use '{sub}' (or allow_mutable_user_id: true when "
        "nothing stable exists)",
        "providers[1].client_ids (line 27): required",
        "providers[2].exchange (line 32): guest providers cannot use exchange: cognito "
        "(the identity pool cannot verify them); use cognito_developer or sts",
    ]


def test_field_errors_and_cross_field_rules_are_reported_together() -> None:
    text = variant(
        ("  sts:\n    role_arn: arn:aws:iam::111122223333:role/ChimeUser\n", ""),
        ("public_url: https://auth.example.chat", "public_url: ftp://auth.example.chat"),
        ("user_id: okta-{sub}", "user_id: okta-{sub|sha256:99}"),
    )
    assert problems(text) == [
        "service.public_url (line 10): 'ftp://auth.example.chat' is not an absolute https URL",
        "providers[0].map.user_id (line 22): '{sub|sha256:99}' needs sha256:N with N from 1 to 64",
        "providers[2].exchange (line 30): exchange: sts needs a role: set role_arn here or "
        "aws.sts.role_arn",
    ]


def test_anchors_and_merge_keys_work_and_explicit_keys_win() -> None:
    text = variant(
        ("    exchange: cognito_developer\n", "    <<: &common {exchange: sts, leeway: 30}\n"),
        ("    exchange: sts\n", "    <<: *common\n    leeway: 10\n"),
    )
    config = parse_config(text, env=ENV)
    okta, _, guests = config.providers
    assert (okta.exchange, okta.leeway) == ("sts", 30)
    assert (guests.exchange, guests.leeway) == ("sts", 10)


def test_alias_bombs_are_refused() -> None:
    # ten to the ninth "lol"s if expanded; refused after a bounded walk
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 9):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    assert problems("\n".join(lines) + "\n") == ["<config>: the configuration is too large"]


def test_values_from_the_environment_are_not_echoed() -> None:
    text = variant(("  sts:\n", "  sts:\n    duration_seconds: ${env:STS_DURATION}\n"))
    assert problems(text, env={**ENV, "STS_DURATION": "hunter2"}) == [
        "aws.sts.duration_seconds (line 8): expected a whole number"
    ]


# -- what loads ----------------------------------------------------------------------------

EXAMPLE_ENV = {
    name: f"{name.lower()}-value-0123456789abcdefghijklmnopqrstuvwxyz"
    for name in (
        "BROKER_SECRET_KEY",
        "OKTA_CLIENT_SECRET",
        "GOOGLE_CLIENT_SECRET",
        "APPLE_PRIVATE_KEY",
        "FACEBOOK_APP_SECRET",
        "AMAZON_CLIENT_SECRET",
        "CORP_SP_KEY",
        "CORP_SP_CERT",
    )
}


def test_example_config_loads_with_the_documented_defaults() -> None:
    config = load_config(REPO / "config" / "example.yaml", env=EXAMPLE_ENV)
    assert config.mode == "production"
    assert not config.is_demo
    assert config.aws.region == "us-east-1"
    assert config.aws.cognito is not None
    assert config.aws.cognito.token_duration == 300
    assert config.aws.sts is not None
    assert config.aws.sts.duration_seconds == 3600
    assert (config.aws.timeouts.connect, config.aws.timeouts.read) == (2, 5)
    assert config.chime.user_tag == "my_applications_user_id"
    assert (config.chime.region, config.chime.account_id) == ("us-east-1", "111122223333")
    assert config.chime.app_instance_id == "abcd-1234"
    service = config.service
    assert service.session_lifetime == 8 * 3600
    assert service.recheck_interval == 15 * 60
    assert service.cookie_name == "__Host-chime_broker_session"
    assert service.max_body == 64 * 1024
    assert service.trusted_proxies == 0
    assert service.cache_credentials is True
    assert service.secret_key is not None
    assert service.secret_key.get_secret_value() == EXAMPLE_ENV["BROKER_SECRET_KEY"]
    assert config.store == "sqlite:////var/lib/chime-broker/state.db"
    assert config.store_scheme == "sqlite"
    kinds = {p.kind for p in config.providers}
    assert kinds == {
        "oidc",
        "google",
        "apple",
        "facebook",
        "amazon",
        "cognito_user_pool",
        "saml",
        "guest",
    }
    okta = config.provider("okta")
    assert isinstance(okta, OidcConfig)
    assert okta.leeway == 60
    assert okta.require_nonce is False
    assert okta.audiences == ("0oa1example", "0oa1mobile")
    assert okta.map.require == {"email_verified": True, "groups": {"any_of": ["chat-users"]}}
    guests = config.provider("guests")
    assert isinstance(guests, GuestConfig)
    assert (guests.credential_ttl, guests.user_expiration_days) == (1800, 1)
    assert guests.allow_open_guests is False
    corp = config.provider("corp")
    assert isinstance(corp, SamlConfig)
    assert corp.allow_idp_initiated is False
    assert corp.user_id_template.source == "corp-{name_id|sha256:24}"
    assert config.provider("nobody") is None


def test_example_config_rotation_form_of_secret_key_loads(tmp_path: Path) -> None:
    """The commented list form of ``secret_key`` in the example is real: uncommented, the
    new key signs and both verify."""
    text = (REPO / "config" / "example.yaml").read_text()
    commented = "  #   secret_key: "
    (line,) = [line for line in text.splitlines() if line.startswith(commented)]
    rotated = text.replace(
        "  secret_key: ${env:BROKER_SECRET_KEY}\n",
        "  secret_key:" + line[len(commented) - 1 :] + "\n",
    )
    assert rotated != text
    (tmp_path / "broker.yaml").write_text(rotated)
    new_key = "n" * 40
    env = {**EXAMPLE_ENV, "BROKER_SECRET_KEY_NEW": new_key}
    config = load_config(tmp_path / "broker.yaml", env=env)
    assert list(config.service.secret_keys) == [
        new_key,
        EXAMPLE_ENV["BROKER_SECRET_KEY"],
    ]


def test_example_config_documents_every_key() -> None:
    text = (REPO / "config" / "example.yaml").read_text()
    config = load_config(REPO / "config" / "example.yaml", env=EXAMPLE_ENV)
    models: list[type[BaseModel]] = [
        BrokerConfig,
        AwsConfig,
        CognitoConfig,
        StsConfig,
        Timeouts,
        ChimeConfig,
        ServiceConfig,
        MapConfig,
        InviteConfig,
        *(type(p) for p in config.providers),
    ]
    for model in models:
        for key in model.model_fields:
            assert f"{key}:" in text or f"{key} " in text, f"{model.__name__}.{key}"


def test_demo_config_loads() -> None:
    config = load_config(REPO / "config" / "demo.yaml", env={})
    assert config.is_demo
    assert config.store == "memory://"
    assert config.service.public_url == "http://127.0.0.1:8000"
    assert config.service.secret_key is None
    (demo,) = config.providers
    assert isinstance(demo, OidcConfig)
    assert (demo.name, demo.issuer, demo.client_id) == ("demo", "http://127.0.0.1:8001", "demo-spa")
    assert demo.exchange == "cognito_developer"
    assert demo.user_id_template.source == "demo-{sub}"


def test_summary_names_mode_region_store_and_providers() -> None:
    summary = parse_config(BASE, env=ENV).summary()
    assert summary.splitlines() == [
        "mode: production",
        "region: us-east-1",
        "store: memory",
        "app instance: arn:aws:chime:us-east-1:111122223333:app-instance/abcd-1234",
        "providers (3):",
        "  okta    kind oidc, exchange cognito_developer, user id okta-{sub}",
        "  google  kind google, exchange cognito, user id {sub}",
        "  guests  kind guest, exchange sts, user id guest-{random}",
    ]


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert caught.value.problems == [f"{missing}: cannot read: No such file or directory"]


def test_load_config_names_the_file_in_syntax_errors(tmp_path: Path) -> None:
    path = tmp_path / "broker.yaml"
    path.write_text("mode: [\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems[0].startswith(f"{path} (line 2): ")


# -- environment interpolation ---------------------------------------------------------------


def test_env_interpolation_in_any_string() -> None:
    text = variant(
        ("  region: us-east-1", "  region: ${env:REGION}"),
        ("client_id: spa", "client_id: ${env:CLIENT}-web"),
        (
            "allowed_origins: [https://app.example.chat]",
            "allowed_origins: ['https://${env:APP_HOST}']",
        ),
        ("  sts:\n", "  sts:\n    duration_seconds: ${env:DURATION}\n"),
    )
    env = {
        **ENV,
        "REGION": "us-east-1",
        "CLIENT": "spa",
        "APP_HOST": "chat.example.org",
        "DURATION": "7200",
    }
    config = parse_config(text, env=env)
    assert config.aws.region == "us-east-1"
    okta = config.provider("okta")
    assert isinstance(okta, OidcConfig)
    assert okta.client_id == "spa-web"
    assert okta.audiences == ("spa-web",)
    assert config.service.allowed_origins == ("https://chat.example.org",)
    assert config.aws.sts is not None
    assert config.aws.sts.duration_seconds == 7200


def test_double_dollar_is_a_literal_reference() -> None:
    text = variant(("  - name: okta\n", "  - name: okta\n    display_name: Costs $${env:X}\n"))
    okta = parse_config(text, env=ENV).provider("okta")
    assert okta is not None
    assert okta.display_name == "Costs ${env:X}"


def test_env_values_are_not_interpolated_again() -> None:
    config = parse_config(BASE, env={"BROKER_SECRET_KEY": "${env:OTHER}" + "x" * 32})
    assert config.service.secret_key is not None
    assert config.service.secret_key.get_secret_value() == "${env:OTHER}" + "x" * 32


def test_os_environ_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_SECRET_KEY", "e" * 32)
    config = parse_config(BASE)
    assert config.service.secret_key is not None
    assert config.service.secret_key.get_secret_value() == "e" * 32


# -- models built in Python ----------------------------------------------------------------------


def test_valid_config_dict_builds() -> None:
    config = build_config(valid_config_dict())
    assert config.mode == "production"
    assert config.store == "memory://"  # allowed in production; `serve` refuses it with workers


def test_valid_config_dict_overrides() -> None:
    data = valid_config_dict(
        service__public_url="https://broker.example.org/",
        aws__sts=REMOVE,
        providers=[provider_dict("oidc", exchange="cognito_developer")],
    )
    config = build_config(data)
    assert config.service.public_url == "https://broker.example.org"
    assert config.aws.sts is None


def test_every_kind_builds_with_its_defaults() -> None:
    kinds = ["oidc", "google", "apple", "facebook", "amazon", "cognito_user_pool", "saml", "guest"]
    config = build_config(valid_config_dict(providers=[provider_dict(k) for k in kinds]))
    by_kind = {p.kind: p for p in config.providers}
    google = by_kind["google"]
    assert isinstance(google, GoogleConfig)
    assert google.issuer == "https://accounts.google.com"
    assert google.jwks_url == "https://www.googleapis.com/oauth2/v3/certs"
    assert google.display_name == "google"
    apple = by_kind["apple"]
    assert (apple.issuer, apple.jwks_url) == (  # type: ignore[union-attr]
        "https://appleid.apple.com",
        "https://appleid.apple.com/auth/keys",
    )
    facebook = by_kind["facebook"]
    assert facebook.debug_token_url == "https://graph.facebook.com/debug_token"  # type: ignore[union-attr]
    amazon = by_kind["amazon"]
    assert amazon.tokeninfo_url == "https://api.amazon.com/auth/o2/tokeninfo"  # type: ignore[union-attr]
    pool = by_kind["cognito_user_pool"]
    assert pool.issuer == "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_AbCdEf123"  # type: ignore[union-attr]
    assert pool.jwks_url == (  # type: ignore[union-attr]
        "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_AbCdEf123/.well-known/jwks.json"
    )
    oidc = by_kind["oidc"]
    assert oidc.scopes == ("openid",)  # type: ignore[union-attr]
    assert oidc.audiences == ("spa",)  # type: ignore[union-attr]
    assert by_kind["saml"].user_id_template.source == "corp-{name_id|sha256:24}"
    assert by_kind["guest"].user_id_template.source == "guest-{random}"
    assert by_kind["guest"].user_id_template.uses_random


def test_default_user_ids_per_kind() -> None:
    config = build_config(
        valid_config_dict(
            providers=[
                # both unprefixed: only allowed when both share deliberately
                provider_dict("oidc", map={}, allow_shared_user_ids=True),
                provider_dict("saml", map={}, allow_shared_user_ids=True),
                provider_dict("guest", map={}),
            ]
        )
    )
    assert [p.user_id_template.source for p in config.providers] == [
        "{sub}",
        "{name_id}",
        "guest-{random}",
    ]


def test_compiled_templates_are_cached_on_the_model() -> None:
    okta = build_config(
        valid_config_dict(
            providers=[
                provider_dict(
                    "oidc",
                    map={
                        "user_id": "okta-{sub}",
                        "display_name": "{name}",
                        "tags": {"d": "{dept}"},
                    },
                )
            ]
        )
    ).providers[0]
    assert okta.user_id_template is okta.user_id_template
    assert okta.display_name_template is not None
    assert okta.display_name_template.source == "{name}"
    assert okta.tag_templates["d"].render({"dept": "R&D"}, provider="okta") == "R&D"


def test_models_are_frozen() -> None:
    config = build_config(valid_config_dict())
    with pytest.raises(ValidationError):
        config.mode = "demo"
    with pytest.raises(ValidationError):
        config.service.public_url = "https://other.example"


def test_direct_validation_also_runs_cross_field_rules() -> None:
    data = valid_config_dict(aws__cognito=REMOVE)
    with pytest.raises(ValidationError, match=r"needs aws\.cognito"):
        BrokerConfig.model_validate(data)
    with pytest.raises(ConfigError) as caught:
        build_config(data)
    assert caught.value.problems == [
        "providers[0].exchange: exchange: cognito_developer needs aws.cognito "
        "(identity_pool_id and developer_provider_name)"
    ]


def test_demo_mode_needs_no_secret_key() -> None:
    config = build_config(
        valid_config_dict(
            mode="demo",
            service__public_url="http://127.0.0.1:8000",
            service__secret_key=REMOVE,
            providers=[provider_dict("oidc", issuer="http://127.0.0.1:8001")],
        )
    )
    assert config.is_demo
    assert config.service.secret_key is None


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "localhost"])
def test_plain_http_is_allowed_on_loopback(host: str) -> None:
    config = build_config(
        valid_config_dict(providers=[provider_dict("oidc", issuer=f"http://{host}:9000")])
    )
    assert config.providers[0].issuer == f"http://{host}:9000"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("8h", 28800), ("1d", 86400), (3600, 3600), ("120", 120)],
)
def test_durations(text: str | int, seconds: int) -> None:
    config = build_config(valid_config_dict(service__recheck_interval=text))
    assert config.service.recheck_interval == seconds


@pytest.mark.parametrize(
    ("text", "size"), [("64KiB", 65536), ("1MiB", 1048576), ("2048B", 2048), (4096, 4096)]
)
def test_sizes(text: str | int, size: int) -> None:
    assert build_config(valid_config_dict(service__max_body=text)).service.max_body == size


def test_numeric_ids_from_yaml_are_strings() -> None:
    config = build_config(
        valid_config_dict(providers=[provider_dict("facebook", app_id=1234567890)])
    )
    assert config.providers[0].app_id == "1234567890"  # type: ignore[union-attr]


# -- user-id namespaces ----------------------------------------------------------------------


def _two_unprefixed(share_first: bool, share_second: bool) -> dict[str, Any]:
    return valid_config_dict(
        providers=[
            provider_dict("oidc", map={"user_id": "{sub}"}, allow_shared_user_ids=share_first),
            provider_dict("google", map={"user_id": "{sub}"}, allow_shared_user_ids=share_second),
        ]
    )


def test_shared_user_ids_need_both_sides() -> None:
    build_config(_two_unprefixed(True, True))
    with pytest.raises(ConfigError) as caught:
        build_config(_two_unprefixed(True, False))
    assert caught.value.problems == [
        "providers[1].map.user_id: has no user id prefix, like provider 'okta': at most one "
        f"provider may go without one {SHARE}"
    ]


def _lands_in_namespace(config: BrokerConfig, provider: str, subject: str) -> bool:
    mapper = build_mappers(config.providers, user_tag=config.chime.user_tag)[provider]
    principal = Principal(
        provider=provider, issuer="https://idp", subject=subject, claims={"sub": subject}
    )
    try:
        mapper.map(principal)
    except UnmappableIdentity:
        return False
    return True


def test_the_unprefixed_provider_cannot_mint_ids_in_another_namespace() -> None:
    config = build_config(
        valid_config_dict(
            providers=[
                provider_dict("oidc"),
                provider_dict("google", map={"user_id": "{sub}"}),
                provider_dict("guest"),
            ]
        )
    )
    assert not _lands_in_namespace(config, "google", "okta-123")
    assert not _lands_in_namespace(config, "google", "GUEST-abc")
    assert _lands_in_namespace(config, "google", "1234567890")
    assert _lands_in_namespace(config, "okta", "123")


def test_shared_providers_are_not_foreign_to_each_other() -> None:
    config = build_config(
        valid_config_dict(
            providers=[
                provider_dict("oidc", allow_shared_user_ids=True),
                provider_dict("google", map={"user_id": "{sub}"}, allow_shared_user_ids=True),
                provider_dict("apple"),
            ]
        )
    )
    assert _lands_in_namespace(config, "google", "okta-1")
    assert not _lands_in_namespace(config, "google", "apple-1")


# -- return_to -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://app.example.chat/", True),
        ("https://app.example.chat/rooms/42?x=1", True),
        ("https://app.example.chat", False),
        ("https://app.example.chat.evil.example/", False),
        ("https://evil.example/https://app.example.chat/", False),
        ("http://app.example.chat/", False),
        ("https://user@app.example.chat/", False),
        ("https://app.example.chat/a/../b", False),
        ("https://app.example.chat/a/%2e%2e/b", False),
        ("https://app.example.chat\\@evil.example/", False),
        ("com.example.chat:/oauth", True),
        ("com.example.chat:/oauth/callback?code=1", True),
        ("com.example.chat:/oauthx", False),
        ("com.example.evil:/oauth", False),
    ],
)
def test_return_to_allowed(url: str, allowed: bool) -> None:
    config = build_config(
        valid_config_dict(
            service__allowed_return_to=["https://app.example.chat/", "com.example.chat:/oauth"]
        )
    )
    assert config.service.return_to_allowed(url) is allowed


def test_default_return_to_falls_back_to_the_first_allowed() -> None:
    config = build_config(valid_config_dict())
    assert config.service.default_return_to is None
    assert config.service.effective_default_return_to == "https://app.example.chat/"
    none_allowed = build_config(valid_config_dict(service__allowed_return_to=[]))
    assert none_allowed.service.effective_default_return_to is None
