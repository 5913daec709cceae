"""What a member's environment variables can't do: start a program, change how Python or the loader
starts, redirect traffic or override the platform's settings; and what an app server can't read."""

import os
import subprocess
import sys

import pytest

from conftest import deploy
from llmapp.extensions import db
from llmapp.models import EnvVar
from llmapp.services import FieldErrors, applications, deployments, environment

# One of each class the rule refuses, with the spellings a library reads too (lower-case proxies).
REFUSED = [
    "PYTHONWARNINGS", "PYTHONSTARTUP", "PYTHONPATH", "LD_PRELOAD", "LD_AUDIT", "GLIBC_TUNABLES", "GCONV_PATH",
    "BROWSER", "PATH", "BASH_ENV", "BASH_FUNC_ls", "GIT_SSH_COMMAND", "PERL5OPT", "NODE_OPTIONS",
    "JAVA_TOOL_OPTIONS", "OPENSSL_CONF", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "HF_HOME", "HF_ENDPOINT",
    "http_proxy", "HTTPS_PROXY", "ALL_PROXY", "OPENAI_BASE_URL", "LLMAPP_REDIS_URL", "REDIS_URL", "SECRET_KEY",
    "HOME", "TMPDIR", "XDG_CONFIG_HOME",
]  # fmt: skip
ALLOWED = ["OMP_NUM_THREADS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VLLM_API_KEY", "GREETING", "LOG_FORMAT"]


def _exploit_env(marker) -> dict:
    """The finding: PYTHONWARNINGS makes start-up import `antigravity`, which opens BROWSER: a shell."""
    return {
        "PATH": os.environ["PATH"],
        "PYTHONWARNINGS": "ignore::antigravity.x",
        "BROWSER": f"/bin/sh -c 'touch {marker}' %s",
    }


def test_every_variable_that_changes_how_a_program_starts_is_refused_at_its_field(app, member, factory):
    model = factory.model()
    rows = [{"name": name, "value": "x"} for name in REFUSED + ALLOWED]
    with app.app_context():
        with pytest.raises(FieldErrors) as refused:
            applications.check(
                {"name": "env", "model_id": model.id, **applications.default_config(), "env": rows}, member.id
            )
    errors = refused.value.errors
    for i, name in enumerate(REFUSED):
        assert errors.get(f"env.{i}.name"), f"{name} was accepted"
        assert errors[f"env.{i}.name"][0].startswith(f"{name} can't be set for an application: ")
    for i, name in enumerate(ALLOWED, start=len(REFUSED)):
        assert f"env.{i}.name" not in errors, (name, errors.get(f"env.{i}.name"))
    assert "Python" in environment.refusal("PYTHONWARNINGS") and "traffic" in environment.refusal("no_proxy")


def test_the_form_says_why_a_variable_is_refused(logged_in, factory):
    from test_applications import form_data

    response = logged_in.post(
        "/applications/new", data=form_data(factory.model(), **{"env-0-name": "LD_PRELOAD", "env-0-value": "/x.so"})
    )
    assert response.status_code == 422
    assert "LD_PRELOAD can&#39;t be set for an application: the dynamic loader" in response.text


def test_a_server_starts_as_python_dash_i_and_ignores_what_changes_how_python_starts(tmp_path):
    marker = tmp_path / "ran"
    # The control: plain python runs the shell, so the check below could fail.
    subprocess.run([sys.executable, "-c", "pass"], env=_exploit_env(marker), timeout=60, check=True)
    assert marker.exists(), "the exploit no longer works on this Python: this test proves nothing"
    marker.unlink()
    done = subprocess.run(
        [sys.executable, "-I", "-c", deployments.SERVER_LAUNCHER, "--help"],
        env=_exploit_env(marker),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "--spec-on-stdin" in done.stdout, done.stderr
    assert not marker.exists()


def test_a_refused_variable_stored_before_the_rule_fails_the_deploy_and_runs_nothing(
    app, client, auth, member, factory, tiny, workers, tmp_path
):
    workers.start()
    application = factory.application(member, tiny, name="old-row")
    marker = tmp_path / "ran"
    with app.app_context():  # as an older version let it be saved
        for name, value in _exploit_env(marker).items():
            if name != "PATH":
                db.session.add(EnvVar(application_id=application.id, name=name, value=value, is_secret=False))
        db.session.commit()
    auth.login(member)
    failed = deploy(client, app, application)
    assert failed.status == "failed"
    assert failed.last_error.startswith(("PYTHONWARNINGS can't be set", "BROWSER can't be set")), failed.last_error
    assert "Remove it from the application's environment variables." in failed.last_error
    assert not marker.exists() and failed.process_pid is None


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="servers switch accounts only when the platform is root")


@needs_root
def test_the_server_account_can_read_no_secret_of_the_platform(tmp_path):
    """instance/ is the platform's alone, and what the deploy judges from mode bits is what the kernel does."""
    from llmapp import config

    user = deployments.ServerUser("nobody", 65534, 65534, "/nonexistent")
    private = tmp_path / "instance"
    private.mkdir(mode=0o755)
    config.load(str(private), {"SECRET_KEY": "k"})  # the platform's start-up makes it private
    secret = private / "secret_key"
    secret.write_text("s3cret")
    database = private / "llmapp.db"
    database.write_text("rows")
    database.chmod(0o644)  # as SQLite creates it: only the folder keeps it private
    os.chmod(tmp_path, 0o755)
    for path in (secret, database):
        assert not user.can_read(path)
        probe = subprocess.run(
            ["cat", str(path)], user=user.uid, group=user.gid, extra_groups=[], capture_output=True, timeout=30
        )
        assert probe.returncode != 0 and b"Permission denied" in probe.stderr
