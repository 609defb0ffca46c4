"""``chime-broker explain``: a dry run of one login (verification, mapping, ``require``
rules, namespaces, STS and Chime patterns) that prints what the broker would decide, as one
JSON object on stdout, without any AWS call."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from typing import Any, NoReturn

from service.cli.config_file import exit_with_report, load_or_exit

USAGE_ERROR = 2
MAX_INPUT_BYTES = 2 * 1024 * 1024

_EPILOG = """\
examples:
  chime-broker explain --config broker.yaml --provider okta --token-file id_token.jwt
  pbpaste | chime-broker explain --config broker.yaml --provider okta --token-file -
  chime-broker explain --config broker.yaml --provider corp --assertion-file response.b64
  echo '{"sub": "00u1abc", "groups": ["chat-users"]}' \\
    | chime-broker explain --config broker.yaml --provider okta --claims-file -

Accepted: exit 0 and {"provider", "exchange", "user_id", "display_name", "tags",
"app_instance_user_arn", "role", ...}. Refused: exit 1 and {"provider", "code", "detail"}
with the code POST /v1/token would answer. Usage errors exit 2.
"""


def _usage_error(message: str) -> NoReturn:
    print(f"chime-broker explain: error: {message}", file=sys.stderr)
    raise SystemExit(USAGE_ERROR)


def _read(path: str, what: str) -> str:
    """The text of ``path`` (``-``: standard input)."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
        else:
            with open(path, "rb") as file:
                data = file.read(MAX_INPUT_BYTES + 1)
    except OSError as e:
        _usage_error(f"cannot read the {what} file {path!r}: {e.strerror or e}")
    if len(data) > MAX_INPUT_BYTES:
        _usage_error(f"the {what} file {path!r} is over {MAX_INPUT_BYTES} bytes")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        _usage_error(f"the {what} file {path!r} is not UTF-8 text")
    if not text:
        _usage_error(f"the {what} file {path!r} is empty")
    return text


def _claims(path: str) -> dict[str, Any]:
    text = _read(path, "claims")
    try:
        claims = json.loads(text)
    except json.JSONDecodeError as e:
        _usage_error(f"the claims file {path!r} is not JSON: {e.msg} (line {e.lineno})")
    if not isinstance(claims, dict):
        _usage_error(f"the claims file {path!r} must hold one JSON object")
    return claims


def _saml_response(text: str) -> str:
    """A SAMLResponse as the IdP posts it: base64 text as given, raw XML encoded."""
    if text.startswith("<"):
        return base64.b64encode(text.encode("utf-8")).decode("ascii")
    return text


def cmd_explain(args: argparse.Namespace) -> int:
    from identity.errors import ConfigError
    from identity.explain import Explainer
    from identity.wiring import verify
    from service.endpoints import Endpoints

    config = load_or_exit(args.config)
    try:
        # Built again (load_or_exit keeps only the config) against a throw-away store.
        verified = verify(config, Endpoints(config.service.public_url))
    except ConfigError as e:
        exit_with_report(args.config, e)
    explainer = Explainer(config, verified)
    name = args.provider
    if config.provider(name) is None:
        known = ", ".join(p.name for p in config.providers) or "none"
        _usage_error(f"no provider named {name!r} in {args.config} (configured: {known})")

    if args.token_file is not None:
        if not explainer.takes_tokens(name):
            _usage_error(
                f"provider {name!r} takes no tokens; use --claims-file"
                + (" or --assertion-file" if explainer.takes_assertions(name) else "")
            )
        result = explainer.token(name, _read(args.token_file, "token"))
    elif args.assertion_file is not None:
        if not explainer.takes_assertions(name):
            _usage_error(
                f"provider {name!r} is not a SAML provider; use --token-file or --claims-file"
            )
        text = _read(args.assertion_file, "assertion")
        result = explainer.assertion(name, _saml_response(text))
    else:
        result = explainer.claims(name, _claims(args.claims_file))
    print(json.dumps(result.body, indent=2, ensure_ascii=False))
    return 0 if result.accepted else 1


def add_explain_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``explain`` on the ``chime-broker`` subcommand parsers."""
    parser = subparsers.add_parser(
        "explain",
        help="dry-run one login: verify, map and show the user id, tags, ARN and role",
        description="Dry-run one login for a provider: verify a token or SAML response (the "
        "provider's JWKS or metadata is fetched as a login would), apply the require rules, "
        "the user-id namespaces and the Chime and STS patterns, and print the outcome as one "
        "JSON object. No AWS call is made, nothing is provisioned or stored. Tokens are "
        "read from a file or standard input (-), never from the command line.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="the broker's YAML config file")
    parser.add_argument("--provider", required=True, help="the provider's name in the config")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--token-file",
        metavar="FILE",
        help="a token as a mobile app sends it to POST /v1/token: an id token, or an access "
        "token for facebook and amazon; - reads standard input",
    )
    source.add_argument(
        "--assertion-file",
        metavar="FILE",
        help="a SAML response as the IdP posts it (base64) or its XML; - reads standard input",
    )
    source.add_argument(
        "--claims-file",
        metavar="FILE",
        help="a JSON object of claims, mapped without any signature (for designing "
        "templates); - reads standard input",
    )
    parser.set_defaults(func=cmd_explain)


__all__ = ["add_explain_parser", "cmd_explain"]
