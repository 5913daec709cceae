"""Which actions a person may ask for in each status (the buttons a page enables): a pure rule."""

import pytest

from llmapp.services import lifecycle


@pytest.mark.parametrize(
    ("status", "actions"),
    [
        ("stopped", {"view", "edit", "delete", "deploy"}),
        ("failed", {"view", "edit", "delete", "deploy"}),
        ("running", {"view", "stop", "call", "edit", "roll"}),  # an edit is a draft; a roll-out deploys it
        ("deploying", {"view"}),
        ("stopping", {"view"}),
    ],
)
def test_allowed_actions(status, actions):
    assert lifecycle.allowed_actions(status) == actions
