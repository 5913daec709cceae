"""A plugin type's configuration as form fields, generated from its JSON Schema, and read back.

Widgets by schema: boolean → checkbox; enum → select; integer/number → number input; an array of
strings → one entry per line (an array of an enum → checkboxes); ``x-widget: textarea`` → a text
area; ``x-secret`` → a password input that is never filled in (left empty, the stored value stays).
What is read back is checked against the schema by the plugins service, not here.
"""

from dataclasses import dataclass, field

from werkzeug.datastructures import MultiDict

from ..i18n import translate
from ..runtime import plugins as plugin_types

PREFIX = "config-"


@dataclass
class ConfigField:
    name: str
    title: str
    description: str
    widget: str  # checkbox, select, number, lines, checkboxes, textarea, secret, text
    value: object
    options: list = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    step: str = "1"
    stored: bool = False  # a secret is stored (shown as such, never shown)

    @property
    def input_name(self) -> str:
        return PREFIX + self.name


def _widget(spec: dict) -> str:
    if spec.get("x-secret"):
        return "secret"
    if spec.get("type") == "boolean":
        return "checkbox"
    if "enum" in spec:
        return "select"
    if spec.get("type") in ("integer", "number"):
        return "number"
    if spec.get("type") == "array":
        return "checkboxes" if "enum" in spec.get("items", {}) else "lines"
    return spec.get("x-widget", "text")


def fields(type_name: str, config: dict, errors: dict | None = None, stored: dict | None = None) -> list[ConfigField]:
    """The form fields of a type, showing ``config`` (its values, or the defaults); ``stored``: the
    plugin's saved configuration, for the secrets it holds."""
    errors, stored = errors or {}, stored or {}
    result = []
    for name, spec in plugin_types.TYPES[type_name].schema["properties"].items():
        widget = _widget(spec)
        value = config.get(name, spec.get("default", ""))
        result.append(
            ConfigField(
                name=name,
                title=translate(spec.get("title", name)),
                description=translate(spec.get("description", "")),
                widget=widget,
                value="" if widget == "secret" else value,
                options=list(spec.get("enum") or spec.get("items", {}).get("enum") or []),
                errors=errors.get(name, []),
                step="1" if spec.get("type") == "integer" else "any",
                stored=widget == "secret" and bool(stored.get(name)),
            )
        )
    return result


def read(type_name: str, form: MultiDict) -> dict:
    """The configuration a submitted form describes (typed where the input parses; the service checks it)."""
    config = {}
    for name, spec in plugin_types.TYPES[type_name].schema["properties"].items():
        key, widget = PREFIX + name, _widget(spec)
        if key not in form and widget not in ("checkbox", "checkboxes") and "default" in spec:
            config[name] = spec["default"]  # not in the form at all (a script's post): the default
        elif widget == "checkbox":
            config[name] = key in form
        elif widget == "checkboxes":
            config[name] = form.getlist(key)
        elif widget == "lines":
            config[name] = [line.strip() for line in form.get(key, "").splitlines() if line.strip()]
        elif widget == "number":
            raw = form.get(key, "").strip()
            if raw:
                config[name] = _number(raw, spec["type"])
            elif "default" in spec:
                config[name] = spec["default"]
        elif widget == "secret":
            if form.get(key):  # left empty: the stored one stays (the service knows it)
                config[name] = form[key]
        else:
            config[name] = form.get(key, "")
    return config


def _number(raw: str, kind: str):
    try:
        value = float(raw)
    except ValueError:
        return raw  # the schema says "Must be a number"
    if kind == "integer" and value.is_integer():
        return int(value)
    return value if value == value else raw  # NaN stays text, and is refused
