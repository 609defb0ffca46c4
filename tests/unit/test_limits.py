"""Chime and STS length rules count UTF-16 code units, as AWS's Java validators do, and the
config check and the run-time mapper count the same way (both use ``identity.limits``)."""

from __future__ import annotations

import pytest

from identity import limits
from identity.config.document import build_config
from identity.errors import ConfigError, UnmappableIdentity
from identity.mapping import clean_display_name, validate_tags
from tests.fixtures.configs import provider_dict, valid_config_dict

BOLD_A = "\U0001d400"  # MATHEMATICAL BOLD CAPITAL A: a letter, 4 bytes in UTF-8, 2 UTF-16 units
ACUTE = "\u0301"  # COMBINING ACUTE ACCENT: one code point, one UTF-16 unit


def test_lengths_are_utf16_units() -> None:
    assert limits.aws_length("abc") == 3
    assert limits.aws_length(BOLD_A) == 2
    assert limits.aws_length("😀") == 2
    assert limits.aws_length("e" + ACUTE) == 2


def test_a_tag_value_of_256_units_passes_and_one_more_unit_is_refused() -> None:
    assert validate_tags({"t": BOLD_A * 128}) == {"t": BOLD_A * 128}
    with pytest.raises(UnmappableIdentity):
        validate_tags({"t": "a" * 255 + BOLD_A})  # 256 code points, 257 units


def test_a_combining_mark_is_not_tag_text_but_counts_one_unit_in_a_display_name() -> None:
    assert not limits.is_tag_text("e" + ACUTE)
    name = "a" * 98 + "e" + ACUTE  # exactly 100 units
    assert clean_display_name(name) == name
    assert clean_display_name(name + "b") == "a" * 98 + "e" + ACUTE


def test_a_display_name_is_never_cut_inside_a_surrogate_pair() -> None:
    assert clean_display_name("a" * 99 + "😀") == "a" * 99
    assert clean_display_name("a" * 98 + "😀") == "a" * 98 + "😀"


def _config_with_static_tag(value: str) -> None:
    build_config(
        valid_config_dict(
            providers=[provider_dict("oidc", exchange="sts", map={"tags": {"team": value}})]
        )
    )


def test_the_config_check_counts_like_the_mapper() -> None:
    _config_with_static_tag(BOLD_A * 128)
    with pytest.raises(ConfigError) as refused:
        _config_with_static_tag("a" * 255 + BOLD_A)
    (problem,) = refused.value.problems
    assert problem.startswith("providers[0].map.tags.team: ")
    assert "is not a valid STS tag value" in problem
