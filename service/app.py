"""``create_app(config)``: the one place the broker's Flask app is assembled."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Request, Response
from flask.json.provider import DefaultJSONProvider
from flask.sessions import SessionInterface, SessionMixin

from identity.aws import AwsClients
from identity.config.document import BrokerConfig
from identity.store import Store
from identity.wiring import build_services
from service import errors, logs, metrics, pages, security
from service.blueprints import backchannel, credentials, demo_page, health, login, saml, token
from service.endpoints import Endpoints
from service.logs import configure_logging
from service.runtime import Runtime


def _reveal(value: object) -> str:
    reveal = getattr(value, "get_secret_value", None)
    return str(reveal() if reveal is not None else value)


def _secrets(config: BrokerConfig) -> list[str]:
    """Every secret value in the config, so the log redactor can remove it anywhere."""
    found: list[str] = []
    found.extend(config.service.secret_keys)
    for provider in config.providers:
        for name in ("client_secret", "app_secret", "private_key", "sp_key"):
            value = getattr(provider, name, None)
            if value is not None:
                found.append(_reveal(value))
        invite = getattr(provider, "invite", None)
        shared = getattr(invite, "shared_secret", None) if invite is not None else None
        if shared is not None:
            found.append(_reveal(shared))
    return found


def worker_concurrency() -> int:
    """Requests one worker serves at once (set by ``chime-broker serve``): the size of each
    AWS client's connection pool."""
    try:
        return max(1, int(os.environ.get("CHIME_BROKER_CONCURRENCY", "32")))
    except ValueError:
        return 32


_COMPACT: dict[str, Any] = {"separators": (",", ":")}


class BrokerJSONProvider(DefaultJSONProvider):
    """Flask's JSON, with the encoder of its compact responses built once.

    ``json.dumps`` builds a new ``JSONEncoder`` at every call that passes an option, as
    Flask's ``dumps`` always does; here the encoder for the options ``response`` passes
    out of debug mode is kept, and built again only if the provider's own options change.
    Any other call is Flask's.
    """

    _encoder: json.JSONEncoder | None = None
    _encoder_options: tuple[object, ...] = ()

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        if kwargs != _COMPACT:
            return super().dumps(obj, **kwargs)
        options = (self.default, self.ensure_ascii, self.sort_keys)
        encoder = self._encoder
        if encoder is None or options != self._encoder_options:
            encoder = json.JSONEncoder(
                default=self.default,
                ensure_ascii=self.ensure_ascii,
                sort_keys=self.sort_keys,
                separators=_COMPACT["separators"],
            )
            self._encoder, self._encoder_options = encoder, options
        return encoder.encode(obj)


class BrokerFlask(Flask):
    """Flask, for an app whose views and hooks are all synchronous."""

    json_provider_class = BrokerJSONProvider

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        # Flask would ask of every hook, on every request, whether it is a coroutine.
        return func


class NoSessions(SessionInterface):
    """Flask's ``session`` is never opened nor saved."""

    def open_session(self, app: Flask, request: Request) -> SessionMixin | None:
        return None

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        return None


def create_app(
    config: BrokerConfig,
    *,
    store: Store | None = None,
    clients: AwsClients | None = None,
    clock: Callable[[], float] = time.time,
) -> Flask:
    """Build the broker for an already validated ``config``.

    Everything a request needs is built here, once; tests may pass their own ``store``,
    ``clients`` (e.g. with a Stubber installed on a client moto lacks) and ``clock`` (to
    reach the end of a session without waiting for it).
    """
    configure_logging(_secrets(config))
    app = BrokerFlask(__name__, static_folder=None)
    app.config["JSON_SORT_KEYS"] = False
    # The broker's state is in its own sealed cookies and store: Flask's signed-cookie
    # session would only cost a key derivation per request.
    app.session_interface = NoSessions()

    endpoints = Endpoints(config.service.public_url)
    services = build_services(
        config,
        endpoints,
        store=store,
        clients=clients,
        clock=clock,
        max_pool_connections=worker_concurrency(),
    )
    security.init_app(app, config)
    request_metrics = metrics.init_app(app, providers=[p.name for p in config.providers])
    logs.init_app(app)
    errors.init_app(app, clock=clock)
    app.extensions["chime_broker"] = Runtime(
        config=config,
        store=services.store,
        metrics=request_metrics,
        broker=services.broker,
        logins=services.logins,
        providers=services.providers,
        endpoints=endpoints,
    )
    app.register_blueprint(health.bp)
    app.register_blueprint(login.bp)
    app.register_blueprint(saml.bp)
    app.register_blueprint(token.bp)
    app.register_blueprint(credentials.bp)
    app.register_blueprint(backchannel.bp)
    app.register_blueprint(demo_page.bp)
    app.register_blueprint(pages.bp)
    return app
