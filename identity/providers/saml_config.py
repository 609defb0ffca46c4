"""The ``kind: saml`` entry of the broker config: the IdP's metadata (file or URL), the SP's
entity ID and optional signing key pair, the NameID format it asks for, which signature
it requires, and the attribute aliases a user-id template can name."""

from __future__ import annotations

import re
from typing import ClassVar, Final, Literal

from pydantic import Field, SecretStr

from identity.config.models import Problem, ProviderBase, ValidationContext
from identity.config.report import Path
from identity.config.types import NonEmptyStr, SecureUrl
from identity.providers.saml_checks import SignaturePlacement
from identity.providers.saml_sp import DEFAULT_NAME_ID_FORMAT, NameIdFormat

# Claim names the assertion's subject fills; attributes never take them.
RESERVED_CLAIMS: Final = frozenset({"name_id", "name_id_format", "session_index"})
# An ``attributes`` short name: what a template can name as a claim.
_SHORT_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class SamlConfig(ProviderBase):
    """A SAML 2.0 IdP, by its metadata (file or URL)."""

    default_user_id: ClassVar[str] = "{name_id}"
    stable_claim: ClassVar[str] = "name_id"
    nonce_capable: ClassVar[bool] = False
    pool_can_verify: ClassVar[bool] = False
    described_as: ClassVar[str] = "SAML providers"

    kind: Literal["saml"]
    idp_metadata_file: NonEmptyStr | None = None
    idp_metadata_url: SecureUrl | None = None
    sp_entity_id: NonEmptyStr
    sp_key: SecretStr | None = None
    sp_cert: NonEmptyStr | None = None
    allow_idp_initiated: bool = False
    name_id_format: NameIdFormat = DEFAULT_NAME_ID_FORMAT
    signature: SignaturePlacement = "either"
    attributes: dict[str, NonEmptyStr] = Field(default_factory=dict)

    def endpoint_urls(self) -> list[tuple[Path, str]]:
        return self.urls("idp_metadata_url")

    def kind_problems(self, context: ValidationContext) -> list[Problem]:
        problems: list[Problem] = []
        if self.idp_metadata_file is None and self.idp_metadata_url is None:
            problems.append((("idp_metadata_file",), "required (or idp_metadata_url)"))
        elif self.idp_metadata_file is not None and self.idp_metadata_url is not None:
            problems.append(
                (("idp_metadata_url",), "set idp_metadata_file or idp_metadata_url, not both")
            )
        if (self.sp_key is None) != (self.sp_cert is None):
            missing = "sp_cert" if self.sp_cert is None else "sp_key"
            problems.append(((missing,), "sp_key and sp_cert go together"))
        for short in self.attributes:
            if _SHORT_NAME.fullmatch(short) is None:
                problems.append(
                    (("attributes", short), "a short name is letters, digits and _ (a claim name)")
                )
            elif short in RESERVED_CLAIMS:
                problems.append((("attributes", short), "is filled from the assertion's subject"))
        reads_name_id = "name_id" in {f.split(".", 1)[0] for f in self.user_id_template.fields}
        if self.name_id_format == "email" and reads_name_id and not self.allow_mutable_user_id:
            problems.append(
                (
                    ("name_id_format",),
                    "email makes the NameID an email address, which users or admins can "
                    "change, and map.user_id reads {name_id}: ask for persistent, or build "
                    "the user id from a stable attribute "
                    "(or allow_mutable_user_id: true when nothing stable exists)",
                )
            )
        return problems

    def is_mutable_claim(self, claim: str) -> bool:
        """An alias reads what its attribute Name reads."""
        name = self.attributes.get(claim.split(".", 1)[0])
        return super().is_mutable_claim(claim) or (
            name is not None and super().is_mutable_claim(name)
        )
