"""Statement comparison behind ``plan --roles``: equal after normalising single values vs
lists, order and ``Sid``; different when an action, resource or condition differs."""

from __future__ import annotations

from identity.role_plan import normalise_statements

RESOURCE = "arn:aws:chime:us-east-1:1:app-instance/a/user/${aws:PrincipalTag/u}"


def test_single_values_order_and_sid_do_not_matter() -> None:
    written = [
        {
            "Sid": "One",
            "Effect": "Allow",
            "Action": ["chime:Connect", "chime:SendChannelMessage"],
            "Resource": [RESOURCE],
            "Condition": {"StringEquals": {"aws:RequestTag/u": ["x"]}},
        },
        {"Effect": "Allow", "Action": "chime:GetMessagingSessionEndpoint", "Resource": "*"},
    ]
    reordered = [
        {"Effect": "Allow", "Action": ["chime:GetMessagingSessionEndpoint"], "Resource": ["*"]},
        {
            "Resource": RESOURCE,
            "Action": ["Chime:SendChannelMessage", "chime:Connect"],
            "Effect": "Allow",
            "Condition": {"StringEquals": {"aws:RequestTag/u": "x"}},
        },
    ]
    assert normalise_statements(written) == normalise_statements(reordered)


def test_a_different_resource_action_or_condition_is_a_different_statement() -> None:
    base = {"Effect": "Allow", "Action": ["sts:AssumeRole", "sts:TagSession"], "Resource": "*"}
    for changed in (
        {**base, "Resource": RESOURCE},
        {**base, "Action": ["sts:AssumeRole"]},
        {**base, "Condition": {"Null": {"aws:RequestTag/u": "false"}}},
    ):
        assert normalise_statements([base]) != normalise_statements([changed])
