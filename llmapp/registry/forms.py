from wtforms import SelectField, StringField, URLField

from .. import engines
from ..forms import DecimalInput, IntegerInput, PlatformForm
from ..i18n import _l
from ..models import RegistryModel
from ..services import registry


class RegistryModelForm(PlatformForm):
    """The registry form parses what was typed; the registry service's ``check`` judges it."""

    name = StringField(_l("Name"))
    family = StringField(_l("Family"))
    parameters_billions = DecimalInput(_l("Parameters (billions)"))
    precision = SelectField(_l("Precision"), choices=[(p, p) for p in RegistryModel.PRECISIONS], validate_choice=False)
    context_length = IntegerInput(_l("Context length (tokens)"))
    engine = SelectField(_l("Engine"), validate_choice=False)  # choices: the engine table's, in __init__
    source = StringField(_l("Source"))
    base_url = URLField(_l("Upstream base URL"))
    upstream_model = StringField(_l("Upstream model name"))
    api_key_env = StringField(_l("Upstream API key variable"), default=engines.ENGINE_COLUMNS["api_key_env"])

    def __init__(self, *args, model_id=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.engine.choices = [(kind.name, f"{kind.name} — {kind.label}") for kind in engines.ENGINES.values()]
        self.model_id = model_id

    def judged(self) -> bool:
        return super().judged(lambda data: registry.check(data, self.model_id))
