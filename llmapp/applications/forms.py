import re

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
from wtforms.validators import InputRequired, Length, NumberRange, Optional, StopValidation, ValidationError

from .. import secrets_box
from ..forms import PlatformForm
from ..services import applications, recommendations
from ..web import bounded_int

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_ENV_VARS = 100


class EnvVarForm(Form):
    """One row of the environment table. ``secret_id`` points at a stored secret this row keeps;
    ``secret_token`` carries, encrypted, a secret typed before the form came back with errors
    (so it is neither echoed into the page nor lost)."""

    name = StringField("Name", validators=[InputRequired("Give the variable a name."), Length(max=128)])
    value = StringField("Value", validators=[Length(max=10_000, message="At most 10,000 characters.")])
    secret = BooleanField("Secret")
    secret_id = HiddenField()
    secret_token = HiddenField()

    def validate_name(self, field):
        if not ENV_NAME.match(field.data.strip()):
            raise ValidationError("Use letters, digits and _, not starting with a digit.")

    def validate_secret_id(self, field):
        if field.data and bounded_int(field.data) is None:
            raise ValidationError("Invalid secret reference.")

    def validate_value(self, field):
        if self.secret_id.data and not self.secret.data and not field.data:
            raise ValidationError(
                "This variable holds a secret. Type its value to keep it as plain text, "
                "or tick Secret to keep the stored value."
            )

    def validate_secret_token(self, field):
        if field.data and not self.value.data:
            try:
                self.value.data = secrets_box.decrypt(field.data)  # the value typed before, kept
            except ValueError:
                self.value.errors.append("Type this secret again.")

    def conceal(self) -> None:
        """Before the row goes back to the browser: a typed secret travels only encrypted."""
        if self.secret.data and self.value.data:
            if not self.value.errors:
                self.secret_token.data = secrets_box.encrypt(self.value.data)
            self.value.data = ""


def _model_id(value):
    """A model id, or None for anything else (the validator then says what is wrong)."""
    return bounded_int(value)


def _parsed(form, field):
    """Stop at "Not a valid integer value." rather than also complaining about the range."""
    if field.data is None:
        raise StopValidation()


def _bounded(name: str, key: str, required: bool = True):
    """An integer field within the rule's bounds; an optional one left empty takes the platform's default."""
    low, high = recommendations.LIMITS[key]
    return IntegerField(
        name,
        validators=[
            InputRequired(f"{name} is required.") if required else Optional(),
            _parsed,
            NumberRange(low, high, f"Must be between {low} and {high}."),
        ],
    )


def _plugin_id(value) -> int:
    return bounded_int(value, default=0)


class ApplicationForm(PlatformForm):
    name = StringField(
        "Name", validators=[InputRequired("Name is required."), Length(max=100, message="At most 100 characters.")]
    )
    model_id = SelectField(
        "Model", coerce=_model_id, validators=[InputRequired("Choose a model.")], validate_choice=False
    )
    description = TextAreaField("Description", validators=[Optional(), Length(max=2000)])
    max_concurrency = _bounded("Max concurrency", "max_concurrency")
    timeout_s = _bounded("Timeout (seconds)", "timeout_s")
    log_level = SelectField("Log level", choices=[(level, level) for level in applications.LOG_LEVELS])
    cache_size = _bounded("Cache size (entries)", "cache_size")
    batch_size = _bounded("Batch size", "batch_size")
    restart_policy = SelectField(
        "Restart policy",
        choices=[("on-failure", "On failure"), ("never", "Never")],
    )
    max_restarts = IntegerField(
        "Max restarts",
        validators=[
            InputRequired("Max restarts is required."),
            _parsed,
            NumberRange(0, 10, "Must be between 0 and 10."),
        ],
    )
    # No max_entries: rows past the limit would be dropped without a word; the limit is checked below.
    log_lines = _bounded("Log lines kept", "log_lines", required=False)
    log_days = _bounded("Log days kept", "log_days", required=False)
    env = FieldList(FormField(EnvVarForm))
    # Which plugins run; their order and per-application settings are on the application's page.
    plugins = SelectMultipleField("Plugins", coerce=_plugin_id, validate_choice=False)

    def __init__(self, *args, owner_id: int, application_id=None, models=(), plugin_choices=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.owner_id, self.application_id = owner_id, application_id
        self.model_id.choices = [(m.id, m.name) for m in models]
        self.plugins.choices = list(plugin_choices)

    def validate_plugins(self, field):
        offered = {plugin_id for plugin_id, _ in field.choices}
        if any(plugin_id not in offered for plugin_id in field.data or ()):
            raise ValidationError("Choose plugins from the list.")

    def validate_model_id(self, field):
        if field.data not in {model_id for model_id, _ in field.choices}:
            raise ValidationError("Choose a model from the registry.")

    def validate_name(self, field):
        field.data = (field.data or "").strip()
        if not field.data:
            raise ValidationError("Name is required.")
        if applications.name_taken(self.owner_id, field.data, except_id=self.application_id):
            raise ValidationError(f"You already have an application named “{field.data}”.")

    def validate_env(self, field):
        if len(field.entries) > MAX_ENV_VARS:
            raise ValidationError(
                f"At most {MAX_ENV_VARS} environment variables; this form has {len(field.entries)}. Remove some."
            )
        seen = set()
        for entry in field.entries:
            name = (entry.form.name.data or "").strip()
            if name in seen:
                entry.form.name.errors.append(f"{name} is defined twice.")
                raise ValidationError("Each variable name may appear only once.")
            seen.add(name)

    def conceal_secrets(self) -> None:
        for entry in self.env.entries:
            entry.form.conceal()

    def service_data(self) -> dict:
        """What the applications service takes."""
        data = {
            key: getattr(self, key).data for key in ("name", "model_id", "description", *applications.DEFAULT_CONFIG)
        }
        data["env"] = [{**entry.data, "secret_id": bounded_int(entry.data["secret_id"])} for entry in self.env.entries]
        return data


class PlaygroundForm(PlatformForm):
    """A message to the running application, with the two sampling settings people reach for."""

    message = TextAreaField("Message", validators=[InputRequired("Type a message.")])
    max_tokens = IntegerField(
        "Max tokens",
        default=128,
        validators=[InputRequired("Max tokens is required."), _parsed, NumberRange(1, 4096, "Between 1 and 4096.")],
    )
    temperature = FloatField(
        "Temperature",
        default=0.7,
        validators=[InputRequired("Temperature is required."), _parsed, NumberRange(0, 2, "Between 0 and 2.")],
    )

    def validate_temperature(self, field):
        if field.data != field.data:  # NaN passes NumberRange
            raise ValidationError("Between 0 and 2.")
