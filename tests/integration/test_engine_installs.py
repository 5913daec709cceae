"""Managed engines as the platform keeps them: the Engines page and `flask engines` (admins and the
operator only), an install's marker, the registry's GGUF models, the engine fields of an application,
and a deploy's refusal before anything starts when the engine is not installed on its host."""

import json
import re
from pathlib import Path

import pytest

from llmapp.extensions import db
from llmapp.models import Application, RegistryModel
from llmapp.runtime.tiny_gguf import build_tiny_gguf
from llmapp.services import OPERATOR, Forbidden, Invalid, engine_installs, releases, server_processes, server_spec

HX = {"HX-Request": "true"}


@pytest.fixture
def config_overrides(tmp_path):
    return {"ENGINES_DIR": str(tmp_path / "engines")}


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_model_dir):
    return str(build_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", tiny_model_dir))


def gguf_model(factory, source):
    return factory.model(
        name="tiny-gguf", family="gpt2", parameters_billions=0.00065, precision="fp32", context_length=8192,
        engine="llama.cpp", source=source,
    )  # fmt: skip


def test_the_engines_page_is_for_admins_and_says_what_to_run(client, auth, admin, member, factory, tiny_gguf):
    factory.application(admin, gguf_model(factory, tiny_gguf), name="hello-gguf")
    auth.login(admin)
    page = client.get("/models/engines")
    assert page.status_code == 200
    for name in ("transformers", "openai", "llama.cpp", "vllm", "transformers-serve"):
        assert f'<span class="tag">{name}</span>' in page.text
    assert "flask engines install llama.cpp" in page.text and "hello-gguf" in page.text
    assert 'href="/models/engines"' in client.get("/applications/").text  # in the admin's navigation
    auth.logout()
    auth.login(member)
    assert client.get("/models/engines").status_code == 403
    assert 'href="/models/engines"' not in client.get("/applications/").text


def test_flask_engines_lists_and_refuses_what_it_does_not_install(runner, app, member):
    listed = json.loads(runner.invoke(args=["engines", "list", "--json"]).output)
    by_name = {e["name"]: e for e in listed}
    assert by_name["llama.cpp"]["installed"] is False and by_name["llama.cpp"]["managed"] is True
    assert by_name["transformers"]["installed"] is True and by_name["transformers"]["managed"] is False
    unknown = runner.invoke(args=["engines", "install", "tensorrt"])
    assert (
        unknown.exit_code == 1 and "No engine “tensorrt” to install; the platform installs llama.cpp" in unknown.output
    )
    builtin = runner.invoke(args=["engines", "install", "transformers"])
    assert builtin.exit_code == 1 and "No engine “transformers” to install" in builtin.output
    with app.app_context(), pytest.raises(Forbidden):
        engine_installs.overview(member)
    with app.app_context(), pytest.raises(Forbidden):
        engine_installs.install("llama.cpp", member)


def test_an_install_counts_only_when_its_marker_names_the_pinned_requirements(app, tmp_path):
    with app.app_context():
        venv = engine_installs.venv_dir("llama.cpp")
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "python").symlink_to("/usr/bin/env")
        marker = {"name": "llama.cpp", "version": "0.1", "requirements": ["xllamacpp==0.1.0"]}
        (venv / engine_installs.MARKER).write_text(json.dumps(marker))
        assert engine_installs.installed("llama.cpp") is None  # an older install: not this platform's
        marker["requirements"] = ["xllamacpp==2026.10.11549"]
        (venv / engine_installs.MARKER).write_text(json.dumps(marker))
        assert engine_installs.installed("llama.cpp")["version"] == "0.1"
        (venv / engine_installs.MARKER).write_text("{half written")
        assert engine_installs.installed("llama.cpp") is None


def test_a_deploy_onto_an_engine_not_installed_is_refused_before_anything_starts(app, admin, factory, tiny_gguf):
    application = factory.application(admin, gguf_model(factory, tiny_gguf), name="hello-gguf")
    with app.app_context():
        row = db.session.get(type(application), application.id)
        setup = server_spec.ServingSetup.of(releases.record(row, None, ""))
        with pytest.raises(server_processes.DeployFailed, match=r"run `flask engines install llama.cpp` there"):
            server_processes.preflight(setup)


