"""Serving-configuration recommendations from a model's size and shape: a pure function, no I/O.

The formula (also in README.md, "How recommendations are computed"):

1. Weights:   W = P × bytes_per_parameter(precision)          (fp32 4, bf16/fp16 2, int8 1, int4 0.5)
   Model memory M = 1.2 × W   (20 % for activations, the CUDA/CPU runtime and fragmentation).
2. KV cache per sequence = 2 (K and V) × layers × KV heads × head size × kv_bytes × context_length,
   from the model's own config (``num_key_value_heads``: grouped-query attention keeps fewer K/V heads
   than query heads; Llama-3.1-8B at 128k tokens: 32 × 8 × 128 × 2 × 2 B × 131,072 ≈ 17 GB), kv_bytes 4
   for fp32, else 2 (quantised weights still keep an fp16 cache). A model whose config does not say is
   estimated from P alone: P ≈ 12·L·d² with L ≈ d/128 layers, every head a K/V head (the safe side).
3. Usable memory U = 0.9 × the memory available to serve (a configured accelerator memory, the GPU's,
   else the host's RAM). Free for the cache F = U − M. If F ≤ 0 the model does not fit.
4. Each number is the smallest of its bounds, and the recommendation says which one decided it:
   max concurrency: memory ⌊F / KV⌋ (every in-flight request may fill its context); on a CPU host,
                    compute: 4 × the batch its cores take (requests past that only wait longer);
                    the field's limit 1024.
   batch size:      the largest power of two ≤ max concurrency and ≤ 64 on an accelerator (past ~64 a
                    forward pass is compute-bound: larger batches add latency, not throughput); on a
                    CPU host ≤ 4 rows per core (a core does about as many multiply-adds per weight it
                    reads as four rows need: past that a pass takes longer, it does not serve more).
   timeout (s)     = clamp(⌈30 + 10 × P_billions × context_length / 4096⌉, 30, 3600)
                     (~100 s for a 7B model at 4k context: it may have to generate it all).
   cache size      = clamp(64 × max concurrency, 64, 100 000) entries: cached responses live
                     in the server's RAM (a few kB each), and more traffic repeats more often.

A model served by an upstream (the ``openai`` engine) holds no weights and no KV cache here, so this
host's memory plays no part: only the timeout (the same formula: the upstream generates as much) and
the cache follow its size. Max concurrency is how many requests this server forwards at once
(UPSTREAM_CONCURRENCY = 64, a connection each; the upstream queues or batches them), and batch size
is 1 (the upstream batches; the field has no effect there).
"""

import math
from dataclasses import dataclass

from flask_babel import gettext as _
from flask_babel import ngettext

from ..i18n import _l

BYTES_PER_PARAMETER = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}
OVERHEAD = 1.2
USABLE_FRACTION = 0.9
LAYER_WIDTH_RATIO = 128
LIMITS = {
    "max_concurrency": (1, 1024),
    "batch_size": (1, 256),
    "timeout_s": (1, 3600),
    "cache_size": (0, 100_000),
    "log_lines": (100, 100_000),
    "log_days": (1, 365),
}
GB = 1024**3
UPSTREAM_CONCURRENCY = 64
ACCELERATOR_BATCH = 64
CPU_ROWS_PER_CORE = 4
CPU_QUEUE_PER_BATCH = 4


