"""Managed engines for real: llama.cpp (xllamacpp) serving the tiny GPT-2 as a GGUF file, installed by
`flask engines install`, started behind the app server, stopped and killed with it.

The engines folder is the test's own (made readable to the servers' accounts), so the test sees the
deploy fail before the install and the install itself (seconds: one 33 MB wheel, from pip's cache after
the first run).
"""

import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from conftest import (
    WORKER_ENV,
    deploy,
    engine_group,
    engine_processes,
    gone,
    health_of,
    log_text,
    new_key,
    row,
    wait_for,
    wait_status,
)
from llmapp.runtime.tiny_gguf import build_tiny_gguf

HX = {"HX-Request": "true"}


@pytest.fixture(scope="module")
def engines_folder():
    folder = Path(tempfile.mkdtemp(prefix="llmapp-tests-engines-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir):
    folder = Path(tempfile.mkdtemp(prefix="llmapp-tests-gguf-"))
    folder.chmod(0o755)
    yield str(build_tiny_gguf(folder / "tiny-gpt2.gguf", tiny_model_dir))
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def config_overrides(engines_folder):
    return {"ENGINES_DIR": str(engines_folder)}


def assert_reachable_only_by_its_server(engine, server) -> Path:
    """The engine has no TCP port: it listens on a Unix socket in a folder only the server's account may
    enter, and answers nothing there without its token. Returns the socket."""
    assert not [c for c in engine.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    scratch = Path(engine.environ()["HOME"])
    assert scratch.stat().st_uid == server.uids().real and scratch.stat().st_mode & 0o077 == 0
    socket_path = scratch / "engine.sock"
    assert socket_path.is_socket()
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)), timeout=10) as direct:
        assert direct.get("http://localhost/v1/models").status_code == 401
        assert direct.post("http://localhost/v1/chat/completions", json={"messages": []}).status_code == 401
    return socket_path


def engine_of(server_pid: int):
    return wait_for(lambda: next(iter(engine_processes([server_pid])), None), message="the engine process")


