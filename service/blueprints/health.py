"""Liveness, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from service.openapi import served_document
from service.runtime import runtime
from service.version import package_version

log = logging.getLogger("chime_broker.health")

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response:
    rt = runtime()
    # A StoreError answers 503 with Retry-After (service.errors), warned of once per interval.
    rt.store.ping()
    checks: dict[str, Any] = {"config": "ok", "store": "ok"}
    # Reported, not required: the other providers keep working while an IdP's metadata
    # cannot be fetched.
    saml = rt.providers.saml
    if saml:
        checks["saml"] = {
            name: "ok" if sp.ready() else "metadata unavailable" for name, sp in saml.items()
        }
    return jsonify(status="ready", checks=checks)


@bp.get("/metrics")
def metrics() -> Response:
    return runtime().metrics.exposition()


@bp.get("/openapi.json")
def openapi() -> Response:
    document = current_app.extensions.get("chime_broker_openapi")
    if document is None:
        document = served_document(
            public_url=runtime().config.service.public_url, version=package_version()
        )
        current_app.extensions["chime_broker_openapi"] = document
    response = Response(document, mimetype="application/json")
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response
