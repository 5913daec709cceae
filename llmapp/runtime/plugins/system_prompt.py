"""System prompt and template: a system message added to every chat, and the user's message wrapped in a
template with variables (``{input}`` is the message; ``{name}`` a variable; other braces stay as typed)."""

import re
from dataclasses import dataclass, field

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


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
        """The chat with our system message and the template applied to the last user message."""
        messages = [dict(m) for m in messages]
        if self.template:
            for message in reversed(messages):
                if message.get("role") == "user" and isinstance(message.get("content"), str):
                    message["content"] = self.fill(self.template, message["content"])
                    break
        if self.system:
            system = self.fill(self.system)
            if messages and messages[0].get("role") == "system":
                own = messages[0].get("content") or ""
                messages[0]["content"] = system if self.mode == "replace" else f"{system}\n\n{own}"
            else:
                messages.insert(0, {"role": "system", "content": system})
        return messages

    def apply_to_prompt(self, prompt: str) -> str:
        """A plain completion: the system text above the (templated) prompt."""
        text = self.fill(self.template, prompt) if self.template else prompt
        return f"{self.fill(self.system)}\n\n{text}" if self.system else text
