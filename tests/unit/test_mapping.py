"""Claims become a Chime user id, display name and tags, or are refused; require rules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from identity.config.document import parse_config
from identity.errors import AccessDenied, ConfigError, InternalError, UnmappableIdentity
from identity.mapping import (
    ClaimMapper,
    Namespace,
    RequirePolicy,
    app_instance_user_arn,
    build_mappers,
    clean_display_name,
    validate_tags,
    validate_user_id,
)
from identity.models import Principal
from identity.templates import compile_template

APP_INSTANCE = "arn:aws:chime:us-east-1:111122223333:app-instance/abcd-1234"
USER_TAG = "my_applications_user_id"


def principal(provider: str = "okta", **claims: Any) -> Principal:
    return Principal(
        provider=provider,
        issuer="https://idp.example",
        subject=str(claims.get("sub", "")),
        claims=claims,
    )


def mapper(
    user_id: str = "okta-{sub}",
    *,
    provider: str = "okta",
    display_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    require: Mapping[str, Any] | None = None,
    namespaces: list[Namespace] | None = None,
    allow_shared: bool = False,
) -> ClaimMapper:
    return ClaimMapper(
        provider=provider,
        user_id_template=compile_template(user_id),
        display_name_template=compile_template(display_name) if display_name else None,
        tag_templates={key: compile_template(text) for key, text in (tags or {}).items()},
        user_tag=USER_TAG,
        require=RequirePolicy(require),
        namespaces=namespaces,
        allow_shared_user_ids=allow_shared,
    )


def refused(call: Any, *args: Any) -> UnmappableIdentity:
    with pytest.raises(UnmappableIdentity) as info:
        call(*args)
    assert info.value.code == "unmappable_identity"
    assert info.value.status == 422
    return info.value


# -- user ids -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "user_id",
    [
        "a/b",
        "okta-*",
        "*",
        "a\nb",
        "abc\n",
        "a b",
        "..",
        "../admin",
        "a/../b",
        "x" * 65,
        "",
        "-abc",
        "abc-",
        ".abc",
        "abc@",
        "zoë",
        "\uff4f\uff4b\uff54\uff41",  # fullwidth "okta"
        "a\u200bb",
        "a\x00b",
    ],
)
def test_invalid_user_ids_are_refused(user_id: str) -> None:
    refused(validate_user_id, user_id)


@pytest.mark.parametrize(
    "user_id",
    ["a", "7", "x" * 64, "okta-00u1abc", "ada@example.com", "a:b_c.d-e@f9", "a..b"],
)
def test_valid_user_ids_are_returned_unchanged(user_id: str) -> None:
    assert validate_user_id(user_id) == user_id


def test_refusal_says_what_is_wrong() -> None:
    assert "empty" in refused(validate_user_id, "").detail
    assert "65 characters" in refused(validate_user_id, "x" * 65).detail
    assert "'/'" in refused(validate_user_id, "a/b").detail
    assert "U+000A" in refused(validate_user_id, "a\nb").detail
    assert "start and end" in refused(validate_user_id, "-abc").detail


def test_refusal_does_not_echo_long_or_control_values() -> None:
    attack = "<script>" + "A" * 5000 + "\x1b[31m/"
    detail = refused(validate_user_id, attack).detail
    assert len(detail) < 200
    assert "A" * 50 not in detail
    assert "\x1b" not in detail

    detail = refused(validate_user_id, "ab\x1b[2Jcd/").detail
    assert "\x1b" not in detail
    assert "\\x1b" not in detail


def test_arn_is_built_exactly() -> None:
    assert (
        app_instance_user_arn(APP_INSTANCE, "okta-00u1abc")
        == "arn:aws:chime:us-east-1:111122223333:app-instance/abcd-1234/user/okta-00u1abc"
    )


@pytest.mark.parametrize("user_id", ["*", "a/b", "../x", "", "a*"])
def test_arn_cannot_be_widened(user_id: str) -> None:
    refused(app_instance_user_arn, APP_INSTANCE, user_id)


# -- tags -----------------------------------------------------------------------------------


def test_tag_value_of_256_characters_is_accepted_and_257_refused() -> None:
    assert validate_tags({"dept": "v" * 256}) == {"dept": "v" * 256}
    assert "longer than 256" in refused(validate_tags, {"dept": "v" * 257}).detail


def test_astral_characters_count_twice_toward_the_limit() -> None:
    letter = "\U0001d400"  # MATHEMATICAL BOLD CAPITAL A: a letter outside the BMP
    assert validate_tags({"dept": letter * 128})
    refused(validate_tags, {"dept": letter * 129})


@pytest.mark.parametrize(
    "value", ["a*", "<b>", "line\nbreak", "tab\there", "R&D", "50%", "a\u202eb", "\ud800"]
)
def test_tag_values_outside_the_sts_pattern_are_refused(value: str) -> None:
    refused(validate_tags, {"dept": value})


@pytest.mark.parametrize(
    "value",
    ["", "Zoë Ærøskøbing", "東京", "Ελληνικά", "٣٤", "a_b.c:d/e=f+g-h@i", "x\u00a0y", "½"],
)
def test_unicode_letters_numbers_and_separators_are_accepted(value: str) -> None:
    assert validate_tags({"dept": value}) == {"dept": value}


def test_at_most_50_tags() -> None:
    fifty = {f"k{i}": "v" for i in range(50)}
    assert validate_tags(fifty) == fifty
    assert "51 tags" in refused(validate_tags, {**fifty, "k50": "v"}).detail


@pytest.mark.parametrize("key", ["aws:team", "AWS:team", "Aws:x"])
def test_aws_prefixed_keys_are_refused(key: str) -> None:
    assert "aws:" in refused(validate_tags, {key: "v"}).detail


def test_tag_key_rules() -> None:
    assert validate_tags({"k" * 128: "v", "awsome": "v", "département": "v"})
    refused(validate_tags, {"k" * 129: "v"})
    refused(validate_tags, {"": "v"})
    refused(validate_tags, {"a b*": "v"})
    assert "case" in refused(validate_tags, {"Dept": "a", "dept": "b"}).detail


# -- require rules --------------------------------------------------------------------------


def check(rules: Mapping[str, Any], **claims: Any) -> bool:
    try:
        RequirePolicy(rules).check(claims)
    except AccessDenied:
        return False
    return True


def test_string_equality() -> None:
    assert check({"hd": "example.com"}, hd="example.com")
    assert not check({"hd": "example.com"}, hd="example.com.evil")
    assert not check({"hd": "example.com"}, hd="EXAMPLE.COM")
    assert not check({"hd": "example.com"}, hd=["example.com"])
    assert not check({"level": "3"}, level=3)
    assert not check({"email_verified": "true"}, email_verified=True)


@pytest.mark.parametrize(
    ("claim", "ok"),
    [
        (True, True),
        ("true", True),
        (False, False),
        ("false", False),
        ("True", False),
        ("TRUE", False),
        ("true ", False),
        ("yes", False),
        ("1", False),
        (1, False),
        ("", False),
        ([True], False),
    ],
)
def test_booleans_are_parsed_strictly(claim: Any, ok: bool) -> None:
    assert check({"email_verified": True}, email_verified=claim) is ok


def test_apple_false_string_matches_a_false_rule() -> None:
    assert check({"is_private_email": False}, is_private_email="false")
    assert check({"is_private_email": False}, is_private_email=False)
    assert not check({"is_private_email": False}, is_private_email="true")
    assert not check({"is_private_email": False}, is_private_email=0)


def test_integer_equality_is_strict() -> None:
    assert check({"level": 3}, level=3)
    assert not check({"level": 3}, level="3")
    assert not check({"level": 1}, level=True)


def test_any_of_over_a_list_claim() -> None:
    rules = {"groups": {"any_of": ["chat-users", "admins"]}}
    assert check(rules, groups=["staff", "admins"])
    assert not check(rules, groups=["staff"])
    assert not check(rules, groups=[])
    assert not check(rules, groups=["chat-users-old"])


def test_any_of_over_a_scalar_claim() -> None:
    rules = {"tenant": {"any_of": ["acme", "globex"]}}
    assert check(rules, tenant="globex")
    assert not check(rules, tenant="initech")


def test_all_of() -> None:
    rules = {"groups": {"all_of": ["chat-users", "staff"]}}
    assert check(rules, groups=["staff", "chat-users", "x"])
    assert not check(rules, groups=["staff"])
    assert not check(rules, groups="staff")
    assert check({"groups": {"all_of": ["staff"]}}, groups="staff")


def test_any_of_and_all_of_together_both_apply() -> None:
    rules = {"groups": {"any_of": ["a", "b"], "all_of": ["staff"]}}
    assert check(rules, groups=["a", "staff"])
    assert not check(rules, groups=["a"])
    assert not check(rules, groups=["staff"])


def test_every_rule_must_hold() -> None:
    rules = {"email_verified": True, "groups": {"any_of": ["chat-users"]}}
    assert check(rules, email_verified="true", groups=["chat-users"])
    assert not check(rules, email_verified=True, groups=["other"])
    assert not check(rules, email_verified=False, groups=["chat-users"])


def test_nested_claims_are_reachable_by_dotted_name() -> None:
    assert check({"address.country": "NZ"}, address={"country": "NZ"})
    assert not check({"address.country": "NZ"}, address={"country": "AU"})
    assert check({"address.country": "NZ"}, **{"address.country": "NZ"})


def test_missing_or_null_claim_is_denied_naming_the_claim() -> None:
    for claims in ({}, {"email_verified": None}):
        with pytest.raises(AccessDenied) as info:
            RequirePolicy({"email_verified": True}).check(claims)
        assert info.value.code == "access_denied"
        assert "email_verified" in info.value.detail


def test_denial_names_the_claim_not_its_value() -> None:
    with pytest.raises(AccessDenied) as info:
        RequirePolicy({"groups": {"any_of": ["chat-users"]}}).check(
            {"groups": ["secret-project-x"]}
        )
    assert "groups" in info.value.detail
    assert "secret-project-x" not in info.value.detail
    assert "chat-users" not in info.value.detail


def test_no_rules_admit_everyone() -> None:
    assert not RequirePolicy()
    assert RequirePolicy({"a": "b"})
    RequirePolicy({}).check({})


def test_malformed_rules_are_config_errors_listing_every_one() -> None:
    with pytest.raises(ConfigError) as info:
        RequirePolicy(
            {
                "groups": ["a", "b"],
                "tenant": {"one_of": ["a"]},
                "roles": {"any_of": []},
                "level": {"all_of": ["a", 1.5]},
                "score": 0.5,
                "bad name!": "x",
                "nothing": None,
            },
            path="providers[0].map.require",
        )
    problems = "\n".join(info.value.problems)
    assert len(info.value.problems) == 7
    for fragment in (
        "providers[0].map.require.groups:",
        "providers[0].map.require.tenant.one_of:",
        "providers[0].map.require.roles.any_of:",
        "providers[0].map.require.level.all_of[1]:",
        "providers[0].map.require.score:",
        "providers[0].map.require.bad name!:",
        "providers[0].map.require.nothing:",
    ):
        assert fragment in problems


# -- the mapper -----------------------------------------------------------------------------


def test_maps_user_id_display_name_and_tags() -> None:
    user = mapper(display_name="{name}", tags={"department": "{dept}", "idp": "{provider}"}).map(
        principal(sub="00u1abc", name="Ada Lovelace", dept="R-and-D")
    )
    assert user.provider == "okta"
    assert user.user_id == "okta-00u1abc"
    assert user.display_name == "Ada Lovelace"
    assert user.tags == {USER_TAG: "okta-00u1abc", "department": "R-and-D", "idp": "okta"}


def test_hashed_ids_are_valid_and_stable() -> None:
    m = mapper("corp-{name_id|sha256:24}", provider="corp")
    first = m.map(principal("corp", name_id="CN=Ada Lovelace/OU=R&D, O=Example"))
    again = m.map(principal("corp", name_id="CN=Ada Lovelace/OU=R&D, O=Example"))
    other = m.map(principal("corp", name_id="CN=Charles Babbage"))
    assert first.user_id == again.user_id != other.user_id
    assert len(first.user_id) == len("corp-") + 24
    assert validate_user_id(first.user_id) == first.user_id


def test_claims_that_make_an_invalid_id_are_refused_not_rewritten() -> None:
    m = mapper()
    for sub in ("a/b", "*", "x" * 60, "a\nb", "ü"):
        refused(m.map, principal(sub=sub))


def test_missing_user_id_claim_is_unmappable() -> None:
    refused(mapper().map, principal(email="a@example.com"))


def test_require_rules_run_before_mapping() -> None:
    m = mapper(require={"email_verified": True})
    assert m.map(principal(sub="1", email_verified="true")).user_id == "okta-1"
    with pytest.raises(AccessDenied):
        m.map(principal(sub="1", email_verified="True"))
    # A denied user is denied even when their claims could not be mapped either.
    with pytest.raises(AccessDenied):
        m.map(principal(sub="a/b"))


NAMESPACES = [
    Namespace("okta", "okta-", allow_shared=False),
    Namespace("corp", "corp-", allow_shared=True),
    Namespace("google", "", allow_shared=True),
]


def test_unprefixed_ids_inside_another_providers_namespace_are_refused() -> None:
    google = mapper("{sub}", provider="google", namespaces=NAMESPACES)
    assert google.map(principal("google", sub="1234567890")).user_id == "1234567890"
    detail = refused(google.map, principal("google", sub="okta-00u1abc")).detail
    assert detail == "user id falls into another provider's namespace"
    refused(google.map, principal("google", sub="OKTA-00u1abc"))


def test_shared_user_ids_need_consent_on_both_sides() -> None:
    google = mapper("{sub}", provider="google", namespaces=NAMESPACES, allow_shared=True)
    assert google.map(principal("google", sub="corp-ada")).user_id == "corp-ada"
    refused(google.map, principal("google", sub="okta-ada"))

    unshared = mapper("{sub}", provider="google", namespaces=NAMESPACES, allow_shared=False)
    refused(unshared.map, principal("google", sub="corp-ada"))


def test_prefixed_providers_keep_their_own_namespace() -> None:
    okta = mapper("okta-{sub}", namespaces=NAMESPACES)
    assert okta.map(principal(sub="corp-x")).user_id == "okta-corp-x"


def test_display_name_falls_back_to_the_user_id() -> None:
    assert mapper().map(principal(sub="1")).display_name == "okta-1"
    named = mapper(display_name="{name}")
    assert named.map(principal(sub="1")).display_name == "okta-1"
    assert named.map(principal(sub="1", name=None)).display_name == "okta-1"
    assert named.map(principal(sub="1", name="")).display_name == "okta-1"
    assert named.map(principal(sub="1", name=" \t\n\x00 ")).display_name == "okta-1"
    assert named.map(principal(sub="1", name=["a", "b"])).display_name == "okta-1"


def test_display_name_is_cleaned_and_capped() -> None:
    named = mapper(display_name="{name}")
    user = named.map(principal(sub="1", name="  Ada\n\tLovelace\x07 \u202eevil\x1b[0m  "))
    assert user.display_name == "Ada Lovelace evil [0m"
    long = named.map(principal(sub="1", name="n" * 150)).display_name
    assert long == "n" * 100


def test_clean_display_name() -> None:
    assert clean_display_name("Zoë  Ærø\u2028東京") == "Zoë Ærø 東京"
    assert clean_display_name("a" * 99 + " bcd") == "a" * 99
    assert clean_display_name("\x00\x01") == ""
    assert clean_display_name("\U0001f600" * 60) == "\U0001f600" * 50


def test_missing_tag_claim_names_the_tag() -> None:
    m = mapper(tags={"department": "{dept}"})
    detail = refused(m.map, principal(sub="1")).detail
    assert "department" in detail


def test_invalid_rendered_tag_values_are_refused() -> None:
    m = mapper(tags={"department": "{dept}"})
    assert m.map(principal(sub="1", dept="Forschung und Entwicklung")).tags["department"]
    for dept in ("R&D", "a*", "x" * 257, "two\nlines"):
        refused(m.map, principal(sub="1", dept=dept))
    assert m.map(principal(sub="1", dept="x" * 256)).tags["department"] == "x" * 256


def test_unusable_tag_keys_fail_at_start_up() -> None:
    with pytest.raises(ConfigError) as info:
        mapper(tags={"aws:team": "{team}"})
    assert "aws:" in info.value.problems[0]
    with pytest.raises(ConfigError):
        mapper(tags={f"t{i}": "{sub}" for i in range(50)})
    assert mapper(tags={f"t{i}": "{sub}" for i in range(49)}).map(principal(sub="1"))
    with pytest.raises(ConfigError):
        mapper(tags={USER_TAG.upper(): "{sub}"})


def test_a_principal_from_another_provider_is_a_bug() -> None:
    with pytest.raises(InternalError):
        mapper().map(principal("google", sub="1"))


# -- from the YAML config -------------------------------------------------------------------

BASE_YAML = """
aws: {region: us-east-1, sts: {role_arn: "arn:aws:iam::111122223333:role/ChatUser"}}
chime:
  app_instance_arn: arn:aws:chime:us-east-1:111122223333:app-instance/abcd-1234
  user_tag: chat_user
