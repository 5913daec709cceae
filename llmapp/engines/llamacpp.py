"""The llama.cpp engine kind: a local GGUF file, served by llama.cpp's own HTTP server (continuous
batching over parallel slots) through the xllamacpp bindings, on this host's CPU.

Why xllamacpp and not llama-cpp-python: xllamacpp ships prebuilt CPU wheels on PyPI (33 MB; its
virtualenv is 127 MB and installs in seconds), runs llama.cpp's native server (slots, continuous
batching, /metrics) rather than a Python re-implementation of it, and is what Xinference runs;
llama-cpp-python 0.3.x is a source build on every install (cmake and a C++ compile of llama.cpp, many
minutes on two cores) and serves through its own Python server.
"""

import math

from flask_babel import gettext as _

from ..i18n import _l
from ..services import model_detection, recommendations
from .kind import NotReady, RegistryField
from .managed import Gauge, ManagedKind, Package

KV_BYTES = 2  # llama.cpp keeps its KV cache in f16 unless told otherwise
FILE_OVERHEAD = 1.1  # compute buffers and the runtime beside the mapped weights


class LlamaCppKind(ManagedKind):
    name = "llama.cpp"
    label = _l("a local GGUF file, run by llama.cpp")
    fields = (
        RegistryField(
            "source",
            _l("llama.cpp: the path of a local .gguf file (checked on this host)."),
            required=model_detection.NO_GGUF,
        ),
    )
    notes = {
        "batch_size": _l("llama.cpp's parallel slots (continuous batching)"),
        "context_size": _l("each slot's context"),
        "threads": _l("llama.cpp's CPU threads"),
        "gpu_memory_share": _l("not used: this build runs on the CPU"),
        "tensor_parallel": _l("not used: one process"),
    }
    package = Package(requirements=("xllamacpp==2026.10.11549",), module="xllamacpp", distribution="xllamacpp")
    gauges = (
        Gauge("running", "llamacpp:requests_processing"),
        Gauge("waiting", "llamacpp:requests_deferred"),
        Gauge("kv_cache_use", "llamacpp:kv_cache_usage_ratio", 100.0),
    )
    loading_markers = ("load_model: loading model",)

    def check(self, values, errors):
        if "source" in errors:
            return
        try:
            model_detection.check_gguf(values["source"])
        except model_detection.NotAModel as e:
            errors["source"] = [str(e)]

    def detect(self, path):
        return model_detection.detect_gguf(path)

    def recommend(self, model, memory_bytes, cpu_cores=None):
        """From the file (quantised weights are what is loaded) and the KV cache its header describes."""
        try:
            info = model_detection.read_gguf(model.source)
        except model_detection.NotAModel:
            return recommendations.recommend(
                model.parameters_billions, model.precision, model.context_length, memory_bytes, cpu_cores=cpu_cores
            )
        context = model.context_length or info.context_length or 2048
        shape = (info.layers, info.kv_heads, info.head_size)
        if all(isinstance(n, int) and n > 0 for n in shape):
            per_sequence = 2 * info.layers * info.kv_heads * info.head_size * KV_BYTES * context
        else:  # a header that does not say: the estimate from the size
            per_sequence = recommendations.kv_cache_bytes(max(info.parameters, 1), "fp16", context)
        return recommendations.recommend_for(
            math.ceil(FILE_OVERHEAD * info.file_bytes),
            per_sequence,
            model.parameters_billions or info.parameters / 1e9,
            context,
            memory_bytes,
            cpu_cores=cpu_cores,
        )

    def preflight(self, model):
        try:
            model_detection.check_gguf(model.source)
        except model_detection.NotAModel as e:
            raise NotReady(_("The model could not be loaded: %(reason)s", reason=e)) from e
        super().preflight(model)

    def launch_settings(self, spec, options):
        config = spec.config
        return {
            "parallel": config.batch_size,
            "context": self.context_of(spec, options.get("context_length")),
            "threads": config.threads,
        }


KIND = LlamaCppKind()
