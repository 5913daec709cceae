"""System prompt and template: a system message added to every chat, and the user's message wrapped in a
template with variables (``{input}`` is the message; ``{name}`` a variable; other braces stay as typed).

In ``replace`` mode the plugin's system message is the only one: every system (and ``developer``)
message of the request's own is removed, wherever it is in the chat, or a client could override the
application's instructions with a second one further down. Messages the chain itself added (another
system prompt, retrieved passages) are ``Added`` and stay.
"""

import re
from dataclasses import dataclass, field

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
SYSTEM_ROLES = ("system", "developer")  # developer: OpenAI's newer name for system (upstreams keep it)


class Added(dict):
    """A message a plugin added to the chat (an ordinary dict on the wire)."""


def content_text(message: dict) -> str:
    """A message's text: its content, or the text of its content parts."""
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return content if isinstance(content, str) else ""


def _with_text(message: dict, text: str) -> dict:
    """The message with its text replaced (content parts: the first text part holds it all)."""
    content = message.get("content")
    if not isinstance(content, list):
        return {**message, "content": text}
    parts, placed = [], False
    for part in content:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            if not placed:
                parts.append({**part, "text": text})
                placed = True
        else:
            parts.append(part)
    return {**message, "content": parts}


@dataclass
class SystemPrompt:
    system: str = ""
    mode: str = "prepend"  # with a system message of the request's own: prepend ours, or replace it
    template: str = ""
    variables: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: dict) -> "SystemPrompt":
        variables = {}
        for item in config.get("variables") or []:
            name, _, value = item.partition("=")
            variables[name.strip()] = value
        return cls(
            config.get("system_prompt", ""), config.get("mode", "prepend"), config.get("template", ""), variables
        )

    def fill(self, text: str, user_input: str = "") -> str:
        values = {**self.variables, "input": user_input}
        return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)

    def apply_to_messages(self, messages: list[dict]) -> list[dict]:
        """The chat with our system message and the template applied to the last user message
        (a new list: the messages it changes are new dicts, the others are the same)."""
        messages = list(messages)
        if self.template:
            for i in range(len(messages) - 1, -1, -1):
                if messages[i].get("role") == "user":
                    messages[i] = _with_text(messages[i], self.fill(self.template, content_text(messages[i])))
                    break
        if not self.system:
            return messages
        system = Added(role="system", content=self.fill(self.system))
        if self.mode == "replace":
            own = [m for m in messages if m.get("role") in SYSTEM_ROLES and not isinstance(m, Added)]
            return [system, *(m for m in messages if not any(m is o for o in own))]
        first = messages[0] if messages else {}
        if first.get("role") in SYSTEM_ROLES and isinstance(first.get("content"), str):
            # Merged into the request's own (a plain dict: a later replace-mode prompt removes it).
            return [{**first, "content": f"{system['content']}\n\n{first['content']}"}, *messages[1:]]
        return [system, *messages]

    def apply_to_prompt(self, prompt: str) -> str:
        """A plain completion: the system text above the (templated) prompt."""
        text = self.fill(self.template, prompt) if self.template else prompt
        return f"{self.fill(self.system)}\n\n{text}" if self.system else text
