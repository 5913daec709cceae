"""The openai engine kind: a model an OpenAI-compatible upstream serves (vLLM, Ollama, TGI, llama.cpp,
a cloud API), forwarded by runtime/engines/upstream.py with the upstream's model name and API key."""

from flask_babel import gettext as _

from ..i18n import _l
from ..netguard import url_shape_error
from ..services import environment, recommendations
from .kind import ENGINE_COLUMNS, EngineKind, RegistryField

DEFAULT_KEY_VARIABLE = ENGINE_COLUMNS["api_key_env"]


class UpstreamKind(EngineKind):
    name = "openai"
    label = _l("an OpenAI-compatible upstream")
    fields = (
        RegistryField("source", _l("openai: where the upstream runs (optional note).")),
        RegistryField(
            "base_url",
            _l("openai engine only"),
            required=_l("Give the upstream's base URL, e.g. http://vllm:8000/v1."),
        ),
        RegistryField(
            "upstream_model", _l("openai engine only"), required=_l("Give the model name the upstream serves.")
        ),
        RegistryField(
            "api_key_env",
            _l(
                "openai engine: the server sends the value of this variable (set it in the application's "
                "environment) as the upstream's API key"
            ),
        ),
    )
    notes = {"batch_size": _l("the upstream batches")}

    def check(self, values, errors):
        super().check(values, errors)

        def error(column: str, message: str) -> None:
            if column not in errors:
                errors[column] = [message]

        if values["base_url"]:  # its form only: an admin's upstream may be on any network
            if shape := url_shape_error(values["base_url"], query=False):
                error("base_url", shape)
        values["api_key_env"] = values["api_key_env"] or DEFAULT_KEY_VARIABLE
        if not environment.ENV_NAME.match(values["api_key_env"]):
            error("api_key_env", _("An environment variable name: letters, digits and _, not starting with a digit."))
        elif why := environment.refusal(values["api_key_env"]):
            # it is one of their variables
            error("api_key_env", _("%(refusal)s Members could not give the key in it.", refusal=why))

    def source_summary(self, model):
        return f"{model.base_url} → {model.upstream_model}"

    def recommend(self, model, memory_bytes, cpu_cores=None):
        # No weights and no KV cache here: this host's memory plays no part.
        return recommendations.recommend_upstream(model.parameters_billions, model.context_length, model.base_url)

    def spec_options(self, model):
        return {
            "base_url": model.base_url,
            "upstream_model": model.upstream_model,
            "api_key_env": model.api_key_env or DEFAULT_KEY_VARIABLE,
        }

    def example_variables(self, model):
        return [(model.api_key_env or DEFAULT_KEY_VARIABLE, "demo-not-a-real-key", True)]

    def build(self, spec, environ):
        from ..runtime.engines.upstream import UpstreamEngine

        options = spec.engine_options
        api_key = environ.get(options.get("api_key_env") or DEFAULT_KEY_VARIABLE)
        return UpstreamEngine(
            options["base_url"], options["upstream_model"], api_key, spec.config.timeout_s, spec.app_name
        )


KIND = UpstreamKind()
