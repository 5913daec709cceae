import pytest

from llmapp import create_app
from llmapp.extensions import db
from llmapp.models import Application, RegistryModel, User
from llmapp.services import bootstrap


def users(app):
    with app.app_context():
        return {u.email: u.is_admin for u in db.session.scalars(db.select(User))}


def test_users_create_with_password_from_stdin(runner, app):
    result = runner.invoke(
        args=["users", "create", "Ops@Example.com", "--admin", "--password-stdin"], input="long-password\n"
    )
    assert result.exit_code == 0, result.output
    assert "Created admin ops@example.com." in result.output
    result = runner.invoke(args=["users", "create", "dev@example.com", "--password-stdin"], input="another-password\n")
    assert users(app) == {"ops@example.com": True, "dev@example.com": False}
    with app.app_context():
        assert db.session.scalar(db.select(User).filter_by(email="dev@example.com")).check_password("another-password")


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["users", "create", "not-an-email", "--password-stdin"], "long-password\n", "is not an email address"),
        (["users", "create", "a@example.com", "--password-stdin"], "short\n", "at least 8 characters"),
    ],
)
def test_users_create_refuses_bad_input(runner, app, args, stdin, message):
    result = runner.invoke(args=args, input=stdin)
    assert result.exit_code != 0 and message in result.output
    assert users(app) == {}


def test_users_create_refuses_a_duplicate(runner, app, member):
    result = runner.invoke(args=["users", "create", "member@example.com", "--password-stdin"], input="long-password\n")
    assert result.exit_code != 0 and "already exists" in result.output


def test_first_admin_from_the_environment(app, monkeypatch):
    monkeypatch.setenv("LLMAPP_ADMIN_EMAIL", "root@example.com")
    monkeypatch.setenv("LLMAPP_ADMIN_PASSWORD", "container-password")
    with app.app_context():
        lines = bootstrap.prepare()
        assert lines == ["Created the first admin root@example.com (password from LLMAPP_ADMIN_PASSWORD)."]
        assert db.session.scalar(db.select(User)).check_password("container-password")
        assert bootstrap.prepare() == []  # users exist: nothing more
    assert users(app) == {"root@example.com": True}


def test_first_admin_with_a_generated_password_printed_once(runner, app, monkeypatch):
    monkeypatch.delenv("LLMAPP_ADMIN_EMAIL", raising=False)
    monkeypatch.delenv("LLMAPP_ADMIN_PASSWORD", raising=False)
    result = runner.invoke(args=["setup"])
    assert result.exit_code == 0, result.output
    password = result.output.split("password: ")[1].split()[0]
    with app.app_context():
        assert db.session.scalar(db.select(User).filter_by(email="admin@llmapp.local")).check_password(password)
    assert "password" not in runner.invoke(args=["setup"]).output


