"""``chime-broker demo``: the broker with everything it needs, in one process, on loopback."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from identity.config import BrokerConfig, load_config
from identity.errors import ConfigError

DEMO_USERS = {
    "ada": {"name": "Ada Lovelace", "email": "ada@example.com", "email_verified": True,
            "groups": ["chat-users"]},
    "grace": {"name": "Grace Hopper", "email": "grace@example.com", "email_verified": True,
              "groups": ["chat-users", "admins"]},
}


def checkout_demo_config() -> Path:
    """config/demo.yaml of the source tree the demo runs from."""
    return Path(__file__).resolve().parents[2] / "config" / "demo.yaml"


def run_demo(*, config_path: str | None, host: str, port: int, idp_port: int) -> None:
    from moto.server import ThreadedMotoServer

    from service import create_app
    from service.demo.aws_world import bootstrap
    from service.demo.dev_idp import DevIdentityProvider

    recordings = tempfile.mkdtemp(prefix="chime-broker-demo-")
    os.environ["MOTO_RECORDER_FILEPATH"] = os.path.join(recordings, "moto_recording")
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    moto_host, moto_port = moto.get_host_and_port()
    endpoint = f"http://{moto_host}:{moto_port}"
    world = bootstrap(endpoint)
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": world.region,
            "DEMO_IDENTITY_POOL_ID": world.identity_pool_id,
            "DEMO_DEVELOPER_PROVIDER_NAME": world.developer_provider_name,
            "DEMO_USER_ROLE_ARN": world.user_role_arn,
            "DEMO_APP_INSTANCE_ARN": world.app_instance_arn,
            "DEMO_IDP_ISSUER": f"http://{host}:{idp_port}",
            "DEMO_PUBLIC_URL": f"http://{host}:{port}",
        }
    )
    os.environ.pop("AWS_PROFILE", None)
    path = config_path or str(checkout_demo_config())
    try:
        config: BrokerConfig = load_config(path)
    except ConfigError as e:
        moto.stop()
        print("\n".join(e.problems), file=sys.stderr)
        raise SystemExit(1) from None
    if not config.is_demo:
        moto.stop()
        print(f"{path}: the embedded parts start only with mode: demo", file=sys.stderr)
        raise SystemExit(2)

    idp = DevIdentityProvider(host=host, port=idp_port)
    for sub, claims in DEMO_USERS.items():
        idp.add_user(sub, **claims)
    for provider in config.providers:
        client_id = getattr(provider, "client_id", None)
        if provider.kind == "oidc" and client_id:
            idp.register_client(
                client_id, redirect_uris=(f"http://{host}:{port}/v1/callback/{provider.name}",)
            )
    idp.start()

    app = create_app(config)
    print(
        f"\nChime Identity Broker demo\n"
        f"  broker:        http://{host}:{port}/\n"
        f"  demo IdP:      {idp.issuer}  (users: {', '.join(DEMO_USERS)})\n"
        f"  in-process AWS: {endpoint}  (identity pool {world.identity_pool_id})\n\n"
        f"  try: curl -s http://{host}:{port}/v1/providers\n"
        f"       curl -s http://{host}:{port}/healthz\n\n"
        f"Ctrl-C stops everything.\n",
        flush=True,
    )
    from werkzeug.serving import run_simple

    try:
        run_simple(host, port, app, threaded=True, use_reloader=False)
    finally:
        idp.stop()
        moto.stop()
