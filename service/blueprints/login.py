"""Where a browser starts a login: the provider list the SPA draws its buttons from."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from service.runtime import runtime

bp = Blueprint("login", __name__, url_prefix="/v1")


@bp.get("/providers")
def providers() -> Response:
    config = runtime().config
    base = config.service.public_url.rstrip("/")
    return jsonify(
        [
            {
                "name": p.name,
                "kind": p.kind,
                "display_name": p.display_name,
                "login_url": f"{base}/v1/login/{p.name}",
            }
            for p in config.providers
        ]
    )
