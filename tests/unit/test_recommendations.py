import pytest

from llmapp.services.recommendations import GB, kv_cache_bytes, recommend, warnings_for


def test_seven_billion_bf16_on_24_gb_worked_by_hand():
    r = recommend(7, "bf16", 4096, 24 * GB)
    # weights 7e9 × 2 B × 1.2 overhead
    assert r.model_memory_bytes == int(1.2 * 7e9 * 2)
    # d = (7e9·128/12)^(1/3) ≈ 4208, L ≈ 32.9: 2·L·d·2 B·4096 ≈ 2.27e9 B per full-context request
    assert r.kv_cache_per_sequence_bytes == pytest.approx(2.27e9, rel=0.01)
    # (0.9·24 GiB − 16.8e9) / 2.27e9 = 2.8 → 2 requests
    assert (r.max_concurrency, r.batch_size) == (2, 2)
    assert r.timeout_s == 100  # 30 + 10·7·4096/4096
    assert r.cache_size == 128  # 64 per concurrent request
    assert r.fits and "2 fit at once" in r.reasoning


def test_quantisation_frees_memory_for_more_requests():
    bf16 = recommend(7, "bf16", 4096, 24 * GB)
    int4 = recommend(7, "int4", 4096, 24 * GB)
    assert int4.model_memory_bytes == bf16.model_memory_bytes // 4
    assert int4.max_concurrency > bf16.max_concurrency


def test_more_memory_never_recommends_less_concurrency():
    values = [recommend(8, "bf16", 8192, gb * GB).max_concurrency for gb in (24, 48, 80, 160, 640)]
    assert values == sorted(values) and values[-1] > values[0]


def test_longer_context_needs_more_cache_per_request():
    assert kv_cache_bytes(7e9, "bf16", 8192) == 2 * kv_cache_bytes(7e9, "bf16", 4096)
    assert kv_cache_bytes(7e9, "fp32", 4096) == 2 * kv_cache_bytes(7e9, "bf16", 4096)


def test_model_that_does_not_fit():
    r = recommend(70, "bf16", 8192, 24 * GB)
    assert not r.fits
    assert (r.max_concurrency, r.batch_size, r.cache_size) == (1, 1, 64)
    assert "does not fit" in r.reasoning


def test_full_context_larger_than_free_memory_says_so():
    r = recommend(8, "bf16", 131072, 24 * GB)
    assert r.fits and r.max_concurrency == 1
    assert "more than the" in r.reasoning


def test_results_stay_within_the_form_limits():
    r = recommend(0.0001, "fp32", 256, 1024 * GB)
    assert r.max_concurrency == 1024 and r.batch_size == 64 and r.cache_size == 65536 and r.timeout_s == 31
    assert recommend(1000, "fp32", 1_000_000, 10_000 * GB).timeout_s == 3600


@pytest.mark.parametrize(
    "args", [(0, "bf16", 4096, GB), (7, "bf17", 4096, GB), (7, "bf16", 0, GB), (7, "bf16", 4096, 0)]
)
def test_rejects_nonsense(args):
    with pytest.raises(ValueError):
        recommend(*args)


def test_warnings_for_values_above_the_recommendation_only():
    r = recommend(7, "bf16", 4096, 24 * GB)
    config = {"max_concurrency": 64, "batch_size": 2, "timeout_s": 10, "cache_size": 129, "log_level": "INFO"}
    messages = warnings_for(config, r)
    assert messages == [
        "Max concurrency 64 is above the 2 recommended for this model.",
        "Cache size 129 is above the 128 recommended for this model.",
    ]
    assert warnings_for(r.as_config(), r) == []


def test_an_upstream_model_is_judged_by_its_size_not_this_hosts_memory():
    from llmapp.services.recommendations import recommend_upstream

    # A 65B model behind a remote vLLM: it "does not fit" any laptop, and that is irrelevant here.
    r = recommend_upstream(65, 8192, "http://gpu-box:8000/v1")
    assert r.fits and (r.max_concurrency, r.batch_size) == (64, 1)
    assert r.timeout_s == 1330  # 30 + 10·65·8192/4096: the upstream has as much to generate
    assert "does not fit" not in r.reasoning and "http://gpu-box:8000/v1" in r.reasoning
    # The batch size has no effect behind an upstream: no warning for it, nor for values within the advice.
    assert warnings_for({"max_concurrency": 8, "batch_size": 32, "timeout_s": 600, "cache_size": 100}, r) == []
    assert warnings_for({"max_concurrency": 100, "batch_size": 1, "timeout_s": 60, "cache_size": 0}, r) == [
        "Max concurrency 100 is above the 64 recommended for this model."
    ]


def test_the_kv_cache_counts_the_models_kv_heads(tmp_path):
    import json
    from types import SimpleNamespace

    from llmapp.engines import transformers

    # Llama-3.1-8B: 32 layers, 32 query heads but 8 KV heads (grouped-query attention), head size 128.
    config = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096}
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = SimpleNamespace(source=str(tmp_path), parameters_billions=8.0, precision="bf16", context_length=131072)
    r = transformers.KIND.recommend(model, 80 * GB)
    assert r.kv_cache_per_sequence_bytes == 2 * 32 * 8 * 128 * 2 * 131072  # about 17 GB
    assert r.kv_cache_per_sequence_bytes == pytest.approx(17.2e9, rel=0.01)
    # Without a config to read: the estimate from the size alone, every head a KV head, much larger.
    (tmp_path / "config.json").unlink()
    assert transformers.KIND.recommend(model, 80 * GB).kv_cache_per_sequence_bytes > 3 * r.kv_cache_per_sequence_bytes


def test_a_cpu_host_bounds_concurrency_and_batch_by_its_cores_and_says_so():
    on_two_cores = recommend(0.0004, "fp32", 8192, 16 * GB, cpu_cores=2)  # memory would hold 1024
    assert (on_two_cores.batch_size, on_two_cores.max_concurrency) == (8, 32)  # 4 rows a core, 4 batches queued
    assert dict(on_two_cores.bounds) == {"max_concurrency": "cores", "batch_size": "cores"}
    assert "2 CPU cores" in on_two_cores.reasoning and "4 rows per core" in on_two_cores.reasoning
    on_a_gpu = recommend(0.0004, "fp32", 8192, 16 * GB)
    assert (on_a_gpu.batch_size, on_a_gpu.max_concurrency) == (64, 1024)
    assert dict(on_a_gpu.bounds) == {"max_concurrency": "limit", "batch_size": "accelerator"}
    # Memory still decides where it is the smaller bound.
    big = recommend(7, "bf16", 4096, 24 * GB, cpu_cores=64)
    assert (big.max_concurrency, dict(big.bounds)["max_concurrency"]) == (2, "memory")


def test_two_sizes_that_round_alike_are_written_apart():
    from llmapp.services.recommendations import _gb_pair

    assert _gb_pair(17.21 * GB, 17.19 * GB) == ("17.21 GB", "17.19 GB")
    assert _gb_pair(17.3 * GB, 2 * GB) == ("17.3 GB", "2.0 GB")