@dataclass(frozen=True)
class Recommendation:
    model_memory_bytes: int
    kv_cache_per_sequence_bytes: int
    available_memory_bytes: int
    fits: bool
    max_concurrency: int
    batch_size: int
    timeout_s: int
    cache_size: int
    upstream: str | None = None  # where the model is served, for a model behind the openai engine
    # What decided max concurrency and batch size: "memory", "cores", "accelerator" (the batch past
    # which a GPU pass is compute-bound) or "limit" (the field's own).
    bounds: tuple[tuple[str, str], ...] = ()
    cpu_cores: int | None = None  # the CPU host's cores it was reckoned for (None: an accelerator)

    def as_config(self) -> dict:
        return {
            "max_concurrency": self.max_concurrency,
            "batch_size": self.batch_size,
            "timeout_s": self.timeout_s,
            "cache_size": self.cache_size,
        }

    @property
    def reasoning(self) -> str:
        """The recommendation's why, in one line (what decided each number, as the page's language says it)."""
        if self.upstream:
            return _(
                "Served by %(upstream)s: its memory and batching are the upstream's, not this host's. "
                "The timeout follows the model's size and context; %(count)s requests are "
                "forwarded at once (the upstream queues the rest).",
                upstream=self.upstream,
                count=self.max_concurrency,
            )
        memory = {"weights": _gb(self.model_memory_bytes), "available": _gb(self.available_memory_bytes)}
        if not self.fits:
            return _(
                "The model needs ~%(weights)s for weights of %(available)s available: it does not fit, so serve "
                "one request at a time (or add memory).",
                **memory,
            )
        free = USABLE_FRACTION * self.available_memory_bytes - self.model_memory_bytes
        if free < self.kv_cache_per_sequence_bytes:
            need, left = _gb_pair(self.kv_cache_per_sequence_bytes, free)
            return _(
                "The model needs ~%(weights)s for weights of %(available)s available; one full-context request "
                "needs ~%(need)s of KV cache, more than the %(left)s left: serve one request at a time.",
                need=need,
                left=left,
                **memory,
            )
        bounds = dict(self.bounds)
        concurrency_by = bounds.get("max_concurrency", "memory")
        if concurrency_by == "cores":
            at_once = ngettext(
                "%(count)s at once (%(batches)s batches' worth: what this host's %(num)s CPU core can compute, "
                "though memory would hold more)",
                "%(count)s at once (%(batches)s batches' worth: what this host's %(num)s CPU cores can compute, "
                "though memory would hold more)",
                self.cpu_cores,
                count=self.max_concurrency,
                batches=CPU_QUEUE_PER_BATCH,
            )
        elif concurrency_by == "limit":
            at_once = _("%(count)s at once (the field's limit)", count=self.max_concurrency)
        else:
            at_once = _("so %(count)s fit at once", count=self.max_concurrency)
        batch_by = bounds.get("batch_size")
        if batch_by == "cores":
            batched = _(
                "batched by %(size)s (%(rows)s rows per core: a larger pass takes longer)",
                size=self.batch_size,
                rows=CPU_ROWS_PER_CORE,
            )
        elif batch_by == "accelerator":
            batched = _("batched by %(size)s (past that a GPU pass is compute-bound)", size=self.batch_size)
        else:
            batched = _("batched by %(size)s", size=self.batch_size)
        # The two bounds are clauses of one sentence, each a message of its own (what decided the number).
        return _(
            "The model needs ~%(weights)s for weights of %(available)s available; each full-context request "
            "needs ~%(kv)s of KV cache, %(at_once)s, %(batched)s.",
            kv=_gb(self.kv_cache_per_sequence_bytes),
            at_once=at_once,
            batched=batched,
            **memory,
        )


def _gb_pair(a: float, b: float) -> tuple[str, str]:
    """Two sizes written with enough digits to tell them apart (never "17.2 GB, more than the 17.2 GB")."""
    for digits in (1, 2, 3):
        first, second = (
            f"{n / GB:.{digits}f} GB" if n >= GB / 10 else f"{n / 1024**2:.{digits - 1}f} MB" for n in (a, b)
        )
        if first != second:
            return first, second
    return first, second


def _gb(n: int) -> str:
    return f"{n / GB:.1f} GB" if n >= GB / 10 else f"{n / 1024**2:.0f} MB"


def _clamp(value: float, low: int, high: int) -> int:
    return int(max(low, min(high, value)))


def kv_cache_bytes(parameters: float, precision: str, context_length: int, shape: tuple | None = None) -> int:
    """The KV cache of one sequence that fills ``context_length`` tokens: from ``shape`` (layers, KV heads,
    head size: the model's config) where known, else estimated from the parameter count."""
    kv_bytes = 4 if precision == "fp32" else 2
    if shape:
        layers, kv_heads, head_size = shape
        return int(2 * layers * kv_heads * head_size * kv_bytes * context_length)
    width = (parameters * LAYER_WIDTH_RATIO / 12) ** (1 / 3)
    layers = max(1.0, width / LAYER_WIDTH_RATIO)
    return int(2 * layers * width * kv_bytes * context_length)


def recommend(
    parameters_billions: float,
    precision: str,
    context_length: int,
    memory_bytes: int,
    *,
    shape: tuple | None = None,
    cpu_cores: int | None = None,
) -> Recommendation:
    """Recommend a serving configuration for a model of this size (and ``shape``, where its config says)
    on ``memory_bytes`` of memory; ``cpu_cores``: a CPU host's cores (None: it serves on an accelerator)."""
    if precision not in BYTES_PER_PARAMETER:
        raise ValueError(_("unknown precision %(precision)s", precision=repr(precision)))
    if parameters_billions <= 0 or context_length <= 0 or memory_bytes <= 0:
        raise ValueError(_("parameters, context length and memory must be positive"))
    parameters = parameters_billions * 1e9
    model_memory = int(OVERHEAD * parameters * BYTES_PER_PARAMETER[precision])
    per_sequence = kv_cache_bytes(parameters, precision, context_length, shape)
    return recommend_for(
        model_memory, per_sequence, parameters_billions, context_length, memory_bytes, cpu_cores=cpu_cores
    )


