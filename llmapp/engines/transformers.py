"""The transformers engine kind: a local Hugging Face model directory, served by our own engine
(runtime/engines/transformers.py) on this host's CPU or GPU."""

from pathlib import Path

from ..services import model_detection, recommendations
from .kind import EngineKind, NotReady, RegistryField


class TransformersKind(EngineKind):
    name = "transformers"
    label = "a local Hugging Face model directory"
    fields = (
        RegistryField(
            "source",
            "transformers: the path of a local Hugging Face model directory (checked on this host).",
            required=model_detection.NO_DIRECTORY,  # check_directory says it (check below judges it whole)
        ),
    )

    def check(self, values, errors):
        if "source" in errors:
            return
        try:
            model_detection.check_directory(values["source"])
        except model_detection.NotAModel as e:
            errors["source"] = [str(e)]

    def detect(self, path):
        return model_detection.detect(path)

    def recommend(self, model, memory_bytes):
        return recommendations.recommend(model.parameters_billions, model.precision, model.context_length, memory_bytes)

    def preflight(self, model):
        try:
            model_detection.check_directory(model.source)
        except model_detection.NotAModel as e:
            raise NotReady(f"The model could not be loaded: {e}") from e

    def paths_to_read(self, model):
        folder = Path(model.source)
        try:  # the weights may be owner-only; what is in sub-folders (rare) is found by the load
            return [folder, *(path for path in folder.iterdir() if path.is_file())]
        except OSError as e:
            raise NotReady(f"The model directory {folder} could not be read: {e.strerror}.") from e

    def spec_options(self, model):
        return {"path": model.source, "precision": model.precision}

    def example_variables(self, model):
        # The CPU threads torch uses, and no download attempts.
        return [("OMP_NUM_THREADS", "2", False), ("HF_HUB_OFFLINE", "1", False)]

    def build(self, spec, environ):
        from ..runtime.engines.transformers import TransformersEngine

        options = spec.engine_options
        precision = options.get("precision", "fp32")
        return TransformersEngine(options["path"], spec.config.batch_size, precision, spec.app_name)


KIND = TransformersKind()
