"""How the user roles in IAM differ from the documents ``chime-broker policies`` prints for
the config (``chime-broker plan --roles``). Read only: the broker never changes IAM roles.

The user roles are ``aws.sts.role_arn`` and the providers' ``role_arn`` (assumed by the
server role with ``exchange: sts``), the providers' ``custom_role_arn`` and
``aws.cognito.role_arn`` (assumed through the identity pool). Each role's trust policy must
hold the trust statements of the exchange families it serves; its permission policy, the
union of its inline and attached managed policies, must hold exactly the user role's
permission statements. Statements compare as sets after normalising: a single value equals
a one-element list, order does not matter, ``Sid`` is ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

from botocore.exceptions import ClientError

from identity import policies
from identity.config.document import BrokerConfig

if TYPE_CHECKING:
    from types_boto3_iam.client import IAMClient

__all__ = ["RoleError", "RolePlan", "expected_roles", "make_role_plan", "normalise_statements"]

_NO_SUCH_ENTITY: Final = "NoSuchEntity"
_STS: Final = "sts"
_COGNITO: Final = "cognito"
_SET_FIELDS: Final = ("Action", "NotAction", "Resource", "NotResource")

# A normalised statement: sorted (field, value) pairs, each value hashable.
Statement = tuple[tuple[str, Any], ...]


class RoleError(Exception):
    """The roles cannot be compared; the message says why."""


@dataclass
class ExpectedRole:
    """One user role: where the config names it, and the statements it must have."""

    arn: str
    uses: list[str] = field(default_factory=list)
    families: set[str] = field(default_factory=set)
    trust: list[dict[str, Any]] = field(default_factory=list)
    # The user-role trust statements of the other exchange family: tolerated, not required.
    trust_tolerated: list[dict[str, Any]] = field(default_factory=list)
    permissions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RolePlan:
    """Every user role's differences, in config order."""

    roles: list[tuple[ExpectedRole, list[str]]] = field(default_factory=list)

    @property
    def differs(self) -> bool:
        return any(differences for _, differences in self.roles)

    def lines(self, source: str) -> list[str]:
        out: list[str] = []
        count = 0
        for role, differences in self.roles:
            out.append(f"IAM role {role.arn} ({', '.join(role.uses)})")
            out += [f"  ~ {difference}" for difference in differences]
            count += len(differences)
        if count:
            out.append(f"{count} role difference(s)")
            out.append(
                "apply does not change IAM roles: fix them with the documents from "
                f"`chime-broker policies --config {source}` or the template from "
                f"`chime-broker policies --config {source} --format cloudformation`"
            )
        else:
            out.append("no role differences")
        return out


def expected_roles(config: BrokerConfig, *, server_role_arn: str | None) -> list[ExpectedRole]:
    """The user roles the config names and the statements each must have."""
    try:
        documents = policies.all_documents(config, server_role_arn=server_role_arn)
    except ValueError as e:
        raise RoleError(str(e)) from None
    trust = documents[policies.USER_ROLE_TRUST_POLICY]["Statement"]
    permissions = documents[policies.USER_ROLE_PERMISSION_POLICY]["Statement"]
    roles: dict[str, ExpectedRole] = {}

    def add(arn: str | None, use: str, family: str) -> None:
        if arn is None:
            return
        role = roles.setdefault(arn, ExpectedRole(arn))
        if use not in role.uses:
            role.uses.append(use)
        role.families.add(family)

    sts = config.aws.sts
    if sts is not None:
        add(sts.role_arn, "aws.sts.role_arn", _STS)
    for provider in config.providers:
        if provider.exchange == "sts":
            add(provider.role_arn, f"provider {provider.name} role_arn", _STS)
        if provider.exchange == "cognito":
            add(provider.custom_role_arn, f"provider {provider.name} custom_role_arn", _COGNITO)
    cognito = config.aws.cognito
    if cognito is not None:
        add(cognito.role_arn, "aws.cognito.role_arn", _COGNITO)
    for role in roles.values():
        role.trust = [s for s in trust if _family(s) in role.families]
        role.trust_tolerated = [s for s in trust if _family(s) not in role.families]
        role.permissions = list(permissions)
    return list(roles.values())


def _family(statement: Mapping[str, Any]) -> str:
    principal = statement.get("Principal", {})
    return _COGNITO if isinstance(principal, Mapping) and "Federated" in principal else _STS


def make_role_plan(
    config: BrokerConfig, iam: IAMClient, *, server_role_arn: str | None = None
) -> RolePlan:
    """Read every user role from IAM and compare it with the config's documents.

    ``server_role_arn`` defaults as for ``chime-broker policies``. ``botocore`` errors other
    than a missing role pass through."""
    plan = RolePlan()
    for role in expected_roles(config, server_role_arn=server_role_arn):
        plan.roles.append((role, _differences(iam, role)))
    return plan


def _differences(iam: IAMClient, role: ExpectedRole) -> list[str]:
    name = role.arn.rpartition("/")[2]
    try:
        found = iam.get_role(RoleName=name)["Role"]
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") == _NO_SUCH_ENTITY:
            return ["role does not exist"]
        raise
    if found.get("Arn") not in (None, role.arn):
        return [f"role {name} exists as {found.get('Arn')}, not {role.arn}"]
    trust = _document(found.get("AssumeRolePolicyDocument"))
    differences = [
        f"trust policy: {text}"
        for text in _compare(
            role.trust, _statements(trust), pair_on="Principal", tolerated=role.trust_tolerated
        )
    ]
    permissions = _permission_statements(iam, name)
    differences += [
        f"permission policy: {text}"
        for text in _compare(role.permissions, permissions, pair_on="Action")
    ]
    return differences


