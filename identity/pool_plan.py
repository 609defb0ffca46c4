"""What the broker owns in its Cognito identity pool, how that differs from the pool as AWS
has it, and the calls that make the pool match (``chime-broker plan`` / ``apply``).

The broker owns, from the config:

* the ``Logins`` of every ``exchange: cognito`` provider: ``SupportedLoginProviders`` for
  Google, Facebook, Login with Amazon and Apple, ``CognitoIdentityProviders`` for user
  pools, ``OpenIdConnectProviderARNs`` (and the IAM OIDC provider) for generic OIDC;
* ``DeveloperProviderName`` when a provider uses ``exchange: cognito_developer``;
* the principal-tag map of every ``exchange: cognito`` provider (``chime.user_tag`` from
  the claim of ``map.user_id``, each ``map.tags`` key from its claim, no defaults);
* the authenticated role, when ``aws.cognito.role_arn`` is set.

Everything else in the pool belongs to someone else and is sent back unchanged:
``UpdateIdentityPool`` and ``SetIdentityPoolRoles`` replace the whole record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from botocore.exceptions import ClientError

from identity.config.document import BrokerConfig
from identity.config.models import ProviderBase
from identity.providers import amazon, apple, facebook, google
from identity.providers.amazon import AmazonConfig
from identity.providers.apple import AppleConfig
from identity.providers.cognito_user_pool import (
    CognitoUserPoolConfig,
    cognito_user_pool_login_key,
    cognito_user_pool_region,
)
from identity.providers.facebook import FacebookConfig
from identity.providers.google import GoogleConfig
from identity.providers.id_token import login_key_for_issuer
from identity.providers.oidc import OidcConfig

if TYPE_CHECKING:
    from types_boto3_cognito_identity.client import CognitoIdentityClient
    from types_boto3_iam.client import IAMClient

    from identity.aws import AwsClients

__all__ = ["Change", "PoolError", "PoolPlan", "apply_plan", "make_plan"]

_NOT_FOUND: Final = "ResourceNotFoundException"
_OIDC_ARN_MARK: Final = ":oidc-provider/"


class PoolError(Exception):
    """The pool cannot be brought in line with the config; the message says why."""


@dataclass(frozen=True)
class Change:
    """One difference between the config and the pool: ``+`` add, ``~`` change."""

    sign: str
    text: str

    def __str__(self) -> str:
        return f"{self.sign} {self.text}"


@dataclass(frozen=True)
class _Oidc:
    provider: str
    issuer: str
    login_key: str
    audiences: tuple[str, ...]


@dataclass
class _Desired:
    """The pool as the config wants the broker's part of it."""

    logins: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (value, provider)
    user_pools: list[tuple[str, str, str]] = field(default_factory=list)  # (key, client, provider)
    oidc: list[_Oidc] = field(default_factory=list)
    developer_provider_name: str | None = None
    tag_maps: dict[str, tuple[dict[str, str], str]] = field(default_factory=dict)
    role_arn: str | None = None


@dataclass
class PoolPlan:
    """The differences (``changes``), what the broker leaves alone (``unmanaged``) and the
    requests that remove the differences."""

    pool_id: str
    pool_name: str
    changes: list[Change] = field(default_factory=list)
    unmanaged: list[str] = field(default_factory=list)
    oidc_to_create: list[_Oidc] = field(default_factory=list)
    oidc_audiences_to_add: list[tuple[str, str]] = field(default_factory=list)  # (arn, aud)
    update_pool: dict[str, Any] | None = None
    tag_maps: list[dict[str, Any]] = field(default_factory=list)
    roles: dict[str, Any] | None = None

    @property
    def differs(self) -> bool:
        return bool(self.changes)

    def lines(self) -> list[str]:
        """The plan as ``chime-broker plan`` prints it."""
        out = [f"identity pool {self.pool_id} ({self.pool_name})"]
        out += [f"  {change}" for change in self.changes]
        if self.unmanaged:
            out.append("not managed (left as they are):")
            out += [f"  {item}" for item in self.unmanaged]
        count = len(self.changes)
        out.append(f"{count} difference(s)" if count else "no differences")
        return out


def _key_for_user_pool(provider: CognitoUserPoolConfig, region: str) -> str:
    pool_region = cognito_user_pool_region(provider.user_pool_id, region)
    return cognito_user_pool_login_key(pool_region, provider.user_pool_id)


def _claim_of(provider: ProviderBase, template_fields: tuple[str, ...], where: str) -> str:
    if len(template_fields) != 1:
        raise PoolError(f"provider {provider.name!r}: {where} must be one bare claim")
    return template_fields[0]


