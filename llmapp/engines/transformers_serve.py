"""The `transformers serve` engine kind: a local Hugging Face directory, served by transformers' own
OpenAI-compatible server with continuous batching (paged attention), on this host's CPU or GPU.

Its virtualenv holds transformers with its serving extra (FastAPI, uvicorn) and the local torch build;
launch.py puts the engine's token in front of it (the server has no API key setting of its own).
"""

import math

from ..i18n import _l
from .managed import ManagedDirectoryKind, Package

BLOCK_TOKENS = 32  # transformers' default KV-cache block for continuous batching


class TransformersServeKind(ManagedDirectoryKind):
    name = "transformers-serve"
    label = _l("a local Hugging Face model directory, run by transformers serve")
    notes = {
        "batch_size": _l("sequences in its continuous batch (sets its KV-cache blocks)"),
        "context_size": _l("each sequence's share of the KV cache"),
        "threads": _l("torch's CPU threads"),
        "gpu_memory_share": _l("not used"),
        "tensor_parallel": _l("not used: one process"),
    }
    package = Package(
        requirements=("transformers[serving]==5.24.0", "torch==2.13.0"),
        module="transformers.cli.serve",
        distribution="transformers",
        remove=("torchvision", "torchaudio", "torchcodec"),
    )
    metrics_path = None  # it has no metrics endpoint
    loading_markers = ("Loading model", "Loading weights")

    def upstream_model(self, spec, options):
        return options["path"]  # it names its preloaded model by the path it was given

    def launch_settings(self, spec, options):
        config = spec.config
        context = self.context_of(spec, options.get("context_length"))
        return {
            "threads": config.threads,
            # Room for every slot at full context, no more (its default sizes the cache from free memory:
            # gigabytes on a CPU host).
            "kv_blocks": config.batch_size * math.ceil(context / BLOCK_TOKENS),
        }


KIND = TransformersServeKind()