def test_the_registry_detects_a_gguf_file_and_refuses_what_is_not_one(client, auth, admin, app, tiny_gguf, tmp_path):
    auth.login(admin)
    form = {
        "name": "tiny-gguf", "family": "", "parameters_billions": "", "precision": "fp32", "context_length": "",
        "engine": "transformers", "source": tiny_gguf, "base_url": "", "upstream_model": "",
    }  # fmt: skip
    filled = client.post("/models/detect", data=form, headers=HX)
    assert filled.status_code == 200 and "data-detected" in filled.text
    assert re.search(r'<option[^>]*selected[^>]*value="llama.cpp"|value="llama.cpp"[^>]*selected', filled.text)
    assert 'value="8192"' in filled.text and "GGUF header (F32)" in filled.text
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes(b"not a model")
    refused = client.post("/models/new", data={**form, "engine": "llama.cpp", "source": str(not_gguf)}, headers=HX)
    assert refused.status_code == 422 and "does not start with GGUF&#39;s magic bytes" in refused.text
    saved = client.post(
        "/models/new",
        data={
            **form,
            "engine": "llama.cpp",
            "family": "gpt2",
            "parameters_billions": "0.00065",
            "context_length": "8192",
        },
    )
    assert saved.status_code == 303
    with app.app_context():
        assert db.session.scalar(db.select(RegistryModel.engine).filter_by(name="tiny-gguf")) == "llama.cpp"


def test_the_engine_fields_are_checked_and_shown_with_what_they_mean_for_the_engine(
    client, auth, admin, factory, app, tiny_gguf
):
    model = gguf_model(factory, tiny_gguf)
    auth.login(admin)
    data = {"name": "hello-gguf", "model_id": str(model.id), "gpu_memory_share": "5", "tensor_parallel": "9"}
    refused = client.post("/applications/new", data=data, headers=HX)
    assert refused.status_code == 422
    assert "Must be between 10 and 95." in refused.text and "Must be between 1 and 8." in refused.text
    created = client.post("/applications/new", data={**data, "gpu_memory_share": "80", "tensor_parallel": "1",
                                                     "context_size": "2048", "threads": "2"})  # fmt: skip
    assert created.status_code == 303
    with app.app_context():
        application = db.session.scalar(db.select(Application))
        assert application.config["context_size"] == 2048 and application.config["threads"] == 2
    page = client.get(f"/applications/{application.id}").text
    assert "2,048 tokens" in page and "each slot&#39;s context" in page and "llama.cpp&#39;s CPU threads" in page


def test_a_new_install_becomes_current_in_one_step_and_running_versions_keep_their_files(app, tmp_path):
    import subprocess

    with app.app_context():
        folder = engine_installs.engines_dir()
        old, running, new = (folder / f".llama.cpp-{n}" for n in ("1", "2", "3"))
        for version in (old, running, new):
            (version / "bin").mkdir(parents=True)
        (running / "bin" / "python").symlink_to("/bin/sleep")  # an engine still running from version 2
        engine = subprocess.Popen([str(running / "bin" / "python"), "60"])
        try:
            engine_installs._make_current("llama.cpp", old)
            assert engine_installs.venv_dir("llama.cpp").resolve() == old.resolve()
            engine_installs._make_current("llama.cpp", new)
            assert engine_installs.venv_dir("llama.cpp").resolve() == new.resolve()
            assert engine_installs.python_of("llama.cpp") == new.resolve() / "bin" / "python"
            assert not old.exists() and running.exists()  # unused: gone; in use: kept
        finally:
            engine.kill()
            engine.wait()


def test_a_failed_install_leaves_nothing_and_keeps_the_current_one(app, monkeypatch):
    def fails(command, echo):
        if "venv" in command:  # the virtualenv is made; pip fails in it
            (Path(command[-1]) / "bin").mkdir(parents=True)
        if "install" in command:
            raise Invalid("Installing failed (pip install…):\nERROR: No matching distribution found")

    with app.app_context():
        current = engine_installs.engines_dir() / ".llama.cpp-current"
        (current / "bin").mkdir(parents=True)
        engine_installs._make_current("llama.cpp", current)
        monkeypatch.setattr(engine_installs, "_run", fails)
        with pytest.raises(Invalid, match="No matching distribution"):
            engine_installs.install("llama.cpp", OPERATOR)
        versions = sorted(p.name for p in engine_installs.engines_dir().glob(".llama.cpp-*"))
        assert versions == [".llama.cpp-current"]
        assert engine_installs.venv_dir("llama.cpp").resolve() == current.resolve()
