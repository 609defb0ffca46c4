"""The OpenAPI document a broker serves: the packaged contract (``service/openapi.json``)
with this install's version as ``info.version`` and the broker's ``service.public_url`` as
its one server."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def packaged_document() -> dict[str, Any]:
    """``service/openapi.json`` as shipped: no ``servers``, a placeholder ``info.version``."""
    document: dict[str, Any] = json.loads(
        resources.files("service").joinpath("openapi.json").read_bytes()
    )
    return document


def served_document(*, public_url: str, version: str) -> bytes:
    """The document for one broker: ``version`` and ``public_url`` filled in."""
    packaged = packaged_document()
    info = {**packaged.pop("info"), "version": version}
    server = {"url": public_url.rstrip("/"), "description": "This broker (service.public_url)."}
    document = {"openapi": packaged.pop("openapi"), "info": info, "servers": [server], **packaged}
    return json.dumps(document, indent=2).encode()
