from flask_babel import gettext as _
from wtforms import (
    BooleanField,
    FieldList,
    FloatField,
    Form,
    FormField,
    HiddenField,
    IntegerField,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
)
from wtforms.validators import InputRequired, NumberRange, Optional, StopValidation, ValidationError

from .. import secrets_box
from ..forms import IntegerInput, PlatformForm
from ..i18n import _l
from ..services import applications
from ..web import bounded_int


class EnvVarForm(Form):
    """One row of the environment table. ``secret_id`` points at a stored secret this row keeps;
    ``secret_token`` carries, encrypted, a secret typed before the form came back with errors
    (so it is neither echoed into the page nor lost). The rules of a row are the applications service's."""

    name = StringField(_l("Name"))
    value = StringField(_l("Value"))
    secret = BooleanField(_l("Secret"))
    secret_id = HiddenField()
    secret_token = HiddenField()

    def validate_secret_id(self, field):
        if field.data and bounded_int(field.data) is None:
            raise ValidationError(_("Invalid secret reference."))

    def validate_secret_token(self, field):
        if field.data and not self.value.data:
            try:
                self.value.data = secrets_box.decrypt(field.data)  # the value typed before, kept
            except ValueError:
                self.value.errors.append(_("Type this secret again."))

    def conceal(self) -> None:
        """Before the row goes back to the browser: a typed secret travels only encrypted."""
        if self.secret.data and self.value.data:
            if not self.value.errors:
                self.secret_token.data = secrets_box.encrypt(self.value.data)
            self.value.data = ""


def _model_id(value):
    """A model id as typed: a number (of any size: the service knows what the registry has), None
    when empty, else the text itself (which names no model)."""
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def _parsed(form, field):
    """Stop at "Not a valid integer value." rather than also complaining about the range."""
    if field.data is None:
        raise StopValidation()


def _plugin_id(value) -> int:
    return bounded_int(value, default=0)


def _number(key: str) -> IntegerInput:
    return IntegerInput(applications.LABELS[key])


# The restart policies as the form's choices show them (the values sent are the policies themselves).
RESTART_POLICY_LABELS = {"on-failure": _l("On failure"), "never": _l("Never")}


class ApplicationForm(PlatformForm):
    """The application form parses what was typed (text to numbers); the applications service judges it
    (``check``), and its errors are shown here at their fields, the same words the CLI and the API give."""

    name = StringField(applications.LABELS["name"])
    model_id = SelectField(applications.LABELS["model_id"], coerce=_model_id, validate_choice=False)
    description = TextAreaField(applications.LABELS["description"])
    max_concurrency = _number("max_concurrency")
    timeout_s = _number("timeout_s")
    log_level = SelectField(
        applications.LABELS["log_level"],
        choices=[(level, level) for level in applications.LOG_LEVELS],
        validate_choice=False,
    )
    cache_size = _number("cache_size")
    batch_size = _number("batch_size")
    restart_policy = SelectField(
        applications.LABELS["restart_policy"],
        choices=[
            (policy, RESTART_POLICY_LABELS.get(policy, policy.replace("-", " ").capitalize()))
            for policy in applications.RESTART_POLICIES
        ],
        validate_choice=False,
    )
    max_restarts = _number("max_restarts")
    replicas = _number("replicas")
    context_size = _number("context_size")
    threads = _number("threads")
    gpu_memory_share = _number("gpu_memory_share")
    tensor_parallel = _number("tensor_parallel")
    host = SelectField(applications.LABELS["host"], validate_choice=False)
    log_lines = _number("log_lines")
    log_days = _number("log_days")
    # No max_entries: rows past the limit would be dropped without a word; the service counts them.
    env = FieldList(FormField(EnvVarForm))
    # One line saying why, kept with the release this save makes (the service cuts a longer one).
    note = StringField(_l("Release note"))
    # Which plugins run; their order and per-application settings are on the application's page.
    plugins = SelectMultipleField(_l("Plugins"), coerce=_plugin_id, validate_choice=False)

    def __init__(self, *args, owner_id: int, application_id=None, models=(), plugin_choices=(), hosts=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.owner_id, self.application_id = owner_id, application_id
        self.model_id.choices = [(m.id, m.name) for m in models]
        # Any host that fits, or one that announced itself (a pin to one gone since stays offered).
        names = [host.name for host in hosts]
        if self.host.data and self.host.data not in names:
            names.append(self.host.data)
        self.host.choices = [("", _("Any host that fits"))] + [(name, name) for name in names]
        self.plugins.choices = list(plugin_choices)

    def validate_plugins(self, field):
        offered = {plugin_id for plugin_id, _label in field.choices}
        if any(plugin_id not in offered for plugin_id in field.data or ()):
            raise ValidationError(_("Choose plugins from the list."))

    def judged(self) -> bool:
        return super().judged(lambda data: applications.check(data, self.owner_id, self.application_id))

    def conceal_secrets(self) -> None:
        for entry in self.env.entries:
            entry.form.conceal()

    def service_data(self) -> dict:
        """What the applications service takes."""
        data = {
            key: getattr(self, key).data
            for key in ("name", "model_id", "description", "note", *applications.DEFAULT_CONFIG)
        }
        data["env"] = [{**entry.data, "secret_id": bounded_int(entry.data["secret_id"])} for entry in self.env.entries]
        return data


class PlaygroundForm(PlatformForm):
    """A message to the running application, with the two sampling settings people reach for."""

    message = TextAreaField(_l("Message"), validators=[InputRequired(_l("Type a message."))])
    max_tokens = IntegerField(
        _l("Max tokens"),
        default=128,
        validators=[
            InputRequired(_l("Max tokens is required.")),
            _parsed,
            NumberRange(1, 4096, _l("Between 1 and 4096.")),
        ],
    )
    temperature = FloatField(
        _l("Temperature"),
        default=0.7,
        validators=[InputRequired(_l("Temperature is required.")), _parsed, NumberRange(0, 2, _l("Between 0 and 2."))],
    )

    top_p = FloatField(_l("Top-p"), default=1.0, validators=[Optional(), _parsed])
    stop = TextAreaField(_l("Stop sequences"), description=_l("One per line, at most 4; \\n for a line break."))
    system = TextAreaField(_l("System prompt"), description=_l("Sent first, before the conversation, on every turn."))

    def validate_temperature(self, field):
        if field.data != field.data:  # NaN passes NumberRange
            raise ValidationError(_("Between 0 and 2."))

    def validate_top_p(self, field):
        if field.data is not None and not 0 < field.data <= 1:  # NaN too; 0 keeps no token at all
            raise ValidationError(_("Above 0, at most 1."))

    def settings(self):
        """The turn's settings, as the playground service takes them.

        :raise PlaygroundError: the stop sequences break its rules (shown at their field).
        """
        from ..services import playground

        return playground.Settings(
            max_tokens=self.max_tokens.data,
            temperature=self.temperature.data,
            top_p=1.0 if self.top_p.data is None else self.top_p.data,
            stop=playground.stop_sequences(self.stop.data),
            system=(self.system.data or "").strip(),
        )

    def kept(self) -> dict:
        """What the next message's form starts with: the same settings."""
        return {name: self[name].data for name in ("max_tokens", "temperature", "top_p", "stop", "system")}
