"""``chime-broker demo``: the broker with everything it needs, in one process, on loopback.

The launcher starts an in-process AWS (moto) with the identity pool and roles created, the
development OIDC provider with the demo users, and the broker in ``mode: demo``; it prints
the browser and ``curl`` walkthroughs and serves until interrupted.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import yaml

from identity.config.document import BrokerConfig, build_config, load_config
from identity.errors import ConfigError
from identity.mapping import app_instance_user_arn
from identity.providers.oidc import OidcConfig
from service.cli.config_file import exit_with_report

if TYPE_CHECKING:
    from service.demo.aws_world import AwsResources
    from service.demo.dev_idp import DevIdentityProvider

DEMO_USERS: Mapping[str, Mapping[str, Any]] = {
    "ada": {
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "email_verified": True,
        "groups": ["chat-users"],
    },
    "grace": {
        "name": "Grace Hopper",
        "email": "grace@example.com",
        "email_verified": True,
        "groups": ["chat-users", "admins"],
    },
}


def checkout_demo_config() -> Path:
    """The demo config shipped with the package (config/demo.yaml in a source tree)."""
    return Path(__file__).resolve().with_name("demo.yaml")


def _base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _not_ready(environ: Any, start_response: Any) -> list[bytes]:
    """The WSGI app of the demo's server until the broker is built (it never serves)."""
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"starting\n"]


def _moved(value: str, old: str, new: str) -> str:
    """``value`` with the origin ``old`` replaced by ``new`` when it is, or starts, a URL there."""
    if value == old or value.startswith(old + "/"):
        return new + value[len(old) :]
    return value


def demo_config(
    path: str, *, world: AwsResources, public_url: str, idp_issuer: str
) -> BrokerConfig:
    """The demo config at ``path`` as the running demo needs it.

    The file's AWS values are placeholders: the identity pool, developer provider name,
    user role and app instance come from what ``bootstrap`` created. The broker's own URL
    (``public_url`` and the origins and return URLs on it) moves to the port actually
    bound, and every ``oidc`` provider's issuer becomes the development IdP.
    Raises ``ConfigError`` listing every problem.
    """
    with open(path, encoding="utf-8") as file:
        document: dict[str, Any] = yaml.safe_load(file)
    aws = document.setdefault("aws", {})
    aws["region"] = world.region
    if isinstance(aws.get("cognito"), dict):
        aws["cognito"]["identity_pool_id"] = world.identity_pool_id
        aws["cognito"]["developer_provider_name"] = world.developer_provider_name
    if isinstance(aws.get("sts"), dict):
        aws["sts"]["role_arn"] = world.user_role_arn
    document.setdefault("chime", {})["app_instance_arn"] = world.app_instance_arn

    service = document.setdefault("service", {})
    old = str(service.get("public_url", public_url)).rstrip("/")
    service["public_url"] = public_url
    for key in ("allowed_origins", "allowed_return_to"):
        service[key] = [_moved(str(url), old, public_url) for url in service.get(key) or []]
    if service.get("default_return_to"):
        service["default_return_to"] = _moved(str(service["default_return_to"]), old, public_url)
    for provider in document.get("providers") or []:
        if isinstance(provider, dict) and provider.get("kind") == "oidc":
            provider["issuer"] = idp_issuer
    return build_config(document, source=path)


def _register_clients(config: BrokerConfig, idp: DevIdentityProvider) -> None:
    """Every oidc provider's ``client_id`` (the broker's redirect login) and its other
    ``audiences`` (mobile apps, which only receive tokens) become clients of the IdP."""
    base = config.service.public_url.rstrip("/")
    # The IdP's sign-out sends the person back there only when it is registered.
    signed_out = config.service.default_return_to
    for provider in config.providers:
        if not isinstance(provider, OidcConfig):
            continue
        idp.register_client(
            provider.client_id,
            redirect_uris=(f"{base}/v1/callback/{provider.name}",),
            post_logout_redirect_uris=(signed_out,) if signed_out else (),
        )
        for audience in provider.audiences:
            if audience != provider.client_id:
                idp.register_client(audience)


