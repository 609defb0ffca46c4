"""The broker's HTTP layer (Flask). ``create_app(config)`` (in ``service.app``) is the one
place the app is assembled.

Importing ``service`` stays light: ``chime-broker serve`` must set up gevent and
multi-process metrics before Flask, botocore or prometheus_client are imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from service.app import create_app

        return create_app
    raise AttributeError(f"module 'service' has no attribute {name!r}")
