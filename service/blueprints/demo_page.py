"""The demo page at ``/`` and its static files, served only in ``mode: demo``.

The page is plain HTML, one script and one stylesheet (the page's CSP allows nothing
inline); it talks to the broker only through the public API, like any SPA would.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Final

from flask import Blueprint, Response

from identity.errors import NotFound
from service.runtime import runtime
from service.security import PAGE_CSP

bp = Blueprint("demo_page", __name__)

STATIC_FILES: Final = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


@cache
def _read(name: str) -> bytes:
    return resources.files("service.demo").joinpath("static").joinpath(name).read_bytes()


def _serve(name: str) -> Response:
    """One of the page's files, with the page's CSP; 404 outside ``mode: demo``."""
    mimetype = STATIC_FILES.get(name)
    if not runtime().config.is_demo or mimetype is None:
        raise NotFound("no such resource")
    response = Response(_read(name), content_type=mimetype)
    response.headers["Content-Security-Policy"] = PAGE_CSP
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/")
def page() -> Response:
    return _serve("index.html")


@bp.get("/static/<name>")
def static_file(name: str) -> Response:
    return _serve(name)
