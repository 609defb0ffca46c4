"""The log redactor: its quick check (substring searches before the patterns) must never
let through what the patterns would have replaced."""

from __future__ import annotations

import logging

from hypothesis import given, settings
from hypothesis import strategies as st

from service.logs import REDACTED, Redactor, replace_patterns

SECRET = "config-secret-value"

# Pieces that make the patterns match, nearly match, or match only case-insensitively
# (including the non-ASCII forms Python's regex case folding accepts: long s, Kelvin sign).
PIECES = [
    "token", "Token", "TOKEN", "id_token", "access_token", "code", "CoDe", "invite",
    "password", "SAMLResponse", "client_secret", "SecretAccessKey", "session_token",
    "acce\u017fs_token", "to\u212aen", "pa\u017f\u017fword", "=", ":", '"', " ", "\t",
    "\x1c", "\n", ",", "&", "}",
    "eyJ", "eyJhbGciOiJSUzI1NiJ9", ".", "abc", "AKIA", "ASIA", "AIDA", "AROA",
    "ABCDEFGHIJKLMNOP", "0123456789", "Bearer ", "basic ", "BEARER\t", "x" * 40,
    "A" * 120, "+/", "/v1/token", "arn:aws:iam::123456789012:role/r", "é", SECRET,
]  # fmt: skip


def _reference(text: str, secrets: list[str]) -> str:
    """Every secret and every pattern applied, with no shortcut."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return replace_patterns(text)


texts = st.lists(st.sampled_from(PIECES), max_size=14).map("".join)


@settings(max_examples=600, deadline=None)
@given(texts)
def test_redact_agrees_with_every_pattern_applied(text: str) -> None:
    redactor = Redactor([SECRET])
    assert redactor.redact(text) == _reference(text, [SECRET])


@settings(max_examples=300, deadline=None)
@given(texts, st.dictionaries(st.sampled_from(["a", "code", "route", "tags"]), texts, max_size=4))
def test_a_record_is_redacted_as_its_pieces_would_be(message: str, fields: dict[str, str]) -> None:
    redactor = Redactor([SECRET])
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "%s", (message,), None)
    record.fields = {**fields, "status": 200, "tags": {"k": "v"}}
    redactor.filter(record)
    assert record.getMessage() == _reference(message, [SECRET])
    expected = {k: _reference(v, [SECRET]) for k, v in fields.items()}
    assert record.fields == {**expected, "status": 200, "tags": {"k": "v"}}


def test_field_names_are_not_redacted_only_values() -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "refused", None, None)
    record.fields = {"code": "invalid_token", "route": "/v1/token", "origin": "token"}
    Redactor([SECRET]).filter(record)
    assert record.fields == {"code": "invalid_token", "route": "/v1/token", "origin": "token"}


def test_each_kind_of_secret_is_redacted_in_a_field() -> None:
    cases = {
        "jwt": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
        "key": "ASIAABCDEFGHIJKLMNOP",
        "auth": "Bearer abcdefgh12345678",
        "named": 'session_token="abc"',
        "blob": "Q" * 240,
        "config": f"x {SECRET} y",
        "folded": "pa\u017f\u017fword=abc",
    }
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "m", None, None)
    record.fields = dict(cases)
    Redactor([SECRET]).filter(record)
    for name, value in record.fields.items():
        assert REDACTED in value, name
        assert value == _reference(cases[name], [SECRET]), name
