"""The engine table's entries are whole (llmapp/engines/)."""

import math

from llmapp import engines
from llmapp.engines.kind import EngineKind


def test_every_kind_in_the_table_is_complete():
    """Each kind says what it is and builds something (the table has no half-written entry)."""
    for name, kind in engines.ENGINES.items():
        assert kind.name == name and kind.label and kind.fields
        assert type(kind).build is not EngineKind.build and type(kind).recommend is not EngineKind.recommend
        assert all(field.column in engines.ENGINE_COLUMNS for field in kind.fields)


# --- managed engines -------------------------------------------------------------------------------


def test_an_engines_gauges_are_read_from_its_prometheus_text():
    from llmapp.engines import llamacpp, vllm
    from llmapp.runtime.engines.managed import read_gauges

    llama = (
        "# HELP x\nllamacpp:requests_processing 3\nllamacpp:requests_deferred 1\nllamacpp:kv_cache_usage_ratio 0.25\n"
    )
    assert read_gauges(llama, llamacpp.KIND.gauges) == {"running": 3.0, "waiting": 1.0, "kv_cache_use": 25.0}
    text = (
        'vllm:num_requests_running{engine="0",model_name="x"} 2.0\n'
        'vllm:num_requests_waiting{engine="0",model_name="x"} 5.0\n'
        'vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 5.0\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="x"} 0.5\n'
    )
    assert read_gauges(text, vllm.KIND.gauges) == {"running": 2.0, "waiting": 5.0, "kv_cache_use": 50.0}


def test_serving_fields_become_each_engines_own_settings():
    from llmapp.engines import llamacpp, transformers_serve, vllm
    from llmapp.runtime.spec import ServerSpec, ServingConfig

    config = ServingConfig(batch_size=4, context_size=1024, threads=2, gpu_memory_share=80, tensor_parallel=2)
    spec = ServerSpec(app_id="a", app_name="bot", engine="vllm", config=config, port=18000)
    options = {"path": "/models/m", "context_length": 8192}
    assert llamacpp.KIND.launch_settings(spec, options) == {"parallel": 4, "context": 1024, "threads": 2}
    argv = vllm.KIND.launch_settings(spec, options)["argv"]
    pairs = dict(zip(argv[::2], argv[1::2], strict=False))
    assert pairs["--max-num-seqs"] == "4" and pairs["--max-model-len"] == "1024"
    assert pairs["--gpu-memory-utilization"] == "0.80" and pairs["--tensor-parallel-size"] == "2"
    assert transformers_serve.KIND.launch_settings(spec, options)["kv_blocks"] == 4 * 1024 // 32
    # 0: the model's own context, never more than it has.
    whole = ServerSpec(app_id="a", app_name="bot", engine="llama.cpp", config=ServingConfig(), port=18000)
    assert llamacpp.KIND.launch_settings(whole, options)["context"] == 8192
    longer = ServerSpec(
        app_id="a", app_name="bot", engine="llama.cpp", config=ServingConfig(context_size=100_000), port=18000
    )
    assert llamacpp.KIND.launch_settings(longer, options)["context"] == 8192


def test_llama_cpp_recommends_from_the_files_size_and_its_kv_heads(tmp_path):
    from types import SimpleNamespace

    from test_model_detection import write_gguf

    from llmapp.engines import llamacpp

    path = write_gguf(tmp_path / "m.gguf", layers=32, heads=32, kv_heads=8, width=4096, context=131072)
    model = SimpleNamespace(source=str(path), parameters_billions=8.0, precision="int4", context_length=131072)
    recommendation = llamacpp.KIND.recommend(model, 64 * 1024**3)
    # Llama-3.1-8B's shape: 2 (K, V) × 32 layers × 8 KV heads × 128 × 2 bytes × 128k tokens = 16 GiB, not 64.
    assert recommendation.kv_cache_per_sequence_bytes == 2 * 32 * 8 * 128 * 2 * 131072
    assert recommendation.model_memory_bytes == math.ceil(1.1 * path.stat().st_size)  # the file is the weights


def test_vllm_recommends_from_gpu_memory_and_the_models_kv_heads(tmp_path):
    import json
    from types import SimpleNamespace

    from llmapp.engines import vllm

    config = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096}
    (tmp_path / "config.json").write_text(json.dumps(config))
    llama_8b = SimpleNamespace(source=str(tmp_path), parameters_billions=8.0, precision="bf16", context_length=131072)
    on_an_80gb_gpu = vllm.KIND.recommend(llama_8b, 80 * 1024**3)
    # Grouped-query attention: 8 KV heads, not 32; 16 GiB per 128k-token sequence, not 64.
    assert on_an_80gb_gpu.kv_cache_per_sequence_bytes == 2 * 32 * 8 * 128 * 2 * 131072
    # 90 % of 80 GiB, less 16 GB of bf16 weights, holds three such sequences: vLLM's max_num_seqs 3.
    assert (on_an_80gb_gpu.max_concurrency, on_an_80gb_gpu.batch_size) == (3, 3)
    shorter = SimpleNamespace(**{**vars(llama_8b), "context_length": 1024})  # 128 MiB each: 450 would fit
    assert vllm.KIND.recommend(shorter, 80 * 1024**3).batch_size == 256  # vLLM's own ceiling


def test_media_by_url_is_found_in_any_message_and_inline_media_passes():
    from llmapp.runtime.engines.managed import remote_media

    def asking(*parts):
        return {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": list(parts)}]}

    text = {"type": "text", "text": "what is this?"}
    assert remote_media(asking(text)) is None
    assert remote_media(asking(text, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}})) is None
    assert remote_media(asking({"type": "image_url", "image_url": {"url": "http://10.0.0.1/x.png"}})) == (
        "http://10.0.0.1/x.png"
    )
    assert remote_media(asking({"type": "video_url", "video_url": "file:///etc/passwd"})) == "file:///etc/passwd"
    assert remote_media(asking({"type": "image_url", "image_url": {}})) == "None"  # no URL at all: not inline
    assert remote_media({"prompt": "hello"}) is None and remote_media({"messages": "not a list"}) is None


def test_the_token_middleware_lets_nothing_through_without_the_token():
    import asyncio

    from llmapp.engines.launch import RequireToken

    reached, sent = [], []

    async def app(scope, receive, send):
        reached.append(scope["type"])

    async def send(message):
        sent.append(message)

    guarded = RequireToken(app, "s3cret")
    good = [(b"authorization", b"Bearer s3cret")]
    bad = [(b"authorization", b"Bearer wrong")]

    async def call(scope):
        reached.clear(), sent.clear()
        await guarded(scope, None, send)
        return list(reached), [m.get("status") or m.get("code") for m in sent]

    run = asyncio.run
    assert run(call({"type": "http", "path": "/v1/models", "headers": good})) == (["http"], [])
    assert run(call({"type": "http", "path": "/v1/models", "headers": bad})) == ([], [401, None])
    assert run(call({"type": "http", "path": "/invocations", "headers": []})) == ([], [401, None])
    assert run(call({"type": "http", "path": "/health", "headers": []})) == (["http"], [])
    assert run(call({"type": "websocket", "path": "/v1/realtime", "headers": []})) == ([], [1008])
    assert run(call({"type": "lifespan"})) == (["lifespan"], [])