def recommend_for(
    model_memory: int,
    per_sequence: int,
    parameters_billions: float,
    context_length: int,
    memory_bytes: int,
    *,
    cpu_cores: int | None = None,
    batch_limit: int | None = None,
) -> Recommendation:
    """Steps 3 and 4 of the formula, for an engine that knows its model's memory and KV cache itself
    (llama.cpp: the GGUF file's size and the cache its header describes). ``batch_limit``: the engine's
    own (vLLM's max_num_seqs, 256), in place of the accelerator's 64."""
    if model_memory <= 0 or per_sequence <= 0 or context_length <= 0 or memory_bytes <= 0:
        raise ValueError(_("model memory, KV cache, context length and memory must be positive"))
    free = USABLE_FRACTION * memory_bytes - model_memory
    fits = free > 0
    low, high = LIMITS["max_concurrency"]
    batch_bound = (
        ("cores", 2 ** int(math.log2(CPU_ROWS_PER_CORE * cpu_cores)))
        if cpu_cores
        else ("accelerator", batch_limit or ACCELERATOR_BATCH)
    )
    concurrency_bounds = [("memory", free // per_sequence if fits else 1), ("limit", high)]
    if cpu_cores:
        concurrency_bounds.append(("cores", CPU_QUEUE_PER_BATCH * batch_bound[1]))
    concurrency_by, concurrency = min(concurrency_bounds, key=lambda bound: bound[1])
    concurrency = _clamp(concurrency, low, high)
    batch_by, batch_cap = min((concurrency_by, concurrency), batch_bound, key=lambda bound: bound[1])
    batch = 2 ** int(math.log2(batch_cap))
    timeout = _clamp(math.ceil(30 + 10 * parameters_billions * context_length / 4096), 30, 3600)
    cache = _clamp(64 * concurrency, 64, LIMITS["cache_size"][1])
    return Recommendation(
        model_memory_bytes=model_memory,
        kv_cache_per_sequence_bytes=per_sequence,
        available_memory_bytes=int(memory_bytes),
        fits=fits,
        max_concurrency=concurrency,
        batch_size=batch,
        timeout_s=timeout,
        cache_size=cache,
        bounds=(("max_concurrency", concurrency_by), ("batch_size", batch_by)),
        cpu_cores=cpu_cores,
    )


def recommend_upstream(parameters_billions: float, context_length: int, upstream: str) -> Recommendation:
    """Recommend a configuration for a model that an upstream OpenAI-compatible server runs."""
    if parameters_billions <= 0 or context_length <= 0:
        raise ValueError(_("parameters and context length must be positive"))
    timeout = _clamp(math.ceil(30 + 10 * parameters_billions * context_length / 4096), 30, 3600)
    return Recommendation(
        model_memory_bytes=0,
        kv_cache_per_sequence_bytes=0,
        available_memory_bytes=0,
        fits=True,
        max_concurrency=UPSTREAM_CONCURRENCY,
        batch_size=1,
        timeout_s=timeout,
        cache_size=_clamp(64 * UPSTREAM_CONCURRENCY, 64, LIMITS["cache_size"][1]),
        upstream=upstream,
    )


FIELD_LABELS = {
    "max_concurrency": _l("Max concurrency"),
    "batch_size": _l("Batch size"),
    "timeout_s": _l("Timeout"),
    "cache_size": _l("Cache size"),
}


def warnings_for(config: dict, recommendation: Recommendation) -> list[str]:
    """The values of ``config`` above the recommendation, each as a sentence (warnings, not errors)."""
    recommended = recommendation.as_config()
    # Behind an upstream the batch size has no effect: no warning about it.
    keys = ("max_concurrency", "timeout_s", "cache_size") if recommendation.upstream else tuple(FIELD_LABELS)
    return [
        _(
            "%(field)s %(value)s is above the %(recommended)s recommended for this model.",
            field=FIELD_LABELS[key],
            value=config[key],
            recommended=recommended[key],
        )
        for key in keys
        if key in config and config[key] > recommended[key]
    ]
