"""Request bodies, parsed by strict models: JSON objects only, no unknown or wrong-typed
fields, bounded strings. Every failure is a 400/415 problem, never a 500."""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

from flask import request
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from identity.errors import InvalidRequest, UnsupportedMediaType

ProviderName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
TokenString = Annotated[str, StringConstraints(min_length=1, max_length=65536)]
ShortString = Annotated[str, StringConstraints(min_length=1, max_length=512)]


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class TokenRequest(RequestBody):
    """``POST /v1/token``."""

    provider: ProviderName
    id_token: TokenString | None = None
    access_token: TokenString | None = None
    nonce: ShortString | None = None
    code: ShortString | None = None
    code_verifier: ShortString | None = None


class GuestRequest(RequestBody):
    """``POST /v1/guest``.  There is no field for a user id: a guest never chooses it."""

    provider: ProviderName
    # Accepted up to 1 KiB, then cleaned and cut to Chime's 100 characters.
    display_name: Annotated[str, StringConstraints(max_length=1024)] | None = None
    invite: TokenString | None = None


Body = TypeVar("Body", bound=RequestBody)


def parse_json_body(model: type[Body]) -> Body:
    """The request's JSON body as ``model``, or a problem."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("send the body as application/json")
    raw = request.get_data(cache=False)
    try:
        data: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidRequest("the body is not valid JSON") from e
    except RecursionError as e:
        raise InvalidRequest("the body is nested too deeply") from e
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = []
        for error in e.errors(include_url=False, include_input=False):
            where = ".".join(str(p) for p in error["loc"]) or "body"
            message = {
                "extra_forbidden": "unknown field",
                "missing": "required",
                "string_type": "must be a string",
                "string_too_long": "too long",
                "string_too_short": "must not be empty",
            }.get(error["type"], error["msg"])
            problems.append(f"{where}: {message}")
        raise InvalidRequest("; ".join(problems)) from e