def _permission_statements(iam: IAMClient, name: str) -> list[dict[str, Any]]:
    """The statements of every inline and attached managed policy of role ``name``."""
    statements: list[dict[str, Any]] = []
    for page in iam.get_paginator("list_role_policies").paginate(RoleName=name):
        for policy_name in page.get("PolicyNames", []):
            inline = iam.get_role_policy(RoleName=name, PolicyName=policy_name)
            statements += _statements(_document(inline.get("PolicyDocument")))
    for attached_page in iam.get_paginator("list_attached_role_policies").paginate(RoleName=name):
        for attached in attached_page.get("AttachedPolicies", []):
            arn = attached.get("PolicyArn", "")
            version = iam.get_policy(PolicyArn=arn)["Policy"].get("DefaultVersionId", "")
            document = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]
            statements += _statements(_document(document.get("Document")))
    return statements


def _document(raw: Any) -> dict[str, Any]:
    """A policy document as a dict: IAM sends it URL-encoded, botocore usually decodes it."""
    if raw is None:
        return {}
    if isinstance(raw, str):
        decoded: dict[str, Any] = json.loads(unquote(raw))
        return decoded
    return dict(raw)


def _statements(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    statements = document.get("Statement", [])
    if isinstance(statements, Mapping):
        return [dict(statements)]
    return [dict(statement) for statement in statements]


def _values(value: Any) -> frozenset[str]:
    items = value if isinstance(value, list | tuple) else [value]
    return frozenset(str(item) for item in items)


def _normalise(statement: Mapping[str, Any]) -> Statement:
    """Hashable and order-free; ``Sid`` dropped; actions compare case-insensitively."""
    out: dict[str, Any] = {}
    for key, value in statement.items():
        if key == "Sid":
            continue
        if key in ("Action", "NotAction"):
            out[key] = frozenset(v.lower() for v in _values(value))
        elif key in _SET_FIELDS:
            out[key] = _values(value)
        elif key in ("Principal", "NotPrincipal"):
            if isinstance(value, Mapping):
                out[key] = frozenset((k, _values(v)) for k, v in value.items())
            else:
                out[key] = _values(value)
        elif key == "Condition" and isinstance(value, Mapping):
            out[key] = frozenset(
                (operator, frozenset((k.lower(), _values(v)) for k, v in block.items()))
                for operator, block in value.items()
            )
        else:
            out[key] = str(value)
    return tuple(sorted(out.items()))


def normalise_statements(statements: Iterable[Mapping[str, Any]]) -> frozenset[Statement]:
    """The statement set that two equivalent policies share."""
    return frozenset(_normalise(s) for s in statements)


def _compare(
    expected: list[dict[str, Any]],
    actual: list[dict[str, Any]],
    *,
    pair_on: str,
    tolerated: Iterable[Mapping[str, Any]] = (),
) -> list[str]:
    """What differs, pairing a missing statement with an unexpected one that has the same
    ``Effect`` and ``pair_on`` field so the text names the fields that differ. A
    ``tolerated`` statement may be present without being expected."""
    wanted = {_normalise(s): s for s in expected}
    skip = normalise_statements(tolerated)
    have = {
        _normalise(s): s for s in actual if _normalise(s) not in skip or _normalise(s) in wanted
    }
    missing = [key for key in wanted if key not in have]
    extra = [key for key in have if key not in wanted]
    out: list[str] = []
    for key in missing:
        fields = dict(key)
        partner = next(
            (
                other
                for other in extra
                if dict(other).get("Effect") == fields.get("Effect")
                and dict(other).get(pair_on) == fields.get(pair_on)
            ),
            None,
        )
        label = _label(wanted[key], pair_on)
        if partner is None:
            out.append(f"lacks statement {label}: {_show(wanted[key])}")
            continue
        extra.remove(partner)
        out.append(f"statement {label}: {_field_differences(wanted[key], have[partner])}")
    out += [f"has statement not in the config's policy: {_show(have[key])}" for key in extra]
    return out


def _label(statement: Mapping[str, Any], pair_on: str) -> str:
    value = statement.get(pair_on)
    if pair_on == "Principal" and isinstance(value, Mapping):
        return "for " + ", ".join(f"{k} {', '.join(sorted(_values(v)))}" for k, v in value.items())
    actions = sorted(_values(value))
    shown = ", ".join(actions[:3]) + (f" (+{len(actions) - 3} more)" if len(actions) > 3 else "")
    return f"for {shown}"


def _field_differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> str:
    parts: list[str] = []
    wanted, have = dict(_normalise(expected)), dict(_normalise(actual))
    for key in sorted(set(wanted) | set(have)):
        if wanted.get(key) == have.get(key):
            continue
        if key in _SET_FIELDS and key in wanted and key in have:
            w, h = _values(expected[key]), _values(actual[key])
            if key.endswith("Action"):
                lower = {v.lower() for v in h}
                lacks = sorted(v for v in w if v.lower() not in lower)
                lower = {v.lower() for v in w}
                extra = sorted(v for v in h if v.lower() not in lower)
            else:
                lacks, extra = sorted(w - h), sorted(h - w)
            if lacks:
                parts.append(f"{key} lacks {', '.join(lacks)}")
            if extra:
                parts.append(f"{key} has {', '.join(extra)} too")
        elif key not in have:
            parts.append(f"{key} missing, want {_show(expected[key])}")
        elif key not in wanted:
            parts.append(f"{key} {_show(actual[key])} not in the config's policy")
        else:
            parts.append(f"{key} {_show(actual[key])}, want {_show(expected[key])}")
    return "; ".join(parts)


def _show(value: Any) -> str:
    if isinstance(value, Mapping):
        value = {k: v for k, v in value.items() if k != "Sid"}
    return json.dumps(value, sort_keys=True)
