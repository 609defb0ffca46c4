"""``chime-broker explain`` through the real command: a dry run of one login against the
local OpenID Provider and SAML IdP, printing what the broker would decide, with no AWS call."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from service.cli import main
from service.demo.dev_idp import DevIdentityProvider
from tests.fakes import FACEBOOK_APP_ID, FACEBOOK_APP_SECRET, FacebookApi
from tests.fixtures.configs import (
    APP_INSTANCE_ARN,
    USER_ROLE_ARN,
    provider_dict,
    valid_config_dict,
)
from tests.fixtures.moto_server import AwsWorld
from tests.fixtures.oidc_provider import ALICE_SUB, TEST_CLIENT_ID
from tests.fixtures.saml_idp import SamlAttribute, SamlIdp, encode

CLI = str(Path(sys.executable).with_name("chime-broker"))
OKTA_ROLE = "arn:aws:iam::111122223333:role/ChimeOktaUser"
SP_ENTITY_ID = "https://auth.example.chat/v1/saml/corp/metadata"
ACS_URL = "https://auth.example.chat/v1/saml/corp/acs"


def write_config(tmp_path: Path, idp: DevIdentityProvider, saml_idp: SamlIdp | None = None) -> Path:
    providers: list[dict[str, Any]] = [
        provider_dict(
            "oidc",
            issuer=idp.issuer,
            client_id=TEST_CLIENT_ID,
            exchange="sts",
            role_arn=OKTA_ROLE,
            map={
                "user_id": "okta-{sub}",
                "display_name": "{name}",
                "tags": {"department": "{dept}"},
                "require": {"email_verified": True, "groups": {"any_of": ["chat-users"]}},
            },
        ),
        provider_dict(
            "oidc",
            name="mobile",
            issuer=idp.issuer,
            client_id=TEST_CLIENT_ID,
            exchange="cognito_developer",
            map={"user_id": "mob-{sub}"},
        ),
    ]
    if saml_idp is not None:
        providers.append(
            provider_dict(
                "saml",
                idp_metadata_url=saml_idp.metadata_url,
                sp_entity_id=SP_ENTITY_ID,
                map={"user_id": "corp-{name_id|sha256:24}", "display_name": "{displayName}"},
            )
        )
    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump(valid_config_dict(providers=providers)))
    return path


def explain(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    config: Path,
    provider: str,
    option: str,
    stdin: str,
) -> tuple[int, dict[str, Any]]:
    """Run ``chime-broker explain`` in-process with ``stdin`` read through ``-``."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
    status = main(["explain", "--config", str(config), "--provider", provider, option, "-"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return status, json.loads(captured.out)


def alice_token(idp: DevIdentityProvider, **claims: Any) -> str:
    return idp.mint_id_token({"sub": ALICE_SUB, "dept": "research", **claims})


def test_an_accepted_token_shows_the_user_tags_arn_and_role(
    oidc_provider: DevIdentityProvider,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_config(tmp_path, oidc_provider)
    token_file = tmp_path / "id_token.jwt"
    token_file.write_text(alice_token(oidc_provider) + "\n")

    status = main(
        ["explain", "--config", str(config), "--provider", "okta", "--token-file", str(token_file)]
    )

    out = json.loads(capsys.readouterr().out)
    assert status == 0
    assert out == {
        "provider": "okta",
        "exchange": "sts",
        "user_id": "okta-alice-sub",
        "display_name": "Alice Example",
        "tags": {"my_applications_user_id": "okta-alice-sub", "department": "research"},
        "app_instance_user_arn": f"{APP_INSTANCE_ARN}/user/okta-alice-sub",
        "role": OKTA_ROLE,
        "role_session_name": "okta-alice-sub",
        "verified_as": "id_token",
        "signature_checked": True,
    }


def test_a_require_rule_refusal_names_the_claim(
    oidc_provider: DevIdentityProvider,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_config(tmp_path, oidc_provider)
    token = alice_token(oidc_provider, groups=["contractors"])

    status, out = explain(capsys, monkeypatch, config, "okta", "--token-file", token)

    assert status == 1
    assert out["code"] == "access_denied"
    assert "'groups'" in out["detail"]
    assert token not in json.dumps(out)


def test_a_forged_token_is_an_invalid_token(
    oidc_provider: DevIdentityProvider,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_config(tmp_path, oidc_provider)
    rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = oidc_provider.mint_id_token({"sub": ALICE_SUB}, key=rogue)

    status, out = explain(capsys, monkeypatch, config, "okta", "--token-file", forged)

    assert status == 1
    assert out["provider"] == "okta"
    assert out["code"] == "invalid_token"
    assert "signature" in out["detail"].lower()
    assert forged not in json.dumps(out)


def test_an_identity_that_cannot_be_a_user_id_is_unmappable(
    oidc_provider: DevIdentityProvider,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_config(tmp_path, oidc_provider)
    token = oidc_provider.mint_id_token(
        {"sub": "alice/../admin", "email_verified": True, "groups": ["chat-users"], "dept": "x"}
    )

    status, out = explain(capsys, monkeypatch, config, "okta", "--token-file", token)

    assert status == 1
    assert out["code"] == "unmappable_identity"
    assert "'/'" in out["detail"]


def test_a_claims_file_is_mapped_without_a_signature(
    oidc_provider: DevIdentityProvider,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_config(tmp_path, oidc_provider)
    claims = tmp_path / "claims.json"
    claims.write_text(json.dumps({"sub": "00u1abc"}))

    status = main(
        ["explain", "--config", str(config), "--provider", "mobile", "--claims-file", str(claims)]
    )

    out = json.loads(capsys.readouterr().out)
    assert status == 0
    assert out == {
        "provider": "mobile",
        "exchange": "cognito_developer",
        "user_id": "mob-00u1abc",
        "display_name": "mob-00u1abc",
        "tags": {"my_applications_user_id": "mob-00u1abc"},
        "app_instance_user_arn": f"{APP_INSTANCE_ARN}/user/mob-00u1abc",
        "role": "the identity pool's authenticated role",
        "signature_checked": False,
    }
    # A claims set is also held to the require rules.
    status, refused = explain(
        capsys,
        monkeypatch,
        config,
        "okta",
        "--claims-file",
        json.dumps({"sub": "00u1abc", "groups": ["chat-users"]}),
    )
    assert status == 1
    assert refused == {
        "provider": "okta",
        "code": "access_denied",
        "detail": "required claim 'email_verified' is missing",
        "signature_checked": False,
    }


def test_explain_makes_no_aws_call(
    aws: AwsWorld,
    oidc_provider: DevIdentityProvider,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_config(tmp_path, oidc_provider)

    accepted, _ = explain(
        capsys, monkeypatch, config, "okta", "--token-file", alice_token(oidc_provider)
    )
    mobile, _ = explain(
        capsys, monkeypatch, config, "mobile", "--token-file", alice_token(oidc_provider)
    )

    assert (accepted, mobile) == (0, 0)
    assert aws.recorder.operations() == []


def test_a_saml_response_is_checked_except_what_needs_a_login_transaction(
    oidc_provider: DevIdentityProvider,
    saml_idp: SamlIdp,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_config(tmp_path, oidc_provider, saml_idp)
    xml = saml_idp.build_response(
        in_response_to="ONELOGIN_request-the-dry-run-never-saw",
        destination=ACS_URL,
        audience=SP_ENTITY_ID,
        recipient=ACS_URL,
        name_id="ada",
        attributes=[SamlAttribute("displayName", ("Ada Lovelace",))],
    )

    # As the IdP posts it (base64), twice: a dry run never marks an assertion as used.
    for _ in range(2):
        status, out = explain(capsys, monkeypatch, config, "corp", "--assertion-file", encode(xml))
        assert status == 0
        assert out["exchange"] == "sts"
        assert out["user_id"].startswith("corp-")
        assert out["display_name"] == "Ada Lovelace"
        assert out["role"] == USER_ROLE_ARN
        assert out["signature_checked"] is True
        assert [item.split(" ")[0] for item in out["not_checked"]] == ["InResponseTo", "one-time"]

    # Raw XML, for another SP: the audience check refuses it.
    other = saml_idp.build_response(
        in_response_to=None,
        destination=ACS_URL,
        audience="https://other.example/sp",
        recipient=ACS_URL,
        name_id="ada",
    )
    status, out = explain(capsys, monkeypatch, config, "corp", "--assertion-file", other)
    assert status == 1
    assert out["code"] == "invalid_token"
    assert "audience" in out["detail"]


def test_usage_errors_exit_2_without_a_traceback(
    oidc_provider: DevIdentityProvider,
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, oidc_provider)
    env = {**os.environ}

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CLI, "explain", "--config", str(config), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )

    unknown = run("--provider", "nope", "--claims-file", "-", stdin="{}")
    not_json = run("--provider", "okta", "--claims-file", "-", stdin="sub=alice")
    missing = run("--provider", "okta", "--token-file", str(tmp_path / "absent.jwt"))
    no_source = run("--provider", "okta")
    for result in (unknown, not_json, missing, no_source):
        assert result.returncode == 2, result.stderr
        assert result.stdout == ""
        assert "Traceback" not in result.stderr
    assert "no provider named 'nope'" in unknown.stderr
    assert "okta, mobile" in unknown.stderr
    assert "not JSON" in not_json.stderr
    assert "cannot read the token file" in missing.stderr

    broken = tmp_path / "broken.yaml"
    broken.write_text("mode: production\n")
    report = subprocess.run(
        [CLI, "explain", "--config", str(broken), "--provider", "okta", "--claims-file", "-"],
        input="{}",
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert report.returncode == 1
    assert "problem(s)" in report.stderr
    assert "Traceback" not in report.stderr


def test_facebook_takes_an_access_token_and_cognito_names_its_custom_role(
    oidc_provider: DevIdentityProvider,
    facebook_api: FacebookApi,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    custom_role = "arn:aws:iam::111122223333:role/ChimeFacebookUser"
    facebook = provider_dict(
        "facebook",
        app_id=FACEBOOK_APP_ID,
        app_secret=FACEBOOK_APP_SECRET,
        debug_token_url=facebook_api.debug_token_url,
        userinfo_url=facebook_api.userinfo_url,
        exchange="cognito",
        custom_role_arn=custom_role,
        map={"user_id": "{sub}"},
    )
    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump(valid_config_dict(providers=[facebook])))
    facebook_api.add_token("fb-access-token", user_id="10201", profile={"name": "Ada Lovelace"})

    status, out = explain(capsys, monkeypatch, path, "facebook", "--token-file", "fb-access-token")

    assert status == 0
    assert out["verified_as"] == "access_token"
    assert (out["exchange"], out["user_id"], out["role"]) == ("cognito", "10201", custom_role)
    assert out["tags"] == {"my_applications_user_id": "10201"}

    status, out = explain(capsys, monkeypatch, path, "facebook", "--token-file", "fb-unknown")
    assert status == 1
    assert out["code"] == "invalid_token"
