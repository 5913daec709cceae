from wtforms import SelectField, StringField, URLField

from .. import engines
from ..forms import DecimalInput, IntegerInput, PlatformForm
from ..models import RegistryModel
from ..services import registry


class RegistryModelForm(PlatformForm):
    """The registry form parses what was typed; the registry service's ``check`` judges it."""

    name = StringField("Name")
    family = StringField("Family")
    parameters_billions = DecimalInput("Parameters (billions)")
    precision = SelectField("Precision", choices=[(p, p) for p in RegistryModel.PRECISIONS], validate_choice=False)
    context_length = IntegerInput("Context length (tokens)")
    engine = SelectField("Engine", validate_choice=False)  # choices: the engine table's, in __init__
    source = StringField("Source")
    base_url = URLField("Upstream base URL")
    upstream_model = StringField("Upstream model name")
    api_key_env = StringField("Upstream API key variable", default=engines.ENGINE_COLUMNS["api_key_env"])

    def __init__(self, *args, model_id=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.engine.choices = [(kind.name, f"{kind.name} — {kind.label}") for kind in engines.ENGINES.values()]
        self.model_id = model_id

    def judged(self) -> bool:
        return super().judged(lambda data: registry.check(data, self.model_id))
