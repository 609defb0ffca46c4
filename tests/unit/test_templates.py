"""The template language of map.user_id, map.display_name and map.tags."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from identity.errors import UnmappableIdentity
from identity.templates import (
    MUTABLE_CLAIMS,
    MissingClaim,
    TemplateError,
    UnrenderableClaim,
    compile_template,
    is_mutable_claim,
)

CLAIMS: dict[str, Any] = {
    "sub": "00u1AbC",
    "email": "Ada.Lovelace@Example.COM",
    "email_verified": True,
    "auth_time": 1700000000,
    "address": {"country": "GB", "locality": {"name": "London"}},
    "groups": ["chat-users", "admins"],
    "custom:dept": "R&D",
    "a.b": "flat wins",
    "nothing": None,
    "ratio": 0.5,
}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("okta-{sub}", "okta-00u1AbC"),
        ("{sub}", "00u1AbC"),
        ("{email|lower}", "ada.lovelace@example.com"),
        ("{address.country}", "GB"),
        ("{address.locality.name|lower}", "london"),
        ("{custom:dept}", "R&D"),
        ("{email_verified}", "true"),
        ("{auth_time}", "1700000000"),
        ("{provider}:{sub}", "okta:00u1AbC"),
        ("{provider|sha256:8}", hashlib.sha256(b"okta").hexdigest()[:8]),
        ("corp-{sub|sha256:24}", "corp-" + hashlib.sha256(b"00u1AbC").hexdigest()[:24]),
        ("{sub|sha256:64}", hashlib.sha256(b"00u1AbC").hexdigest()),
        ("{email|lower|sha256:1}", hashlib.sha256(b"ada.lovelace@example.com").hexdigest()[:1]),
        ("{email|sha256:12|lower}", hashlib.sha256(CLAIMS["email"].encode()).hexdigest()[:12]),
        ("{{literal}} {sub}", "{literal} 00u1AbC"),
        ("static text", "static text"),
        ("{a.b}", "flat wins"),
    ],
)
def test_render(source: str, expected: str) -> None:
    assert compile_template(source).render(CLAIMS, provider="okta") == expected


def test_sha256_hashes_utf8() -> None:
    template = compile_template("{name|sha256:16}")
    rendered = template.render({"name": "Zoë"}, provider="p")
    assert rendered == hashlib.sha256("Zoë".encode()).hexdigest()[:16]


def test_random_is_supplied_by_the_caller_for_guests() -> None:
    template = compile_template("guest-{random}", allow_random=True)
    assert template.uses_random
    assert template.render({}, provider="guests", random="r4nd0m") == "guest-r4nd0m"
    with pytest.raises(ValueError, match="needs a random value"):
        template.render({}, provider="guests")


@pytest.mark.parametrize("source", ["{missing}", "x-{nothing}", "{address.zip}", "{sub.deeper}"])
def test_missing_claim(source: str) -> None:
    template = compile_template(source)
    with pytest.raises(MissingClaim) as caught:
        template.render(CLAIMS, provider="okta")
    assert caught.value.path == source.removeprefix("x-").strip("{}")
    assert isinstance(caught.value, UnmappableIdentity)
    assert caught.value.status == 422


@pytest.mark.parametrize(
    ("source", "detail"),
    [
        ("{groups}", "the 'groups' claim is a list, not a single value"),
        ("{address}", "the 'address' claim is an object, not a single value"),
        ("{ratio}", "the 'ratio' claim is a fractional number, not a single value"),
    ],
)
def test_unrenderable_claim(source: str, detail: str) -> None:
    with pytest.raises(UnrenderableClaim) as caught:
        compile_template(source).render(CLAIMS, provider="okta")
    assert caught.value.detail == detail
    assert caught.value.code == "unmappable_identity"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("", "a template cannot be empty"),
        ("{email|upper}", "'{email|upper}' uses unknown filter 'upper' (known: lower, sha256:N)"),
        ("okta-{sub", "'{sub' is missing its closing '}'"),
        ("{a{b}", "'{a' is missing its closing '}'"),
        ("okta-}", "'okta-}' has a '}' with no opening '{' (write '}}' for a literal brace)"),
        ("{}", "'{}' names no claim"),
        ("{|lower}", "'{|lower}' names no claim"),
        ("{a..b}", "'{a..b}': 'a..b' is not a valid claim name or dotted path"),
        ("{ sub }", "'{ sub }': ' sub ' is not a valid claim name or dotted path"),
        ("{sub|}", "'{sub|}' has an empty filter"),
        ("{sub|sha256}", "'{sub|sha256}' needs sha256:N with N from 1 to 64"),
        ("{sub|sha256:0}", "'{sub|sha256:0}' needs sha256:N with N from 1 to 64"),
        ("{sub|sha256:65}", "'{sub|sha256:65}' needs sha256:N with N from 1 to 64"),
        ("{sub|sha256:x}", "'{sub|sha256:x}' needs sha256:N with N from 1 to 64"),
        ("{sub|lower:1}", "'{sub|lower:1}' passes an argument to 'lower', which takes none"),
        ("guest-{random}", "'{random}' is only available to guest providers"),
    ],
)
def test_compile_errors(source: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        compile_template(source)
    assert caught.value.message == message
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("source", "fields", "prefix", "bare"),
    [
        ("okta-{sub}", ("sub",), "okta-", False),
        ("{sub}", ("sub",), "", True),
        ("{sub|lower}", ("sub",), "", False),
        ("{sub}-x", ("sub",), "", False),
        ("{provider}", (), "", False),
        ("corp-{name_id|sha256:24}", ("name_id",), "corp-", False),
        ("{given_name} {family_name} ({given_name})", ("given_name", "family_name"), "", False),
        ("{address.country}", ("address.country",), "", True),
        ("static", (), "static", False),
        ("{{x}}-{sub}", ("sub",), "{x}-", False),
    ],
)
def test_structure(source: str, fields: tuple[str, ...], prefix: str, bare: bool) -> None:
    template = compile_template(source)
    assert template.source == source
    assert template.fields == fields
    assert template.literal_prefix == prefix
    assert template.is_bare_claim is bare
    assert str(template) == source


def test_templates_are_values() -> None:
    assert compile_template("okta-{sub}") == compile_template("okta-{sub}")
    with pytest.raises(AttributeError):
        compile_template("{sub}").source = "{email}"  # type: ignore[misc]


def test_mutable_claims() -> None:
    assert {
        "email",
        "preferred_username",
        "name",
        "given_name",
        "family_name",
        "nickname",
        "phone_number",
        "upn",
        "unique_name",
        "mail",
        "urn:oid:0.9.2342.19200300.100.1.3",
        "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn",
        "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress",
    } <= MUTABLE_CLAIMS
    assert not {"sub", "oid", "name_id", "user_id"} & MUTABLE_CLAIMS


@pytest.mark.parametrize(
    "path", ["email", "EMAIL", "Mail", "profile.email", "urn:oid:0.9.2342.19200300.100.1.3"]
)
def test_mutable_claims_are_found_in_any_case_and_by_last_segment(path: str) -> None:
    assert is_mutable_claim(path)


@pytest.mark.parametrize(
    "path", ["sub", "oid", "email_verified", "urn:oid:0.9.2342.19200300.100.1.1"]
)
def test_stable_claims_are_not_mutable(path: str) -> None:
    assert not is_mutable_claim(path)


@pytest.mark.parametrize(
    ("text", "lossy"),
    [
        ("okta-{sub}", ()),
        ("{sub|sha256:16}", ()),
        ("{sub|sha256:64}", ()),
        ("{sub|lower}", ("lower",)),
        ("{sub|sha256:15}", ("sha256:15",)),
        ("{a|lower}-{b|sha256:8|lower}", ("lower", "sha256:8", "lower")),
    ],
)
def test_lossy_filters_are_listed_as_written(text: str, lossy: tuple[str, ...]) -> None:
    assert compile_template(text).lossy_filters == lossy