service: {public_url: "https://auth.example.chat", secret_key: "${env:SECRET}"}
store: sqlite:////var/lib/chime-broker/state.db
providers:
"""

OKTA_YAML = """
  - name: okta
    kind: oidc
    issuer: https://example.okta.com/oauth2/default
    client_id: 0oa1example
    exchange: sts
    map:
      user_id: "okta-{sub}"
      display_name: "{name}"
      tags: {department: "{dept}"}
      require: {email_verified: true, level: 3, groups: {any_of: [chat-users]}}
"""

CORP_YAML = """
  - name: corp
    kind: saml
    idp_metadata_file: /etc/chime-broker/corp-idp.xml
    sp_entity_id: https://auth.example.chat/v1/saml/corp/metadata
    exchange: sts
    allow_shared_user_ids: {shared}
    map: {{user_id: "corp-{{name_id|sha256:24}}"}}
"""

GOOGLE_YAML = """
  - name: google
    kind: google
    client_ids: [1234-web.apps.googleusercontent.com]
    exchange: sts
    allow_shared_user_ids: {shared}
"""

GUEST_YAML = """
  - name: guests
    kind: guest
    exchange: sts
    allow_open_guests: true
"""


def mappers_from_yaml(*providers: str) -> dict[str, ClaimMapper]:
    config = parse_config(BASE_YAML + "".join(providers), env={"SECRET": "s" * 40})
    return build_mappers(config.providers, user_tag=config.chime.user_tag)


def test_build_mappers_from_yaml() -> None:
    mappers = mappers_from_yaml(
        OKTA_YAML,
        CORP_YAML.format(shared="false"),
        GOOGLE_YAML.format(shared="false"),
        GUEST_YAML,
    )
    assert set(mappers) == {"okta", "corp", "google", "guests"}

    okta = mappers["okta"].map(
        principal(
            sub="00u1abc",
            name="Ada Lovelace",
            dept="Engineering",
            email_verified="true",
            level=3,
            groups=["staff", "chat-users"],
        )
    )
    assert okta.user_id == "okta-00u1abc"
    assert okta.display_name == "Ada Lovelace"
    assert okta.tags == {"chat_user": "okta-00u1abc", "department": "Engineering"}

    corp = mappers["corp"].map(principal("corp", name_id="ada@corp.example"))
    assert corp.user_id.startswith("corp-") and len(corp.user_id) == 29
    assert corp.display_name == corp.user_id

    guest = mappers["guests"].map(principal("guests"), random="k3j4h5g6")
    assert guest.user_id == "guest-k3j4h5g6"
    assert guest.tags == {"chat_user": "guest-k3j4h5g6"}


def test_yaml_require_rules_apply() -> None:
    okta = mappers_from_yaml(OKTA_YAML)["okta"]
    claims: dict[str, Any] = {
        "sub": "1",
        "dept": "x",
        "email_verified": True,
        "level": 3,
        "groups": ["chat-users"],
    }
    assert okta.map(principal(**claims)).user_id == "okta-1"
    changes: tuple[dict[str, Any], ...] = (
        {"email_verified": "yes"},
        {"level": "3"},
        {"groups": ["other"]},
        {"groups": None},
    )
    for changed in changes:
        with pytest.raises(AccessDenied):
            okta.map(principal(**{**claims, **changed}))


def test_yaml_namespaces_keep_the_unprefixed_provider_out() -> None:
    mappers = mappers_from_yaml(
        OKTA_YAML, CORP_YAML.format(shared="false"), GOOGLE_YAML.format(shared="false"), GUEST_YAML
    )
    google = mappers["google"]
    assert google.map(principal("google", sub="109876543210")).user_id == "109876543210"
    for sub in ("okta-00u1abc", "corp-ada", "guest-abc", "Guest-abc"):
        detail = refused(google.map, principal("google", sub=sub)).detail
        assert detail == "user id falls into another provider's namespace"


def test_yaml_allow_shared_user_ids_on_both_sides_links_accounts() -> None:
    mappers = mappers_from_yaml(
        OKTA_YAML, CORP_YAML.format(shared="true"), GOOGLE_YAML.format(shared="true")
    )
    google = mappers["google"]
    assert google.map(principal("google", sub="corp-ada")).user_id == "corp-ada"
    refused(google.map, principal("google", sub="okta-ada"))
