"""What the playground sends: its request body from the settings, stop sequences as typed, and what the
server says it masked of the message."""

from types import SimpleNamespace

import pytest

from llmapp.runtime.answers import input_masked
from llmapp.services.playground import PlaygroundError, request_body, stop_sequences


def test_the_body_carries_the_system_prompt_first_and_only_the_settings_that_differ():
    earlier = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    turn = {"message": "and?", "max_tokens": 8, "temperature": 0.2, "top_p": 1.0, "stop": [], "system": ""}
    body = request_body("bot", earlier, turn)
    assert body["messages"] == [*earlier, {"role": "user", "content": "and?"}]
    assert "top_p" not in body and "stop" not in body and body["stream"] is True
    body = request_body("bot", earlier, {**turn, "top_p": 0.5, "stop": ["###"], "system": "Be brief."})
    assert body["messages"][0] == {"role": "system", "content": "Be brief."} and body["messages"][1:3] == earlier
    assert body["top_p"] == 0.5 and body["stop"] == ["###"]


def test_stop_sequences_are_typed_one_per_line():
    assert stop_sequences("###\n\n  \nEND\\n") == ("###", "END\n")  # blank lines ignored; \n a line break
    assert stop_sequences(None) == ()
    with pytest.raises(PlaygroundError, match="At most 4 stop sequences"):
        stop_sequences("a\nb\nc\nd\ne")
    with pytest.raises(PlaygroundError, match="at most 100 characters"):
        stop_sequences("x" * 101)


def test_the_server_says_what_kinds_it_masked_in_the_request_not_in_the_reply():
    events = [
        {"plugin": "pii", "action": "mask", "side": "input", "found": ["phone", "email"]},
        {"plugin": "filter", "action": "mask", "side": "input", "found": ["keyword", "email"]},
        {"plugin": "filter", "action": "mask", "side": "output", "found": ["secret"]},
    ]
    assert input_masked(SimpleNamespace(plugins=SimpleNamespace(events=events))) == "email, keyword, phone"
    assert input_masked(SimpleNamespace(plugins=None)) == ""