def test_llama_cpp_engine_installs_deploys_serves_and_goes_with_its_server(
    app, client, auth, admin, factory, runner, workers, engines_folder, tiny_gguf
):
    workers.env["LLMAPP_ENGINES_DIR"] = str(engines_folder)
    workers.start()
    model = factory.model(
        name="tiny-gguf", family="gpt2", parameters_billions=0.00065, precision="fp32", context_length=8192,
        engine="llama.cpp", source=tiny_gguf,
    )  # fmt: skip
    application = factory.application(
        admin, model, name="hello-gguf", config={"batch_size": 2, "timeout_s": 30, "context_size": 256}
    )
    auth.login(admin)

    # Not installed: the deploy fails at once, before any process, naming the command.
    failed = deploy(client, app, application)
    assert failed.status == "failed"
    assert "flask engines install llama.cpp" in failed.last_error
    assert not failed.replicas

    listed = runner.invoke(args=["engines", "list", "--json"])
    engines = {e["name"]: e for e in json.loads(listed.output)}
    assert engines["llama.cpp"]["installed"] is False and engines["llama.cpp"]["applications"] == ["hello-gguf"]
    installed = runner.invoke(args=["engines", "install", "llama.cpp"])
    assert installed.exit_code == 0, installed.output
    assert "Successfully installed xllamacpp" in installed.output or "is installed" in installed.output
    listed = runner.invoke(args=["engines", "list", "--json"])
    engine = next(e for e in json.loads(listed.output) if e["name"] == "llama.cpp")
    assert engine["installed"] is True and engine["version"] == "2026.10.11549"

    deployed = deploy(client, app, application)
    assert deployed.status == "running", deployed.last_error
    phases = [p["name"] for p in deployed.deploy_phases]
    assert phases[:3] == ["queued", "starting process", "starting engine"] and phases[-1] == "ready"
    assert all(p["seconds"] is not None for p in deployed.deploy_phases)
    server = psutil.Process(deployed.replicas[0].pid)
    engine = engine_of(server.pid)
    assert engine.uids().real == server.uids().real  # the server's own account
    if os.geteuid() == 0 and os.environ.get("LLMAPP_REQUIRE_SERVER_USER"):
        assert engine.uids().real != 0  # as root: an unprivileged account of its own

    assert_reachable_only_by_its_server(engine, server)

    key = new_key(app, application.id)
    client_ = openai.OpenAI(base_url=deployed.endpoint, api_key=key, max_retries=0)
    answer = client_.chat.completions.create(
        model="hello-gguf", messages=[{"role": "user", "content": "hello"}], max_tokens=6, temperature=0
    )
    assert answer.model == "hello-gguf" and answer.usage.completion_tokens >= 1 and answer.usage.prompt_tokens >= 1
    streamed = client_.chat.completions.create(
        model="hello-gguf",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(streamed)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer.choices[0].message.content
    # Greedy: the same text as the plain answer, through the same pipeline (the cache is off for streams).
    # The serving fields reach the engine: context size 256 is each slot's context in llama.cpp.
    with pytest.raises(openai.BadRequestError) as too_long:
        client_.completions.create(model="hello-gguf", prompt="the quick brown fox " * 80, max_tokens=4)
    assert "context" in str(too_long.value).lower()
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=deployed.endpoint, api_key="sk-wrong", max_retries=0).models.list()

    # Counted in the server's /metrics; the engine's own gauges reach /health; its lines reach the log.
    metrics = httpx.get(
        deployed.endpoint.replace("/v1", "/metrics"), headers={"Authorization": health_of_token()}, timeout=10
    ).text
    assert 'llmapp_requests_total{outcome="2xx"} 2.0' in metrics, metrics
    gauges = wait_for(lambda: health_of(deployed)["engine"].get("gauges"), message="the engine's gauges")
    assert {"running", "waiting"} <= set(gauges)
    pane = wait_for(
        lambda: (
            "Engine running" in (text := client.get(f"/applications/{application.id}/monitoring", headers=HX).text)
            and text
        ),
        30,
        message="the engine's gauges on the Monitoring pane",
    )
    assert "waiting, the engine's own count" in pane
    logged = log_text(app, application.id)
    assert "engine" in logged and "llama.cpp listening on" in logged
    assert "n_slots = 2" in logged and "n_ctx_slot = 256" in logged  # batch size → slots, context size

    # The engine dies: the replica is a failed one, and the restart policy starts a new one with its engine.
    engine.kill()
    wait_for(lambda: gone(server), 60, message="the server exits")
    replaced = wait_for(
        lambda: (
            (r := row(app, application.id)).status == "running"
            and r.replicas
            and r.replicas[0].pid != server.pid
            and r.replicas[0].status == "ready"
            and r
        ),
        120,
        message="a replacement replica",
    )
    new_engine = engine_of(replaced.replicas[0].pid)
    assert client_.completions.create(model="hello-gguf", prompt="hello", max_tokens=3).usage.completion_tokens >= 1

    # kill -9 of the server takes its engine with it (PR_SET_PDEATHSIG), and the engine's scratch folder
    # (its home, for caches) goes too; a stop takes the next one.
    new_server = psutil.Process(replaced.replicas[0].pid)
    scratch = Path(new_engine.environ()["HOME"])
    assert scratch.is_dir() and scratch.name.startswith("llmapp-engine-") and scratch.stat().st_mode & 0o077 == 0
    group = engine_group(new_engine)
    assert len(group) == 2  # llama.cpp runs in one process; its watchdog beside it
    new_server.send_signal(signal.SIGKILL)
    wait_for(lambda: all(gone(p) for p in group), 30, message="its engine and watchdog to go")
    wait_for(lambda: not scratch.exists(), 30, message="its scratch folder to go")
    last = wait_for(
        lambda: (
            (r := row(app, application.id)).status == "running"
            and r.replicas
            and r.replicas[0].pid not in (server.pid, new_server.pid)
            and r.replicas[0].status == "ready"
            and r
        ),
        120,
        message="a second replacement",
    )
    last_engine = engine_of(last.replicas[0].pid)
    last_scratch, last_group = Path(last_engine.environ()["HOME"]), engine_group(last_engine)
    response = client.post(f"/applications/{application.id}/stop", headers={"HX-Request": "true"})
    assert response.status_code == 200
    wait_status(app, application.id, {"stopped"})
    wait_for(lambda: all(gone(p) for p in last_group), 30, message="the engine to go with the stop")
    wait_for(lambda: not last_scratch.exists(), 30, message="its scratch folder to go")


