"""The managed engine: a real engine (llama.cpp, vLLM, `transformers serve`) started as this server's
child, forwarded to as an upstream over a Unix socket, with a random token.

- **Reach**: the engine listens on a Unix socket in a scratch folder of the server's own (0700): no TCP
  port at all, so no other account on the host can connect, nor take its address first and be sent the
  token. The token (on the engine's standard input, never on a command line, which every account can
  read) is a second lock: vLLM checks it on its /v1 routes only. The scratch folder is also the engine's
  home, for the caches it writes (the server's account has none); it goes when the engine stops.
- **Start**: a thread of its own spawns launch.py under the engine's interpreter and lives as long as
  the child: the child asks the kernel for SIGKILL when that thread's process goes (PR_SET_PDEATHSIG),
  so a server killed with SIGKILL takes its engine with it. The child leads a process group of its own,
  so a stop's SIGTERM to the server's group lets the server drain its in-flight requests through the
  engine before it stops the engine; a watchdog in the engine's group (launch.py) kills the rest of the
  group once the engine's main process is gone, so nothing it forked (vLLM's engine core) outlives it.
- **Phases**: ``status`` is ``starting_engine`` until the engine's output says it loads weights
  (``loading_weights``), then the health endpoint's 200 ends ``load()``: the deploy shows each phase.
- **Output**: every line the engine prints goes to the application's log with source ``engine``.
- **Death**: an engine that exits once loaded makes the server exit too, so the replica is a failed one,
  handled by the reconcile and the restart policy.
- **Metrics**: its /metrics are read every few seconds into ``gauges`` (running and waiting requests,
  KV-cache use), which /health hands the platform for the Monitoring pane.
- **Media by URL**: a request whose content parts name media by URL is refused here; the engine would
  fetch it from this host's network. Inline ``data:`` URLs pass.
"""

import asyncio
import http.client
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

from ..errors import APIError
from .upstream import UpstreamEngine

log = logging.getLogger("llmapp.server")
engine_log = logging.getLogger("llmapp.engine")
SCRAPE_EVERY_S = 2.0
STOP_GRACE_S = 3.0  # after the server drained its requests, the engine has nothing in flight
MEDIA_PARTS = {"image_url", "video_url", "audio_url", "input_image", "file"}


def read_gauges(text: str, gauges) -> dict[str, float]:
    """Our gauges from an engine's Prometheus text (a metric with labels: the sum over its series)."""
    wanted = {gauge.metric: gauge for gauge in gauges}
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if (gauge := wanted.get(name)) is None:
            continue
        sample = line.rsplit("}", 1)[-1].split() if "{" in line else line.split()[1:]
        try:
            values[gauge.name] = values.get(gauge.name, 0.0) + float(sample[0]) * gauge.scale
        except (ValueError, IndexError):
            continue
    return values