def _desired(config: BrokerConfig) -> _Desired:
    cognito = config.aws.cognito
    assert cognito is not None  # make_plan checks first
    wanted = _Desired(role_arn=cognito.role_arn)
    owners: dict[str, str] = {}
    for provider in config.providers:
        if provider.exchange == "cognito_developer":
            wanted.developer_provider_name = cognito.developer_provider_name
        if provider.exchange != "cognito":
            continue
        key: str
        if isinstance(provider, GoogleConfig):
            key = google.LOGIN_KEY
            wanted.logins[key] = (",".join(provider.client_ids), provider.name)
        elif isinstance(provider, AppleConfig):
            key = apple.LOGIN_KEY
            wanted.logins[key] = (",".join(provider.client_ids), provider.name)
        elif isinstance(provider, AmazonConfig):
            key = amazon.LOGIN_KEY
            wanted.logins[key] = (",".join(provider.client_ids), provider.name)
        elif isinstance(provider, FacebookConfig):
            key = facebook.LOGIN_KEY
            wanted.logins[key] = (provider.app_id, provider.name)
        elif isinstance(provider, CognitoUserPoolConfig):
            key = _key_for_user_pool(provider, config.aws.region)
            wanted.user_pools += [(key, client, provider.name) for client in provider.client_ids]
        elif isinstance(provider, OidcConfig):
            key = login_key_for_issuer(provider.issuer)
            wanted.oidc.append(_Oidc(provider.name, provider.issuer, key, provider.audiences))
        else:
            raise PoolError(
                f"provider {provider.name!r}: kind {provider.kind} cannot sign in through "
                "the identity pool"
            )
        if key in owners:
            raise PoolError(
                f"providers {owners[key]!r} and {provider.name!r} both sign in with the "
                f"identity pool's login {key}: the pool holds one setting per login"
            )
        owners[key] = provider.name
        tags = {
            config.chime.user_tag: _claim_of(
                provider, provider.user_id_template.fields, "map.user_id"
            )
        }
        for tag, template in provider.tag_templates.items():
            tags[tag] = _claim_of(provider, template.fields, f"map.tags.{tag}")
        wanted.tag_maps[key] = (tags, provider.name)
    return wanted


def _call(operation: str, call: Any, **kwargs: Any) -> Any:
    """``call(**kwargs)``; a refusal becomes a ``PoolError`` naming the operation."""
    try:
        return call(**kwargs)
    except ClientError as e:
        error = e.response.get("Error", {})
        raise PoolError(
            f"AWS refused {operation}: {error.get('Code', '?')}: {error.get('Message', '')}"
        ) from None


def _describe(client: CognitoIdentityClient, pool_id: str) -> dict[str, Any]:
    try:
        answer = client.describe_identity_pool(IdentityPoolId=pool_id)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") == _NOT_FOUND:
            raise PoolError(
                f"identity pool {pool_id} (aws.cognito.identity_pool_id) does not exist"
            ) from None
        raise
    return {k: v for k, v in answer.items() if k != "ResponseMetadata"}


def _tag_map(
    client: CognitoIdentityClient, pool_id: str, key: str
) -> tuple[dict[str, str], bool] | None:
    try:
        answer = client.get_principal_tag_attribute_map(
            IdentityPoolId=pool_id, IdentityProviderName=key
        )
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") == _NOT_FOUND:
            return None
        raise
    if "PrincipalTags" not in answer and "UseDefaults" not in answer:
        return None
    return dict(answer.get("PrincipalTags", {})), bool(answer.get("UseDefaults", False))


def _iam_oidc(iam: IAMClient, keys: Iterable[str]) -> dict[str, tuple[str, list[str]]]:
    """The IAM OIDC providers of ``keys`` (issuers without scheme): key -> (ARN, audiences)."""
    wanted = set(keys)
    if not wanted:
        return {}
    found: dict[str, tuple[str, list[str]]] = {}
    listed = _call("ListOpenIDConnectProviders", iam.list_open_id_connect_providers)
    for entry in listed.get("OpenIDConnectProviderList", []):
        arn = entry.get("Arn", "")
        key = arn.partition(_OIDC_ARN_MARK)[2]
        if key in wanted:
            detail = _call(
                "GetOpenIDConnectProvider",
                iam.get_open_id_connect_provider,
                OpenIDConnectProviderArn=arn,
            )
            found[key] = (arn, list(detail.get("ClientIDList", [])))
    return found


def _show_tags(tags: Mapping[str, str]) -> str:
    return ", ".join(f"{tag} <- {claim}" for tag, claim in sorted(tags.items())) or "(none)"