def health_of_token() -> str:
    from llmapp.services.metrics import derived_metrics_token

    return f"Bearer {derived_metrics_token(WORKER_ENV['SECRET_KEY'])}"


def tiny_on(factory, engine: str, model_dir: str):
    """The tiny GPT-2's Hugging Face directory, registered for a managed engine."""
    return factory.model(
        name=f"tiny-gpt2-{engine}", family="gpt2", parameters_billions=0.0004, precision="fp32", context_length=8192,
        engine=engine, source=model_dir,
    )  # fmt: skip


def served_by_managed_engine(app, client, auth, admin, factory, workers, folder, model, name, config, wait_s=90):
    """Deploy an application of ``model`` on workers that use the engines in ``folder``; its openai client."""
    workers.env["LLMAPP_ENGINES_DIR"] = str(folder)
    workers.env["LLMAPP_DEPLOY_TIMEOUT_S"] = str(wait_s)
    workers.start()
    application = factory.application(admin, model, name=name, config={"timeout_s": 60, **config})
    auth.login(admin)
    response = client.post(f"/applications/{application.id}/deploy", headers={"HX-Request": "true"})
    assert response.status_code == 200
    deployed = wait_status(app, application.id, {"running", "failed"}, timeout=wait_s + 30)
    assert deployed.status == "running", f"{deployed.last_error}; the log ends:\n" + "\n".join(
        log_text(app, application.id).splitlines()[-60:]
    )
    key = new_key(app, application.id)
    return deployed, openai.OpenAI(base_url=deployed.endpoint, api_key=key, max_retries=0)


def check_plain_streamed_counted(deployed, api, name):
    """What every managed engine must do behind the app server: plain and streamed answers with usage
    through the official client, counted in the server's metrics."""
    answer = api.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "hello"}], max_tokens=5, temperature=0
    )
    assert answer.model == name and answer.usage.completion_tokens >= 1
    chunks = list(
        api.chat.completions.create(
            model=name,
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=5,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer.choices[0].message.content
    completion = api.completions.create(model=name, prompt="hello", max_tokens=3, temperature=0)
    assert completion.usage.completion_tokens >= 1
    metrics = httpx.get(
        deployed.endpoint.replace("/v1", "/metrics"), headers={"Authorization": health_of_token()}, timeout=10
    ).text
    assert 'llmapp_requests_total{outcome="2xx"} 3.0' in metrics, metrics
    assert 'llmapp_tokens_total{api_key="test",gen_ai_token_type="output"}' in metrics


def stop_and_check_the_engine_goes(app, client, deployed):
    [engine] = wait_for(lambda: engine_processes([deployed.replicas[0].pid]), message="the engine process")
    response = client.post(f"/applications/{deployed.id}/stop", headers={"HX-Request": "true"})
    assert response.status_code == 200
    wait_status(app, deployed.id, {"stopped"})
    wait_for(lambda: gone(engine), 30, message="the engine to go with the stop")


def test_transformers_serve_engine_serves_the_tiny_model_behind_the_app_server(
    app, client, auth, admin, factory, workers, shared_engines, tiny_model_dir
):
    folder = shared_engines("transformers-serve")
    model = tiny_on(factory, "transformers-serve", tiny_model_dir)
    deployed, api = served_by_managed_engine(
        app, client, auth, admin, factory, workers, folder, model, "hello-ts", {"batch_size": 4, "threads": 1}
    )
    phases = [p["name"] for p in deployed.deploy_phases]
    assert phases[:3] == ["queued", "starting process", "starting engine"] and phases[-1] == "ready"
    [engine] = engine_processes([deployed.replicas[0].pid])
    assert_reachable_only_by_its_server(engine, psutil.Process(deployed.replicas[0].pid))
    check_plain_streamed_counted(deployed, api, "hello-ts")
    # Media by URL would be fetched by the engine from this host's network: refused before it.
    with pytest.raises(openai.BadRequestError, match="not fetched by this application's engine"):
        api.chat.completions.create(
            model="hello-ts",
            messages=[{"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest/meta-data/"}},
            ]}],
            max_tokens=2,
        )  # fmt: skip
    assert "Uvicorn running on unix socket" in log_text(app, deployed.id)  # its own lines, as source engine
    stop_and_check_the_engine_goes(app, client, deployed)