def walkthrough(config: BrokerConfig, idp: DevIdentityProvider, aws_endpoint: str) -> str:
    """What ``make demo`` prints: where everything runs, and the steps to try."""
    base = config.service.public_url.rstrip("/")
    users = ", ".join(f"{sub} ({claims['name']})" for sub, claims in DEMO_USERS.items())
    lines = [
        "",
        "Chime Identity Broker demo: everything runs on this machine, on loopback.",
        "",
        f"  broker          {base}/",
        f"  demo IdP        {idp.issuer}  (users: {users})",
        f"  in-process AWS  {aws_endpoint}  (moto)",
        "",
    ]
    oidc = [p for p in config.providers if isinstance(p, OidcConfig)]
    if not oidc:
        lines += [f"  curl -s {base}/v1/providers", "", "Ctrl-C stops everything.", ""]
        return "\n".join(lines)
    provider = oidc[0]
    ada = DEMO_USERS["ada"]
    user_id = provider.user_id_template.render(
        {**ada, "sub": "ada", "iss": idp.issuer}, provider=provider.name
    )
    arn = app_instance_user_arn(config.chime.app_instance_arn, user_id)
    mobile = next((a for a in provider.audiences if a != provider.client_id), provider.client_id)
    body = f'{{\\"provider\\": \\"{provider.name}\\", \\"id_token\\": \\"$ID_TOKEN\\"}}'
    lines += [
        "Sign in with a browser:",
        f"  1. Open {base}/",
        f'  2. Click "{provider.display_name}": the broker sends you to the identity provider.',
        f'  3. Pick "{ada["name"]}" and click "Sign in" ("Cancel" shows a refused login).',
        f"  4. Back on the page you see {ada['name']}, her app_instance_user_arn",
        f"       {arn}",
        "     (the ChimeBearer of every messaging call) and the credentials' expiry",
        "     counting down (the in-process Cognito issues them for 90 seconds).",
        '  5. "Refresh credentials" vends fresh ones for the same user; "Sign out" ends',
        "     the broker session.",
        "",
        "Sign in from a mobile app (the token exchange), with curl:",
        "  # the id token that the app's own sign-in SDK would hand it",
        f"  ID_TOKEN=$(curl -s -X POST {idp.issuer}/dev/id-token -d sub=ada "
        f"-d client_id={shlex.quote(mobile)} \\",
        "    | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"id_token\"])')",
        f"  curl -s -X POST {base}/v1/token -H 'Content-Type: application/json' \\",
        f'    -d "{body}"',
        "  # broker_session.token of that answer buys fresh credentials until you log out:",
        f'  curl -s -X POST {base}/v1/credentials -H "Authorization: Bearer $BROKER_SESSION"',
        f'  curl -s -X POST {base}/v1/logout -H "Authorization: Bearer $BROKER_SESSION"',
        "",
        f"  Also: curl -s {base}/v1/providers    curl -s {base}/openapi.json",
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


def _stop_on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def run_demo(*, config_path: str | None, host: str, port: int, idp_port: int) -> None:
    """Start everything, print the walkthrough and serve until Ctrl-C or SIGTERM."""
    path = config_path or str(checkout_demo_config())
    try:
        declared = load_config(path)
    except ConfigError as e:
        exit_with_report(path, e)
    if not declared.is_demo:
        print(f"{path}: the embedded parts start only with mode: demo", file=sys.stderr)
        raise SystemExit(2)

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    # moto and Werkzeug log a line per request; the broker's own JSON access log is enough.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    recordings = tempfile.TemporaryDirectory(prefix="chime-broker-demo-")
    # moto reads this when it is first imported: keep its recording out of the working tree.
    os.environ["MOTO_RECORDER_FILEPATH"] = os.path.join(recordings.name, "moto_recording")
    from moto.server import ThreadedMotoServer
    from werkzeug.serving import make_server

    from service import create_app
    from service.demo.aws_world import bootstrap
    from service.demo.dev_idp import DevIdentityProvider

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    idp = DevIdentityProvider(host=host, port=idp_port)
    moto.start()
    try:
        moto_host, moto_port = moto.get_host_and_port()
        endpoint = f"http://{moto_host}:{moto_port}"
        world = bootstrap(endpoint)
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(name, None)
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_REGION": world.region,
            }
        )
        try:
            idp.start()
        except OSError as e:
            print(f"the demo IdP cannot listen on {host}:{idp_port}: {e.strerror}", file=sys.stderr)
            raise SystemExit(1) from None
        for sub, claims in DEMO_USERS.items():
            idp.add_user(sub, **claims)
        try:
            # Bound before the config is built, so that with port 0 the URLs name the port
            # actually bound; the app is installed once it exists.
            server = make_server(host, port, _not_ready, threaded=True)
        except OSError as e:
            print(f"the broker cannot listen on {host}:{port}: {e.strerror}", file=sys.stderr)
            raise SystemExit(1) from None
        try:
            config = demo_config(
                path,
                world=world,
                public_url=_base_url(host, server.server_port),
                idp_issuer=idp.issuer,
            )
            _register_clients(config, idp)
            server.app = create_app(config)
        except ConfigError as e:
            server.server_close()
            exit_with_report(path, e)
        print(walkthrough(config, idp, endpoint), flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    finally:
        idp.stop()
        moto.stop()
        recordings.cleanup()
