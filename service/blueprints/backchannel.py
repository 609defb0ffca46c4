"""OpenID Connect Back-Channel Logout 1.0: ``POST /v1/backchannel-logout/{provider}``.

The identity provider's server (not a browser: no cookie, no Origin) posts the form
``logout_token=<JWT>`` when a user's session there ends. The answer is 200 with an empty
body once the token verified and the sessions it names ended (also when there were none),
else a 400 problem (``invalid_logout_token``, or ``invalid_request`` for a malformed form);
never cached (section 2.8). Registered at the provider as its ``backchannel_logout_uri``.
"""

from __future__ import annotations

from typing import Final

from flask import Blueprint, Response, current_app, request
from flask.blueprints import BlueprintSetupState

from identity.backchannel_logout import BackChannelLogout
from identity.errors import InvalidRequest, UnsupportedMediaType
from service.endpoints import API, BACKCHANNEL_LOGOUT
from service.runtime import Runtime

bp = Blueprint("backchannel", __name__, url_prefix=API)

_EXTENSION: Final = "chime_broker_backchannel_logout"
_FORM_TYPE: Final = "application/x-www-form-urlencoded"


@bp.record_once
def _build(state: BlueprintSetupState) -> None:
    # Built once, with the app: every oidc provider's logout-token verifier.
    runtime: Runtime = state.app.extensions["chime_broker"]
    state.app.extensions[_EXTENSION] = BackChannelLogout(runtime.broker)


@bp.post(BACKCHANNEL_LOGOUT)
def backchannel_logout(provider: str) -> Response:
    if request.mimetype != _FORM_TYPE:
        raise UnsupportedMediaType(f"the logout token is posted as {_FORM_TYPE}")
    tokens = request.form.getlist("logout_token")
    if len(tokens) != 1:
        raise InvalidRequest("send exactly one logout_token")
    logouts: BackChannelLogout = current_app.extensions[_EXTENSION]
    logouts.log_out(provider, tokens[0])
    response = Response(status=200)
    response.headers["Cache-Control"] = "no-store"
    return response
