"""``aws.cognito.role_arn``: the identity pool's authenticated role that ``plan``/``apply``
manage; optional, and a role ARN when set."""

from __future__ import annotations

import pytest

from identity.config.document import build_config
from identity.errors import ConfigError
from tests.fixtures.configs import USER_ROLE_ARN, valid_config_dict


def test_the_pool_role_is_optional() -> None:
    cognito = build_config(valid_config_dict()).aws.cognito
    assert cognito is not None
    assert cognito.role_arn is None


def test_the_pool_role_is_read() -> None:
    cognito = build_config(valid_config_dict(aws__cognito__role_arn=USER_ROLE_ARN)).aws.cognito
    assert cognito is not None
    assert cognito.role_arn == USER_ROLE_ARN


def test_a_pool_role_that_is_not_a_role_arn_is_refused() -> None:
    with pytest.raises(ConfigError) as error:
        build_config(valid_config_dict(aws__cognito__role_arn="arn:aws:iam::1:user/bob"))
    assert any(p.startswith("aws.cognito.role_arn") for p in error.value.problems)
