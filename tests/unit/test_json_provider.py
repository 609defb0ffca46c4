"""The broker's JSON provider keeps the encoder of its compact responses rather than
building one per response: what it writes is byte for byte what Flask's own provider
writes, for any JSON value and for the types Flask adds (dates, UUIDs, dataclasses), and
it follows the provider's options when they change."""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass
from typing import Any

from flask import Flask
from hypothesis import given
from hypothesis import strategies as st

from service.app import BrokerFlask

ours = BrokerFlask("ours")
flasks = Flask("flasks")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=25,
)


def _written(app: Flask, value: Any) -> bytes:
    with app.app_context():
        return app.json.response(value).get_data()


@given(json_values)
def test_a_compact_response_is_what_flask_writes(value: Any) -> None:
    assert _written(ours, value) == _written(flasks, value)


@dataclass
class _Point:
    x: int
    y: int


def test_the_types_flask_adds_are_written_as_flask_writes_them() -> None:
    value = {
        "when": datetime.datetime(2026, 12, 6, 9, 30, tzinfo=datetime.UTC),
        "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "point": _Point(1, 2),
        "ünïcode": "é",
    }
    assert _written(ours, value) == _written(flasks, value)
    assert b'"when":"Sun, 06 Dec 2026 09:30:00 GMT"' in _written(ours, value)


def test_a_change_of_the_providers_options_is_followed() -> None:
    app = BrokerFlask("options")
    value = {"b": 1, "a": "é"}
    assert _written(app, value) == b'{"a":"\\u00e9","b":1}\n'
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    assert _written(app, value) == '{"b":1,"a":"é"}\n'.encode()


def test_other_calls_are_flasks_own() -> None:
    app = BrokerFlask("debug")
    app.debug = True  # an indented response, and dumps without options
    value = {"b": [1, 2], "a": None}
    with app.app_context(), flasks.app_context():
        assert (
            app.json.response(value).get_data()
            == b'{\n  "a": null,\n  "b": [\n    1,\n    2\n  ]\n}\n'
        )
        assert app.json.dumps(value) == flasks.json.dumps(value) == '{"a": null, "b": [1, 2]}'