def test_demo_data_seeds_once(app, database_url, redis_url, tiny_model_dir, tmp_path):
    import shutil

    from conftest import make_config

    shutil.copytree(tiny_model_dir, tmp_path / "tiny-gpt2")  # built once per run; seeding finds it
    app = create_app(make_config(database_url, redis_url, DEMO=True, MODELS_DIR=str(tmp_path)))
    runner = app.test_cli_runner()
    for _ in range(2):
        assert runner.invoke(args=["setup"]).exit_code == 0
        assert runner.invoke(args=["demo", "seed"]).exit_code == 0
    with app.app_context():
        counts = [
            db.session.scalar(db.select(db.func.count()).select_from(t)) for t in (User, RegistryModel, Application)
        ]
    assert counts == [2, 6, 6]  # the first admin and the demo admin; nothing twice
    with app.app_context():
        from llmapp.models import Plugin

        demo_plugins = db.session.scalars(db.select(Plugin)).all()
        assert sorted(p.type for p in demo_plugins) == sorted(
            ["system_prompt", "content_filter", "pii_redaction", "knowledge_retrieval", "webhook_audit"]
        )  # one of each type, published, nothing twice
        assert all(p.published for p in demo_plugins)
        # hello-tiny runs a system prompt and then PII redaction; the retrieval plugin has its document.
        from llmapp.services import plugins

        hello = db.session.scalar(db.select(Application).filter_by(name="hello-tiny"))
        assert [link.plugin.type for link in plugins.chain(hello)] == ["system_prompt", "pii_redaction"]
        help_centre = next(p for p in demo_plugins if p.type == "knowledge_retrieval")
        assert [d.name for d in help_centre.documents] == ["help-centre.md"]
    with app.app_context():
        tiny = db.session.scalar(db.select(RegistryModel).filter_by(name="tiny-gpt2"))
        hello = db.session.scalar(db.select(Application).filter_by(name="hello-tiny"))
        assert hello.model_id == tiny.id and tiny.source == str(tmp_path / "tiny-gpt2")
        # Every demo variable is one something reads: the openai engine its upstream key (under the name
        # the registry gives it), torch its CPU threads, huggingface_hub its offline switch; llama.cpp reads
        # none (its threads are a serving field).
        expected_by_engine = {"llama.cpp": set(), "transformers": {"OMP_NUM_THREADS", "HF_HUB_OFFLINE"}}
        for application in db.session.scalars(db.select(Application)):
            model = db.session.get(RegistryModel, application.model_id)
            names = {var.name for var in application.env_vars}
            assert names == ({model.api_key_env} if model.engine == "openai" else expected_by_engine[model.engine])
        analyst = db.session.scalar(db.select(Application).filter_by(name="analyst"))
        assert [v.is_secret for v in analyst.env_vars] == [True]
        assert db.session.get(RegistryModel, analyst.model_id).api_key_env == "VLLM_API_KEY"
        # Its recommendation is for a model served elsewhere, so the demo's config raises no warnings.
        from llmapp.services import applications

        assert applications.config_warnings(analyst) == []


def test_production_refuses_to_start_without_a_secret_key(monkeypatch):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    with pytest.raises(RuntimeError, match="SECRET_KEY is not set"):
        create_app({"LLMAPP_ENV": "production"})
    app = create_app({"LLMAPP_ENV": "production", "SECRET_KEY": "x" * 32})
    assert app.config["SESSION_COOKIE_SECURE"] is True


def test_database_urls_are_normalised_for_psycopg3():
    from llmapp.config import _normalise_database_url

    assert _normalise_database_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert _normalise_database_url("postgresql://u@h/d") == "postgresql+psycopg://u@h/d"
    assert _normalise_database_url("sqlite:///x.db") == "sqlite:///x.db"


def test_models_match_the_migrations(app):
    """Every schema change is a migration: autogenerate finds nothing left to write."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with app.app_context(), db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), db.metadata)
    assert diff == []


def test_a_worker_follows_the_production_rules(tmp_path):
    """Without SECRET_KEY outside development, a worker refuses to start (as the web app does), rather
    than make a key of its own and fail every deploy that needs a stored secret."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "LLMAPP_ENV", "LLMAPP_SECRETS_KEY")}
    env.update(LLMAPP_INSTANCE_PATH=str(tmp_path), REDIS_URL="redis://127.0.0.1:1/0")
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "jobs.worker"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0 and "The worker can't start: SECRET_KEY is not set" in result.stderr
    assert not (tmp_path / "secret_key").exists()


def test_every_variable_the_readme_names_is_read(monkeypatch, tmp_path):
    """A setting documented but never read is a setting an operator can't set (LLMAPP_WEBHOOK_ALLOW was)."""
    import re
    from pathlib import Path

    from llmapp import config

    root = Path(__file__).resolve().parents[2]
    # ($LLMAPP_TOKEN in a shell example is the reader's own variable)
    documented = set(re.findall(r"(?<!\$)\bLLMAPP_[A-Z0-9_]+[A-Z0-9]\b", (root / "README.md").read_text()))
    code = "\n".join(p.read_text() for p in [root / "app.py", *root.glob("llmapp/**/*.py"), *root.glob("jobs/*.py")])
    unread = sorted(
        name for name in documented if name not in config.ENVIRONMENT and f'"{name}"' not in code.replace("'", '"')
    )
    assert not unread, f"documented in the README, read nowhere: {unread}"
    monkeypatch.setenv("LLMAPP_WEBHOOK_ALLOW", "audit.internal,10.1.2.0/24")
    loaded = config.load(str(tmp_path), {"SECRET_KEY": "k"})
    assert loaded["WEBHOOK_ALLOWED_DESTINATIONS"] == "audit.internal,10.1.2.0/24"