def _same_ids(a: str, b: str) -> bool:
    return {p.strip() for p in a.split(",")} == {p.strip() for p in b.split(",")}


def make_plan(config: BrokerConfig, clients: AwsClients) -> PoolPlan:
    """Read the pool (and the IAM OIDC providers it needs) and compare it with the config.

    Raises ``PoolError`` when the pool cannot match the config; ``botocore`` errors
    (no credentials, no connection) pass through."""
    cognito = config.aws.cognito
    if cognito is None:
        raise PoolError("aws.cognito.identity_pool_id is not set: the broker owns no pool")
    pool_id = cognito.identity_pool_id
    wanted = _desired(config)
    client = clients.cognito_identity
    pool = _describe(client, pool_id)
    plan = PoolPlan(pool_id=pool_id, pool_name=str(pool.get("IdentityPoolName", "")))
    pool_changed = False
    # The logins the pool has now: only those can have a principal-tag map yet.
    present = set(pool.get("SupportedLoginProviders") or {})
    present |= {e.get("ProviderName") for e in pool.get("CognitoIdentityProviders") or []}
    present |= {
        arn.partition(_OIDC_ARN_MARK)[2] for arn in pool.get("OpenIdConnectProviderARNs") or []
    }

    # DeveloperProviderName: set once, never changed by AWS.
    current_dev = pool.get("DeveloperProviderName") or None
    if wanted.developer_provider_name is not None:
        if current_dev is None:
            plan.changes.append(
                Change("+", f"developer provider name {wanted.developer_provider_name}")
            )
            pool["DeveloperProviderName"] = wanted.developer_provider_name
            pool_changed = True
        elif current_dev != wanted.developer_provider_name:
            raise PoolError(
                f"the identity pool's DeveloperProviderName is {current_dev!r} but "
                f"aws.cognito.developer_provider_name is {wanted.developer_provider_name!r}: "
                "AWS never lets a pool's developer provider name change once it is set; "
                f"set aws.cognito.developer_provider_name to {current_dev!r} or use another "
                "identity pool"
            )
    elif current_dev is not None:
        plan.unmanaged.append(f"developer provider name {current_dev}")

    # SupportedLoginProviders: ours are set, the others stay.
    logins = dict(pool.get("SupportedLoginProviders") or {})
    for key, (value, owner) in wanted.logins.items():
        if key not in logins:
            plan.changes.append(Change("+", f"login {key} = {value} (provider {owner})"))
        elif not _same_ids(logins[key], value):
            plan.changes.append(
                Change("~", f"login {key} = {logins[key]} -> {value} (provider {owner})")
            )
        else:
            continue
        logins[key] = value
        pool_changed = True
    plan.unmanaged += [
        f"login {key} = {value}"
        for key, value in sorted(logins.items())
        if key not in wanted.logins
    ]
    pool["SupportedLoginProviders"] = logins

    # CognitoIdentityProviders: one entry per (user pool, app client).
    user_pools = [dict(entry) for entry in pool.get("CognitoIdentityProviders") or []]
    have = {(e.get("ProviderName"), e.get("ClientId")) for e in user_pools}
    for key, client_id, owner in wanted.user_pools:
        if (key, client_id) not in have:
            plan.changes.append(
                Change("+", f"user pool login {key} client {client_id} (provider {owner})")
            )
            user_pools.append(
                {"ProviderName": key, "ClientId": client_id, "ServerSideTokenCheck": False}
            )
            pool_changed = True
    ours = {(key, client_id) for key, client_id, _ in wanted.user_pools}
    plan.unmanaged += [
        f"user pool login {e.get('ProviderName')} client {e.get('ClientId')}"
        for e in user_pools
        if (e.get("ProviderName"), e.get("ClientId")) not in ours
    ]
    pool["CognitoIdentityProviders"] = user_pools

    # OpenIdConnectProviderARNs, and the IAM OIDC providers behind them.
    arns = list(pool.get("OpenIdConnectProviderARNs") or [])
    iam = _iam_oidc(clients.iam, [o.login_key for o in wanted.oidc]) if wanted.oidc else {}
    our_arns: set[str] = set()
    for oidc in wanted.oidc:
        found = iam.get(oidc.login_key)
        if found is None:
            plan.changes.append(
                Change(
                    "+",
                    f"OIDC login {oidc.login_key}: create the IAM OIDC provider for "
                    f"{oidc.issuer} (audiences {', '.join(oidc.audiences)}) and add it "
                    f"(provider {oidc.provider})",
                )
            )
            plan.oidc_to_create.append(oidc)
            pool_changed = True
            continue
        arn, audiences = found
        our_arns.add(arn)
        missing = [aud for aud in oidc.audiences if aud not in audiences]
        if missing:
            plan.changes.append(
                Change(
                    "~",
                    f"IAM OIDC provider {arn}: add audiences {', '.join(missing)} "
                    f"(provider {oidc.provider})",
                )
            )
            plan.oidc_audiences_to_add += [(arn, aud) for aud in missing]
        if arn not in arns:
            plan.changes.append(Change("+", f"OIDC login {arn} (provider {oidc.provider})"))
            arns.append(arn)
            pool_changed = True
    plan.unmanaged += [f"OIDC login {arn}" for arn in arns if arn not in our_arns]
    pool["OpenIdConnectProviderARNs"] = arns
    plan.unmanaged += [f"SAML login {arn}" for arn in pool.get("SamlProviderARNs") or []]

    if pool_changed:
        plan.update_pool = _update_request(client, pool)

    # Principal-tag maps of the logins the pool verifies for the broker.
    for key, (tags, owner) in wanted.tag_maps.items():
        current = _tag_map(client, pool_id, key) if key in present else None
        if current is None:
            plan.changes.append(
                Change(
                    "+",
                    f"principal tags for {key}: {_show_tags(tags)}, UseDefaults false "
                    f"(provider {owner})",
                )
            )
        elif current != (tags, False):
            now_tags, now_defaults = current
            plan.changes.append(
                Change(
                    "~",
                    f"principal tags for {key}: {_show_tags(now_tags)}, UseDefaults "
                    f"{str(now_defaults).lower()} -> {_show_tags(tags)}, UseDefaults false "
                    f"(provider {owner})",
                )
            )
        else:
            continue
        plan.tag_maps.append(
            {
                "IdentityPoolId": pool_id,
                "IdentityProviderName": key,
                "UseDefaults": False,
                "PrincipalTags": tags,
            }
        )

    # The authenticated role, when the config names it.
    if wanted.role_arn is not None:
        answer = _call(
            "GetIdentityPoolRoles", client.get_identity_pool_roles, IdentityPoolId=pool_id
        )
        roles = dict(answer.get("Roles") or {})
        current_role = roles.get("authenticated")
        if current_role != wanted.role_arn:
            plan.changes.append(
                Change(
                    "+" if current_role is None else "~",
                    f"authenticated role {current_role or '(none)'} -> {wanted.role_arn}",
                )
            )
            roles["authenticated"] = wanted.role_arn
            request: dict[str, Any] = {"IdentityPoolId": pool_id, "Roles": roles}
            if answer.get("RoleMappings"):
                request["RoleMappings"] = answer["RoleMappings"]
            plan.roles = request
        plan.unmanaged += [
            f"{kind} role {arn}" for kind, arn in sorted(roles.items()) if kind != "authenticated"
        ]
    return plan


