"""An application's variables: the names a member may not set are refused at their field, with the
reason, in the service and the form (the deploy's own check and the server's account are
tests/e2e/test_server_isolation.py's)."""

import pytest

from llmapp.services import FieldErrors, applications, environment


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


# One of each class the rule refuses, with the spellings a library reads too (lower-case proxies).
REFUSED = [
    "PYTHONWARNINGS", "PYTHONSTARTUP", "PYTHONPATH", "LD_PRELOAD", "LD_AUDIT", "GLIBC_TUNABLES", "GCONV_PATH",
    "BROWSER", "PATH", "BASH_ENV", "BASH_FUNC_ls", "GIT_SSH_COMMAND", "PERL5OPT", "NODE_OPTIONS",
    "JAVA_TOOL_OPTIONS", "OPENSSL_CONF", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "HF_HOME", "HF_ENDPOINT",
    "http_proxy", "HTTPS_PROXY", "ALL_PROXY", "OPENAI_BASE_URL", "LLMAPP_REDIS_URL", "REDIS_URL", "SECRET_KEY",
    "HOME", "TMPDIR", "XDG_CONFIG_HOME", "VLLM_PLUGINS", "LLAMA_ARG_HOST", "GGML_VK_VISIBLE_DEVICES",
]  # fmt: skip


ALLOWED = ["OMP_NUM_THREADS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VLLM_API_KEY", "GREETING", "LOG_FORMAT"]
