"""``chime-broker credential-process``: AWS credentials for an AWS SDK profile's
``credential_process``, from ``POST /v1/credentials`` with the broker session that
``chime-broker login`` stored (or ``$CHIME_BROKER_SESSION``).

The printed credentials are kept in a cache file (mode 0600) next to the session and
printed again while more than 15 minutes of them remain.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from service.cli.login import (
    HTTP_TIMEOUT,
    CommandError,
    config_dir,
    normal_broker,
    problem_line,
    read_json,
    session_path,
    write_private,
)

SESSION_ENV = "CHIME_BROKER_SESSION"
REFRESH_BEFORE = timedelta(minutes=15)

EXAMPLES = """\
examples (~/.aws/config):
  [profile chat]
  credential_process = chime-broker credential-process --broker https://b.example --provider okta
"""


class SessionEnded(CommandError):
    """The broker session is missing or has ended: sign in again."""


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        found = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return found if found.tzinfo is not None else found.replace(tzinfo=UTC)


def _relogin(broker: str, provider: str | None) -> str:
    provider_part = f" --provider {provider}" if provider else " --provider PROVIDER"
    return f"run chime-broker login --broker {broker}{provider_part}"


def find_session(broker: str, provider: str | None) -> tuple[str, str | None]:
    """The session token and its provider: ``$CHIME_BROKER_SESSION``, else the stored file."""
    from_env = os.environ.get(SESSION_ENV)
    if from_env:
        return from_env, provider
    if provider is not None:
        candidates = [session_path(broker, provider)]
    else:
        candidates = sorted(config_dir().glob("session-*.json"))
    found = [
        stored
        for stored in (read_json(path) for path in candidates)
        if stored is not None and stored.get("broker") == broker and stored.get("token")
    ]
    if len(found) > 1:
        raise CommandError(f"several sessions for {broker}: choose one with --provider")
    if not found:
        raise SessionEnded(_relogin(broker, provider))
    stored = found[0]
    provider = provider or stored.get("provider")
    expires_at = _parse_time(stored.get("expires_at"))
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise SessionEnded(_relogin(broker, provider))
    return str(stored["token"]), provider


def cache_path(broker: str, token: str) -> Path:
    digest = hashlib.sha256(f"{broker}\0{token}".encode()).hexdigest()[:32]
    return config_dir() / f"credentials-{digest}.json"


def cached(path: Path) -> dict[str, Any] | None:
    found = read_json(path)
    if found is None:
        return None
    expiration = _parse_time(found.get("Expiration"))
    if expiration is None or expiration - datetime.now(UTC) <= REFRESH_BEFORE:
        return None
    keys = ("AccessKeyId", "SecretAccessKey", "SessionToken")
    if found.get("Version") != 1 or not all(isinstance(found.get(key), str) for key in keys):
        return None
    return found


def fetch(broker: str, token: str, provider: str | None) -> dict[str, Any]:
    import requests

    response = requests.post(
        f"{broker}/v1/credentials",
        headers={"Authorization": f"Bearer {token}"},
        timeout=HTTP_TIMEOUT,
    )
    if response.status_code == 401:
        raise SessionEnded(_relogin(broker, provider))
    if response.status_code != 200:
        raise CommandError(problem_line(response))
    try:
        credentials = response.json()["credentials"]
        return {
            "Version": 1,
            "AccessKeyId": credentials["access_key_id"],
            "SecretAccessKey": credentials["secret_access_key"],
            "SessionToken": credentials["session_token"],
            "Expiration": credentials["expiration"],
        }
    except (ValueError, KeyError, TypeError) as error:
        raise CommandError("the broker's answer has no credentials") from error


def credentials(broker: str, provider: str | None) -> dict[str, Any]:
    token, provider = find_session(broker, provider)
    path = cache_path(broker, token)
    found = cached(path)
    if found is not None:
        return found
    try:
        fresh = fetch(broker, token, provider)
    except SessionEnded:
        path.unlink(missing_ok=True)
        raise
    write_private(path, fresh)
    return fresh


def run_credential_process(args: argparse.Namespace) -> int:
    import requests

    try:
        broker = normal_broker(args.broker)
        print(json.dumps(credentials(broker, args.provider)))
    except CommandError as error:
        print(f"chime-broker credential-process: {error}", file=sys.stderr)
        return 1
    except requests.RequestException as error:
        print(
            f"chime-broker credential-process: could not reach {args.broker}: "
            f"{type(error).__name__}",
            file=sys.stderr,
        )
        return 1
    except OSError as error:
        print(f"chime-broker credential-process: {error}", file=sys.stderr)
        return 1
    return 0


def add_credential_process_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = subparsers.add_parser(
        "credential-process",
        help="print AWS credentials for an AWS SDK profile's credential_process",
        description="Print AWS credentials (the credential_process format) from the broker "
        f"session stored by chime-broker login, or from ${SESSION_ENV}.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--broker", required=True, help="the broker's base URL")
    parser.add_argument(
        "--provider", help="the provider signed in with (needed when several are stored)"
    )
    parser.set_defaults(func=run_credential_process)
