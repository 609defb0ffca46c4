"""SAML 2.0 Web SSO: the service provider's metadata (``GET /v1/saml/{provider}/metadata``),
its Assertion Consumer Service (``POST /v1/saml/{provider}/acs``) and its Single Logout
Service (``GET`` and ``POST /v1/saml/{provider}/slo``).

The sign-in begins like every browser login, at ``GET /v1/login/{provider}``, which sends
the AuthnRequest with an opaque RelayState (the login transaction's id). The IdP's answer
is a cross-site POST: the pre-login cookie (``SameSite=None``) holds the transaction that
binds it to the browser that began the login and to the AuthnRequest.
"""

from __future__ import annotations

from typing import Final

from flask import Blueprint, Response, redirect, request
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response as BaseResponse

from identity.errors import InvalidRequest, UnsupportedMediaType
from identity.providers.saml import MAX_SAML_RESPONSE_BYTES
from identity.providers.saml_logout import LogoutBinding
from identity.sessions import SessionRecord
from identity.upstream_sessions import end_upstream_session, end_upstream_subject
from service.blueprints.login import login_step_response, pre_login_cookies
from service.endpoints import SAML, SAML_ACS, SAML_METADATA, SAML_SLO
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
        in_flight=pre_login_cookies(),
        previous_session=session_cookie(),
    )
    return login_step_response(step)


def _form() -> dict[str, str]:
    """``SAMLResponse`` and ``RelayState``, each at most once."""
    return _single(request.form, ("SAMLResponse", "RelayState"))


@bp.route(SAML_SLO, methods=["GET", "POST"])
def slo(provider: str) -> BaseResponse:
    """Single logout: an IdP-initiated, signed LogoutRequest (HTTP-Redirect query or
    HTTP-POST form) ends the broker sessions of its NameID (of its SessionIndexes, when
    the broker recorded them) and is answered with a LogoutResponse on the IdP's SLO URL.
    The IdP's LogoutResponse to a logout the broker began goes back to the app."""
    saml = runtime().logins.saml_provider(provider)
    if request.method == "POST":
        request.max_content_length = ACS_MAX_BODY
        request.max_form_memory_size = ACS_MAX_BODY
        if request.mimetype not in _FORM_TYPES:
            raise UnsupportedMediaType("the SAML message is posted as a form (HTTP-POST binding)")
        params = _single(request.form, ("SAMLRequest", "SAMLResponse", "RelayState"))
    else:
        params = _single(
            request.args, ("SAMLRequest", "SAMLResponse", "RelayState", "SigAlg", "Signature")
        )
    if "SAMLRequest" not in params:
        if "SAMLResponse" not in params:
            raise InvalidRequest("expected a SAMLRequest or a SAMLResponse")
        # The broker session ended when the app asked for this logout.
        return redirect(runtime().logins.return_to(None) or "/", code=303)
    binding: LogoutBinding = "post" if request.method == "POST" else "redirect"
    seen = saml.logout_request(binding, params, request.query_string.decode("latin-1"))
    broker = runtime().broker
    for index in seen.session_indexes:
        end_upstream_session(broker, provider, index)
    if not seen.session_indexes:
        # No SessionIndex: every session of the NameID (SAML Profiles 4.4.3.3).
        end_upstream_subject(broker, provider, seen.name_id)
    answer = saml.logout_response_url(seen, params.get("RelayState"))
    if answer is None:
        return Response("signed out", mimetype="text/plain")
    return redirect(answer, code=303)


def end_session_url(record: SessionRecord) -> str | None:
    """For a session signed in through SAML: the IdP's SLO URL carrying a signed
    LogoutRequest (``POST /v1/logout`` hands it to the app), or None when the provider
    cannot make one (no SP key, no SingleLogoutService at the IdP)."""
    provider_cfg = runtime().config.provider(record.provider)
    if provider_cfg is None or provider_cfg.kind != "saml":
        return None
    format_claim = record.claims.get("name_id_format")
    return (
        runtime()
        .logins.saml_provider(record.provider)
        .end_session_url(
            name_id=record.subject,
            name_id_format=format_claim if isinstance(format_claim, str) else None,
            session_index=record.upstream_session_id,
        )
    )


def _single(values: MultiDict[str, str], names: tuple[str, ...]) -> dict[str, str]:
    """``names`` from ``values``, each at most once."""
    found: dict[str, str] = {}
    for name in names:
        given = values.getlist(name)
        if len(given) > 1:
            raise InvalidRequest(f"parameter {name!r} given more than once")
        if given:
            found[name] = given[0]
    if len(found.get("RelayState", "")) > _MAX_RELAY_STATE:
        raise InvalidRequest("parameter 'RelayState' is too long")
    return found
