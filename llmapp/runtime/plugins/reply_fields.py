"""What an upstream's reply says besides its content (tool calls and their arguments, reasoning, a
refusal, a message name): text the model wrote, which the output plugins judge as they judge the
content, so that no masked word leaves through another field.

A whole answer's fields are rewritten whole. A stream's are held back until their choice ends (a tool
call's arguments arrive in pieces, and a match may span them), then rewritten whole and sent with the
choice's last text, before its end. A field a filter blocks is left out, and the choice ends with
finish_reason "content_filter", as when the content is blocked.
"""

import copy

from .chain import PluginRun, text_slots


def rewrite_whole(fields: dict, run: PluginRun) -> tuple[dict, bool]:
    """``fields`` (a message's or delta's, its content aside) through the output side of the chain:
    each text as a whole. Returns the fields to send and whether a filter blocked one of them."""
    fields, blocked = copy.deepcopy(fields), False
    for name in [name for name in fields if name != "content"]:
        wrapper = {name: fields[name]}  # the field as a message of its own: text_slots finds its texts
        results = []
        for holder, key, text in text_slots([wrapper]):
            rewriter = run.output()
            results.append((holder, key, rewriter.whole(text), rewriter.blocked))
        if any(was_blocked for *_, was_blocked in results):
            blocked = True
            del fields[name]
            continue
        for holder, key, text, _ in results:
            holder[key] = text
        fields[name] = wrapper[name]
    return fields, blocked


def merge(held: dict, delta: dict) -> None:
    """Add a streamed delta's fields to those held for its choice: texts run on, a tool call's pieces
    join the call of the same index, anything else is the latest value."""
    for name, value in delta.items():
        if name == "tool_calls" and isinstance(value, list):
            calls = held.setdefault("tool_calls", [])
            for piece in value:
                if isinstance(piece, dict):
                    _join_call(calls, piece)
        elif name == "function_call" and isinstance(value, dict):
            _join_function(held.setdefault("function_call", {}), value)
        elif isinstance(value, str) and isinstance(held.get(name), str):
            held[name] += value
        else:
            held[name] = copy.deepcopy(value)


def _join_call(calls: list, piece: dict) -> None:
    index = piece.get("index", len(calls))
    call = next((c for c in calls if c.get("index") == index), None)
    if call is None:
        calls.append(copy.deepcopy(piece))
        return
    for key, value in piece.items():
        if key == "function" and isinstance(value, dict):
            _join_function(call.setdefault("function", {}), value)
        elif call.get(key) is None:
            call[key] = copy.deepcopy(value)


def _join_function(function: dict, piece: dict) -> None:
    for key, value in piece.items():
        if isinstance(value, str) and isinstance(function.get(key), str):
            function[key] += value
        else:
            function[key] = value
