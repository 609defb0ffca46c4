"""``${ssm:/PATH/NAME}`` and ``${secretsmanager:NAME-OR-ARN[#KEY]}``: secrets kept by AWS,
read when the config is loaded.

The region is the document's ``aws.region``, written plainly or as one ``${env:NAME}``
(read before the document is validated); a secret's ARN names its own region. Endpoints
and credentials come from the SDK's own configuration (default chain,
``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_SSM``, …). Each client is built on first use,
once per load, and each parameter or secret is read once per load however often it is
referenced. Under ``placeholders`` (``check --offline``) nothing is read: every such
reference stands in as a placeholder. A value is never logged nor put in a message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Literal

from identity.config.source import References, Resolver, Unresolved
from identity.config.types import REGION

if TYPE_CHECKING:
    from types_boto3_secretsmanager.client import SecretsManagerClient
    from types_boto3_ssm.client import SSMClient

Service = Literal["ssm", "secretsmanager"]
SSM: Final = "ssm"
SECRETS_MANAGER: Final = "secretsmanager"

CONNECT_TIMEOUT: Final = 3.0
READ_TIMEOUT: Final = 5.0
MAX_ATTEMPTS: Final = 3

_REGION: Final = re.compile(REGION)
_ENV_REFERENCE: Final = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
_SECRET_ARN_REGION: Final = re.compile(rf"arn:aws(?:-[a-z]+)*:secretsmanager:({REGION}):")
_NOT_FOUND: Final = frozenset({"ParameterNotFound", "ResourceNotFoundException"})


def config_region(document: Any, references: References) -> tuple[str | None, str]:
    """The document's ``aws.region`` (resolving one ``${env:NAME}``), or None and why not."""
    aws = document.get("aws") if isinstance(document, dict) else None
    region = aws.get("region") if isinstance(aws, dict) else None
    if not isinstance(region, str):
        return None, "aws.region is not set"
    reference = _ENV_REFERENCE.fullmatch(region)
    if reference is not None:
        env = references.resolvers.get("env")
        try:
            region = env(reference[1]) if env is not None else None
        except Unresolved:
            region = None
        if region is None:
            return None, "aws.region is not resolved"
    if _REGION.fullmatch(region) is None:
        return None, "aws.region is not a valid region"
    return region, ""


class _Reader:
    """One AWS service's reads for one load: clients built on first use (one per region),
    every answer (or failure) kept so nothing is asked twice."""

    def __init__(self, service: Service, region: str | None, no_region: str) -> None:
        self.service = service
        self.region = region
        self.no_region = no_region
        self._clients: dict[str, Any] = {}
        self._answers: dict[str, str | Unresolved] = {}

    def _client(self, region: str) -> Any:
        client = self._clients.get(region)
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                region_name=region,
                connect_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
                retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
                user_agent_extra="chime-identity-broker",
            )
            session = boto3.session.Session(region_name=region)
            if self.service == SSM:
                client = session.client("ssm", config=config)
            else:
                client = session.client("secretsmanager", config=config)
            self._clients[region] = client
        return client

    def read(self, what: str, call: Callable[[Any], str], region: str | None = None) -> str:
        """``call(client)``, once per ``what``; a failure is ``Unresolved`` naming ``what``."""
        answer = self._answers.get(what)
        if answer is None:
            answer = self._answers[what] = self._fetch(what, call, region or self.region)
        if isinstance(answer, Unresolved):
            raise Unresolved(answer.message)
        return answer

    def _fetch(self, what: str, call: Callable[[Any], str], region: str | None) -> str | Unresolved:
        from botocore.exceptions import BotoCoreError, ClientError

        if region is None:
            return Unresolved(f"cannot read {what}: {self.no_region}")
        try:
            return call(self._client(region))
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "error")
            if code in _NOT_FOUND:
                return Unresolved(f"{what} not found (region {region})")
            return Unresolved(f"could not read {what}: {code}: {error.get('Message', '')}")
        except (BotoCoreError, ValueError) as exc:
            return Unresolved(f"could not read {what}: {type(exc).__name__}: {exc}")
        except Unresolved as exc:
            return exc


def _offline(scheme: str) -> Resolver:
    def resolve(argument: str) -> str:
        raise Unresolved(f"${{{scheme}:…}} is read from AWS only when the config is loaded")

    return resolve


def ssm_resolver(document: Any, references: References) -> Resolver:
    """``${ssm:NAME}``: the SSM parameter ``NAME``, a SecureString decrypted."""
    if references.placeholders:
        return _offline(SSM)
    reader = _Reader(SSM, *config_region(document, references))

    def resolve(name: str) -> str:
        def get(client: SSMClient) -> str:
            answer = client.get_parameter(Name=name, WithDecryption=True)
            return answer["Parameter"].get("Value", "")

        return reader.read(f"SSM parameter {name}", get)

    return resolve


def secrets_manager_resolver(document: Any, references: References) -> Resolver:
    """``${secretsmanager:ID}``: the secret's SecretString; ``${secretsmanager:ID#KEY}``:
    the string at ``KEY`` of the JSON object it holds."""
    if references.placeholders:
        return _offline(SECRETS_MANAGER)
    reader = _Reader(SECRETS_MANAGER, *config_region(document, references))

    def resolve(argument: str) -> str:
        secret_id, _, key = argument.partition("#")
        what = f"secret {secret_id}"

        def get(client: SecretsManagerClient) -> str:
            answer = client.get_secret_value(SecretId=secret_id)
            if "SecretString" not in answer:
                raise Unresolved(f"{what} holds binary data, not a string")
            return answer["SecretString"]

        arn_region = _SECRET_ARN_REGION.match(secret_id)
        text = reader.read(what, get, arn_region[1] if arn_region else None)
        return _json_key(text, key, what) if key else text

    return resolve


def _json_key(text: str, key: str, what: str) -> str:
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise Unresolved(f"{what} is not a JSON object, so it has no key {key!r}")
    if key not in document:
        raise Unresolved(f"key {key!r} not found in {what}")
    value = document[key]
    if not isinstance(value, str):
        raise Unresolved(f"key {key!r} of {what} is not a string (it is {_json_kind(value)})")
    return value


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a list" if isinstance(value, list) else "an object"


def aws_document_resolvers() -> dict[str, Callable[[Any, References], Resolver]]:
    """The schemes of secrets kept by AWS, for ``References.document_resolvers``."""
    return {SSM: ssm_resolver, SECRETS_MANAGER: secrets_manager_resolver}
