"""The transformers engine kind: a local Hugging Face model directory, served by our own engine
(runtime/engines/transformers.py) on this host's CPU or GPU."""

from pathlib import Path

from flask_babel import gettext as _

from ..i18n import _l
from ..services import model_detection, recommendations
from .kind import EngineKind, NotReady, RegistryField


class HuggingFaceDirectory:
    """What every kind serving a local Hugging Face directory shares: the source field, its check, the
    recommendation from the model's size, the files the server's account must read."""

    def source_field(self) -> RegistryField:
        return RegistryField(
            "source",
            _l(
                "%(engine)s: the path of a local Hugging Face model directory (checked on this host).", engine=self.name
            ),
            required=model_detection.NO_DIRECTORY,  # check_directory says it (check below judges it whole)
        )

    def check(self, values, errors):
        if "source" in errors:
            return
        try:
            model_detection.check_directory(values["source"])
        except model_detection.NotAModel as e:
            errors["source"] = [str(e)]

    def recommend(self, model, memory_bytes, cpu_cores=None):
        """From the model's size, and its KV cache from its config (its KV heads) where it says."""
        return recommendations.recommend(
            model.parameters_billions,
            model.precision,
            model.context_length,
            memory_bytes,
            shape=model_detection.kv_shape(model.source),
            cpu_cores=cpu_cores,
        )

    def check_model(self, model):
        """:raise NotReady: the directory is not a model (before anything is spawned)."""
        try:
            model_detection.check_directory(model.source)
        except model_detection.NotAModel as e:
            raise NotReady(_("The model could not be loaded: %(reason)s", reason=e)) from e

    def model_paths(self, model):
        folder = Path(model.source)
        try:  # the weights may be owner-only; what is in sub-folders (rare) is found by the load
            return [folder, *(path for path in folder.iterdir() if path.is_file())]
        except OSError as e:
            raise NotReady(
                _("The model directory %(path)s could not be read: %(reason)s.", path=folder, reason=e.strerror)
            ) from e


class TransformersKind(HuggingFaceDirectory, EngineKind):
    name = "transformers"
    label = _l("a local Hugging Face model directory")
    notes = {"gpu_memory_share": _l("not used"), "tensor_parallel": _l("not used: one process")}

    def __init__(self):
        self.fields = (self.source_field(),)

    def detect(self, path):
        return model_detection.detect(path)

    def preflight(self, model):
        self.check_model(model)

    def paths_to_read(self, model):
        return self.model_paths(model)

    def spec_options(self, model):
        return {"path": model.source, "precision": model.precision}

    def example_variables(self, model):
        # The CPU threads torch uses, and no download attempts.
        return [("OMP_NUM_THREADS", "2", False), ("HF_HUB_OFFLINE", "1", False)]

    def build(self, spec, environ):
        from ..runtime.engines.transformers import TransformersEngine

        options = spec.engine_options
        precision = options.get("precision", "fp32")
        config = spec.config
        return TransformersEngine(
            options["path"], config.batch_size, precision, spec.app_name, config.context_size, config.threads
        )


KIND = TransformersKind()
