"""What a member's environment variables can't do: start a program, change how Python or the loader
starts, redirect traffic or override the platform's settings; and what an app server can't read."""

import os
import re
import subprocess
import sys

import pytest

from conftest import deploy
from llmapp.extensions import db
from llmapp.models import EnvVar
from llmapp.services import environment, server_processes


def _exploit_env(marker) -> dict:
    """The finding: PYTHONWARNINGS makes start-up import `antigravity`, which opens BROWSER: a shell."""
    return {
        "PATH": os.environ["PATH"],
        "PYTHONWARNINGS": "ignore::antigravity.x",
        "BROWSER": f"/bin/sh -c 'touch {marker}' %s",
    }


def test_a_server_starts_as_python_dash_i_and_ignores_what_changes_how_python_starts(tmp_path):
    marker = tmp_path / "ran"
    # The control: plain python runs the shell, so the check below could fail.
    subprocess.run([sys.executable, "-c", "pass"], env=_exploit_env(marker), timeout=60, check=True)
    assert marker.exists(), "the exploit no longer works on this Python: this test proves nothing"
    marker.unlink()
    done = subprocess.run(
        [sys.executable, "-I", "-c", server_processes.SERVER_LAUNCHER, "--help"],
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

    user = server_processes.ServerUser("nobody", 65534, 65534, "/nonexistent")
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


# Read by the modules an app server runs, outside the refused namespaces, and looked at one by one: they
# tell a library where it runs (CI, cloud, Windows, a terminal, a rank) or turn telemetry and colours
# off; none loads code, picks a program or sends traffic. A library upgrade that reads a new name makes
# the test below fail until someone has looked at it and refused it or added it here.
REVIEWED = frozenset(
    "ALEMBIC_CONFIG APPDATA AWS_REGION CI CLAUDE_CONFIG_DIR COLORTERM COLUMNS CONTENT_LENGTH "
    "CONTENT_TYPE ComSpec DATABRICKS_RUNTIME_VERSION DISABLE_CUPTI_LAZY_REINIT DISABLE_TELEMETRY "
    "DISABLE_TQDM DO_NOT_TRACK ECS_CONTAINER_METADATA_URI FORCE_COLOR HOMEDRIVE HOMEPATH HTTPS "
    "HTTP_ACCEPT HTTP_ACCEPT_ENCODING HTTP_COOKIE HTTP_HOST HTTP_IF_MATCH HTTP_IF_MODIFIED_SINCE "
    "HTTP_IF_NONE_MATCH HTTP_IF_RANGE HTTP_RANGE HTTP_TRANSFER_ENCODING JUPYTER_COLUMNS JUPYTER_LINES "
    "LANG LC_MESSAGES LINES LOCAL_RANK MAST_HPC_JOB_NAME NUMPY_MADVISE_HUGEPAGE OAUTH_CLIENT_ID OAUTH_CLIENT_SECRET "
    "OAUTH_SCOPES OPENID_PROVIDER_URL PATHEXT PATH_INFO PIP_DISABLE_PIP_VERSION_CHECK "
    "PROCESSOR_ARCHITECTURE PROCESSOR_ARCHITEW6432 PROCESSOR_IDENTIFIER PROGRAMFILES ProgramFiles "
    "QUERY_STRING RANK REMOTE_ADDR REQUEST_METHOD SAGEMAKER_JOB_NAME SCRIPT_NAME SERVER_NAME SERVER_PORT "
    "SERVER_PROTOCOL SERVER_SOFTWARE SM_FRAMEWORK_MODULE SM_FRAMEWORK_PARAMS SM_HP_MP_PARAMETERS "
    "SM_NUM_CPUS SM_NUM_GPUS SPHINX_BUILD SSL_CLIENT_CERT SYSTEMROOT SystemRoot TEARDOWN_CUPTI TERM "
    "TQDM_POSITION TRAINING_JOB_ARN USERNAME USERPROFILE USE_LIBUV VERTEX_PRODUCT WORLD_SIZE "
    "WRAPT_DISABLE_EXTENSIONS YOURAPPLICATION_SETTINGS _SPLITTER_MERGE_OVERLAPPING_FUSIONS ".split()
)
SCAN = """
import json, os, re, sys
import llmapp.runtime.__main__, llmapp.runtime.plugins.chain, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
pattern = re.compile(sys.argv[1])
read = set()
for module in list(sys.modules.values()):
    path = getattr(module, '__file__', None) or ''
    if path.endswith('.py') and os.path.isfile(path):  # (torch names some modules by a bare file name)
        with open(path, encoding='utf-8', errors='ignore') as source:
            read |= {next(g for g in m.groups() if g) for m in pattern.finditer(source.read())}
print(json.dumps(sorted(read)))
"""
ENV_READ = re.compile(
    r"""(?:environ\.get|getenv|environ\.pop|environ\.setdefault)\(\s*['"]([A-Za-z_]\w*)['"]"""
    r"""|environ\[\s*['"]([A-Za-z_]\w*)['"]\s*\]|['"]([A-Z][A-Z0-9_]{2,})['"]\s+in\s+os\.environ"""
)


def test_every_variable_the_servers_libraries_read_is_refused_allowed_or_reviewed():
    """The refusal list is by namespace; this finds what a library reads outside them (the review found
    TORCH_PYTHON_NATIVE_USER_GRAPH_ORDER_FN, which makes `import torch` import and call any module)."""
    import json

    # In a process of its own, as a server starts: only the modules a server loads are looked at.
    script = server_processes.SERVER_LAUNCHER.replace("from llmapp.runtime.__main__ import main; main()", SCAN)
    command = [sys.executable, "-I", "-c", script, ENV_READ.pattern]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    read = set(json.loads(done.stdout.splitlines()[-1]))
    assert "TORCH_PYTHON_NATIVE_USER_GRAPH_ORDER_FN" in read  # the scan sees what torch reads
    unreviewed = sorted(
        n for n in read if environment.refusal(n) is None and n.upper() not in environment.ALLOWED and n not in REVIEWED
    )
    assert not unreviewed, f"read by a server's libraries, neither refused nor reviewed: {unreviewed}"
    for name in (
        "TORCH_PYTHON_NATIVE_USER_GRAPH_ORDER_FN",
        "_PYTHON_SYSCONFIGDATA_NAME",
        "SETUPTOOLS_USE_DISTUTILS",
        "PROMETHEUS_MULTIPROC_DIR",
        "CUDA_INJECTION64_PATH",
        "OMP_TOOL_LIBRARIES",
        "HUGGINGFACE_HUB_CACHE",
        "HF_XET_CACHE",
        "FORWARDED_ALLOW_IPS",
        "DISPLAY",
        "TRUST_REMOTE_CODE",
        "CC",
        "MLFLOW_TRACKING_URI",
    ):
        assert environment.refusal(name), name


class _RunsOnUnpickling:
    """What a hostile writer to Redis puts in a pickled job: loading it runs a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_worker_runs_only_the_platforms_jobs_and_never_unpickles(app, workers, tmp_path):
    """An app server holds Redis's URL: what it could write there must not become code in a worker."""
    import redis
    from rq import Queue
    from rq.job import Job
    from rq.serializers import DefaultSerializer

    from conftest import wait_for
    from llmapp import queues

    workers.start()
    connection = redis.Redis.from_url(app.config["REDIS_URL"])
    named, pickled = tmp_path / "named", tmp_path / "pickled"
    foreign = Queue("default", connection=connection, serializer=queues.SERIALIZER).enqueue(
        "os.system", f"touch {named}"
    )
    Queue("default", connection=connection, serializer=DefaultSerializer).enqueue(
        "jobs.deploy.reconcile_host", _RunsOnUnpickling(pickled)
    )
    ours = Queue("default", connection=connection, serializer=queues.SERIALIZER).enqueue(
        "jobs.deploy.reconcile_host", "h"
    )

    def status(job):
        return Job.fetch(job.id, connection=connection, serializer=queues.SERIALIZER).get_status()

    wait_for(lambda: status(ours) == "finished", 60, 0.2, "the platform's own job, queued after both")
    assert status(foreign) == "failed" and not named.exists() and not pickled.exists()
    assert (
        "is not one of the platform's jobs"
        in Job.fetch(foreign.id, connection=connection, serializer=queues.SERIALIZER).latest_result().exc_string
    )
