from wtforms import FloatField, IntegerField, SelectField, StringField, URLField
from wtforms.validators import InputRequired, Length, NumberRange, Optional, ValidationError

from ..applications.forms import ENV_NAME
from ..forms import PlatformForm
from ..models import RegistryModel
from ..services import model_detection, registry


class RegistryModelForm(PlatformForm):
    name = StringField("Name", validators=[InputRequired("Name is required."), Length(max=100)])
    family = StringField("Family", validators=[Optional(), Length(max=50)])
    parameters_billions = FloatField(
        "Parameters (billions)",
        validators=[
            InputRequired("Give the parameter count."),
            NumberRange(0.000001, 10_000, "Between 0.000001 and 10,000."),
        ],
    )
    precision = SelectField("Precision", choices=[(p, p) for p in RegistryModel.PRECISIONS])
    context_length = IntegerField(
        "Context length (tokens)",
        validators=[InputRequired("Give the context length."), NumberRange(1, 10_000_000, "Between 1 and 10,000,000.")],
    )
    engine = SelectField(
        "Engine",
        choices=[
            ("transformers", "transformers — a local Hugging Face model directory"),
            ("openai", "openai — an OpenAI-compatible upstream"),
        ],
    )
    source = StringField("Source", validators=[Length(max=500)])
    base_url = URLField("Upstream base URL", validators=[Length(max=500)])
    upstream_model = StringField("Upstream model name", validators=[Length(max=200)])
    api_key_env = StringField(
        "Upstream API key variable", default="OPENAI_API_KEY", validators=[Optional(), Length(max=128)]
    )

    def __init__(self, *args, model_id=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_id = model_id

    def validate_name(self, field):
        field.data = (field.data or "").strip()
        if registry.name_taken(field.data, except_id=self.model_id):
            raise ValidationError(f"A model named “{field.data}” is already registered.")

    def validate_source(self, field):
        if self.engine.data == "transformers":
            field.data = (field.data or "").strip()
            try:
                model_detection.check_directory(field.data)
            except model_detection.NotAModel as e:
                raise ValidationError(str(e)) from e

    def validate_api_key_env(self, field):
        field.data = (field.data or "").strip() or "OPENAI_API_KEY"
        if not ENV_NAME.match(field.data):
            raise ValidationError("An environment variable name: letters, digits and _, not starting with a digit.")

    def validate_base_url(self, field):
        if self.engine.data == "openai":
            if not field.data:
                raise ValidationError("Give the upstream's base URL, e.g. http://vllm:8000/v1.")
            if not field.data.startswith(("http://", "https://")):
                raise ValidationError("The base URL must start with http:// or https://.")

    def validate_upstream_model(self, field):
        if self.engine.data == "openai" and not (field.data or "").strip():
            raise ValidationError("Give the model name the upstream serves.")