def remote_media(body: dict) -> str | None:
    """The first media URL of a request's messages that is not inline (``data:``), if any."""
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            if not isinstance(part, dict) or part.get("type") not in MEDIA_PARTS:
                continue
            value = part.get(part["type"])
            url = value.get("url") if isinstance(value, dict) else value
            if isinstance(value, dict) and "file_data" in value:
                continue  # a file given inline
            if not (isinstance(url, str) and url.startswith("data:")):
                return str(url)[:100]
    return None


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket (the engine's health and metrics, from plain threads)."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


class ManagedEngine(UpstreamEngine):
    passthrough = True

    def __init__(self, kind, spec, environ: dict):
        self.kind, self.spec, self.options = kind, spec, spec.engine_options
        self.token = secrets.token_urlsafe(32)
        model = kind.upstream_model(spec, self.options)
        super().__init__("http://localhost/v1", model, self.token, spec.config.timeout_s, spec.app_name)
        self.name = kind.name
        self.environ = dict(environ)
        self.status = "starting_engine"
        self.process: subprocess.Popen | None = None
        self.scratch: str | None = None  # made when the engine starts
        self.started = threading.Event()
        self.loaded = self.stopping = False
        self.gauges: dict[str, float] = {}
        self.started_at = time.monotonic()

    @property
    def socket_path(self) -> str:
        return os.path.join(self.scratch, "engine.sock")

    def _connector(self):
        import aiohttp

        return aiohttp.UnixConnector(path=self.socket_path, limit=1024, keepalive_timeout=30)

    # starting --------------------------------------------------------------------------------------

    def _settings(self) -> dict:
        return {
            **self.kind.launch_settings(self.spec, self.options),
            "engine": self.kind.name,
            "model": self.options["path"],
            "served_name": self.spec.app_name,
            "socket": self.socket_path,
            "token": self.token,
            "parent_pid": os.getpid(),
            "scratch": self.scratch,
        }

    def _spawn(self) -> None:
        self.scratch = tempfile.mkdtemp(prefix="llmapp-engine-")  # 0700, the server's own
        env = {k: v for k, v in self.environ.items() if not k.startswith("LLMAPP_")}
        env.update(HOME=self.scratch, XDG_CACHE_HOME=os.path.join(self.scratch, "cache"), PYTHONUNBUFFERED="1")
        env.setdefault("HF_HUB_OFFLINE", "1")  # a local model: never the network
        self.process = subprocess.Popen(
            [self.options["python"], "-I", "-u", self.options["launcher"]],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.scratch,
            process_group=0,
            text=True,
            errors="replace",
        )
        self.process.stdin.write(json.dumps(self._settings()))
        self.process.stdin.close()

    def _supervise(self) -> None:
        """The engine's whole life, in one thread (the one its PR_SET_PDEATHSIG is tied to)."""
        try:
            self._spawn()
        except (OSError, ValueError) as e:  # its interpreter missing, or it exited before reading
            self.error = f"the {self.kind.name} engine could not be started: {e}"
        finally:
            self.started.set()
        if self.process is None or self.error:
            return
        log.info("engine %s started (pid %d)", self.kind.name, self.process.pid)
        for line in self.process.stdout:
            line = line.rstrip()
            if not line:
                continue
            if self.status == "starting_engine" and any(m in line for m in self.kind.loading_markers):
                self.status = "loading_weights"
                log.info("engine %s is loading the weights", self.kind.name)
            engine_log.info("%s", line.replace(self.token, "[token]"))
        code = self.process.wait()
        self._kill_group()  # what it started (vLLM's engine core) goes with it
        shutil.rmtree(self.scratch, ignore_errors=True)
        if not self.stopping:
            self.error = f"the {self.kind.name} engine exited (code {code})"
            if self.loaded:  # a replica without its engine is a failed replica
                self.status = "failed"
                log.error("%s: the server stops with it", self.error)
                os.kill(os.getpid(), signal.SIGTERM)

    def _get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        connection = UnixHTTPConnection(self.socket_path, timeout)
        try:
            connection.request("GET", path, headers={"Authorization": f"Bearer {self.token}"})
            answer = connection.getresponse()
            return answer.status, answer.read()
        except (OSError, http.client.HTTPException):
            return 0, b""  # not listening yet, or gone
        finally:
            connection.close()

    def load(self) -> None:
        threading.Thread(target=self._supervise, name="engine", daemon=True).start()
        self.started.wait()
        while True:
            if self.error:
                raise RuntimeError(self.error + " (see its lines in the log)")
            status, _ = self._get(self.kind.health_path, timeout=1.0)
            if status == 200:
                break
            if status and self.status == "starting_engine":  # it listens, still loading (503)
                self.status = "loading_weights"
            time.sleep(0.1)
        self.loaded = True
        log.info("engine %s ready after %.1f s", self.kind.name, time.monotonic() - self.started_at)
        if self.kind.metrics_path:
            threading.Thread(target=self._scrape, name="engine-metrics", daemon=True).start()

    def _scrape(self) -> None:
        while not self.stopping and self.process and self.process.poll() is None:
            status, body = self._get(self.kind.metrics_path)
            if status == 200:
                self.gauges = read_gauges(body.decode("utf-8", "replace"), self.kind.gauges)
            time.sleep(SCRAPE_EVERY_S)

    def stats(self) -> dict:
        return {
            **super().stats(),
            "upstream": f"{self.kind.name} (pid {self.process.pid if self.process else '-'}, a Unix socket)",
            "gauges": dict(self.gauges),
        }

    async def prepare(self, request, body):
        if url := remote_media(body):
            raise APIError(
                400,
                f"Media by URL ({url}) is not fetched by this application's engine: send it inline, as a data: URL.",
                "invalid_request_error",
                param="messages",
            )
        return await super().prepare(request, body)

    # stopping --------------------------------------------------------------------------------------

    async def close(self) -> None:
        await super().close()
        await asyncio.to_thread(self.stop_engine)

    def _kill_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # nothing is left of it

    def stop_engine(self) -> None:
        """SIGTERM the engine's main process (it stops its own workers), then SIGKILL what is left of its
        process group: at once once it exited, or after a grace. Its scratch folder goes too."""
        self.stopping = True
        process = self.process
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    log.warning("engine %s did not stop within %g s: killed", self.kind.name, STOP_GRACE_S)
            self._kill_group()
            process.wait(5)
            log.info("engine %s stopped", self.kind.name)
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