def _update_request(client: CognitoIdentityClient, pool: Mapping[str, Any]) -> dict[str, Any]:
    """The whole pool record for ``UpdateIdentityPool``: every field AWS described that the
    operation takes (empty strings left out: AWS reports an unset name as one)."""
    members = client.meta.service_model.operation_model("UpdateIdentityPool").input_shape
    assert members is not None
    return {
        name: value
        for name, value in pool.items()
        if name in members.members and value is not None and value != ""
    }


def apply_plan(config: BrokerConfig, clients: AwsClients, plan: PoolPlan) -> PoolPlan:
    """Make ``plan``'s changes: IAM OIDC providers first, then the pool (re-read, so that new
    ARNs are in it and nothing changed since the plan is lost), tag maps, roles.

    Returns the plan that was carried out."""
    iam = clients.iam
    for oidc in plan.oidc_to_create:
        _call(
            "CreateOpenIDConnectProvider",
            iam.create_open_id_connect_provider,
            Url=oidc.issuer,
            ClientIDList=list(oidc.audiences),
        )
    for arn, audience in plan.oidc_audiences_to_add:
        _call(
            "AddClientIDToOpenIDConnectProvider",
            iam.add_client_id_to_open_id_connect_provider,
            OpenIDConnectProviderArn=arn,
            ClientID=audience,
        )
    final = plan
    if plan.oidc_to_create or plan.oidc_audiences_to_add:
        final = make_plan(config, clients)
    client = clients.cognito_identity
    if final.update_pool is not None:
        _call("UpdateIdentityPool", client.update_identity_pool, **final.update_pool)
    for request in final.tag_maps:
        _call("SetPrincipalTagAttributeMap", client.set_principal_tag_attribute_map, **request)
    if final.roles is not None:
        _call("SetIdentityPoolRoles", client.set_identity_pool_roles, **final.roles)
    return final
