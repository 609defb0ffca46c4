"""SAML 2.0 Web SSO: the service provider's metadata (``GET /v1/saml/{provider}/metadata``)
and its Assertion Consumer Service (``POST /v1/saml/{provider}/acs``).

The sign-in begins like every browser login, at ``GET /v1/login/{provider}``, which sends
the AuthnRequest with an opaque RelayState (the login transaction's id). The IdP's answer
is a cross-site POST: the pre-login cookie (``SameSite=None``) binds it to the browser that
began the login; the stored transaction binds it to the AuthnRequest.
"""

from __future__ import annotations

from typing import Final

from flask import Blueprint, Response, request
from werkzeug.wrappers import Response as BaseResponse

from identity.errors import InvalidRequest, UnsupportedMediaType
from identity.providers.saml import MAX_SAML_RESPONSE_BYTES
from service.blueprints.login import login_step_response, pre_login_value
from service.endpoints import SAML, SAML_ACS, SAML_METADATA
from service.runtime import runtime
from service.sessions import session_cookie

bp = Blueprint("saml", __name__, url_prefix=SAML)

SAML_METADATA_TYPE: Final = "application/samlmetadata+xml"
# The ACS alone takes bodies this large: a signed response carries certificates.
ACS_MAX_BODY: Final = MAX_SAML_RESPONSE_BYTES
_FORM_TYPES: Final = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
_MAX_RELAY_STATE: Final = 4096


@bp.get(SAML_METADATA)
def metadata(provider: str) -> Response:
    """The SP metadata to register at the IdP; URLs come from ``service.public_url``."""
    xml = runtime().logins.saml_provider(provider).metadata()
    response = Response(xml, mimetype=SAML_METADATA_TYPE)
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@bp.post(SAML_ACS)
def acs(provider: str) -> BaseResponse:
    """The IdP's HTTP-POST answer: a session and the way back to ``return_to``, a native
    app's one-time code, an error redirect, or a problem (see ``BrowserLogins.complete_saml``)."""
    # Before the form is parsed: the app-wide service.max_body would refuse real responses.
    request.max_content_length = ACS_MAX_BODY
    request.max_form_memory_size = ACS_MAX_BODY
    if request.mimetype not in _FORM_TYPES:
        raise UnsupportedMediaType("the SAML response is posted as a form (HTTP-POST binding)")
    form = _form()
    step = runtime().logins.complete_saml(
        provider,
        form,
        pre_login=pre_login_value(),
        previous_session=session_cookie(),
    )
    return login_step_response(step)


def _form() -> dict[str, str]:
    """``SAMLResponse`` and ``RelayState``, each at most once."""
    found: dict[str, str] = {}
    for name in ("SAMLResponse", "RelayState"):
        values = request.form.getlist(name)
        if len(values) > 1:
            raise InvalidRequest(f"parameter {name!r} given more than once")
        if values:
            found[name] = values[0]
    if len(found.get("RelayState", "")) > _MAX_RELAY_STATE:
        raise InvalidRequest("parameter 'RelayState' is too long")
    return found
