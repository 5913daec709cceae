"""The managed engine: a real engine (llama.cpp, vLLM, `transformers serve`) started as this server's
child, forwarded to as an upstream on a loopback port with a random token.

- **Start**: a thread of its own spawns launch.py under the engine's interpreter (settings and token on
  standard input, never on the command line) and lives as long as the child: the child asks the kernel
  for SIGKILL when that thread's process goes (PR_SET_PDEATHSIG), so a server killed with SIGKILL takes
  its engine with it. The child leads a process group of its own, so a stop's SIGTERM to the server's
  group lets the server drain its in-flight requests through the engine before it stops the engine; a
  watchdog in the engine's group (launch.py) kills the rest of the group once the engine's main process
  is gone, so nothing it forked (vLLM's engine core) outlives it.
- **Phases**: ``status`` is ``starting_engine`` until the engine's output says it loads weights
  (``loading_weights``), then the health endpoint's 200 ends ``load()``: the deploy shows each phase.
- **Output**: every line the engine prints goes to the application's log with source ``engine``.
- **Death**: an engine that exits while the server serves makes the server exit too, so the replica is
  a failed one, handled by the reconcile and the restart policy.
- **Metrics**: its /metrics are read every few seconds into ``gauges`` (running and waiting requests,
  KV-cache use), which /health hands the platform for the Monitoring pane.
"""

import asyncio
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
import urllib.error
import urllib.request

from .upstream import UpstreamEngine

log = logging.getLogger("llmapp.server")
engine_log = logging.getLogger("llmapp.engine")
SCRAPE_EVERY_S = 2.0
STOP_GRACE_S = 10.0


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def read_gauges(text: str, gauges) -> dict[str, float]:
    """Our gauges from an engine's Prometheus text (a metric with labels: the sum over its series)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(" ")
        name = name.partition("{")[0]
        if "{" in line.split(" ", 1)[0]:
            rest = line.rsplit(" ", 1)[-1]
        for gauge in gauges:
            if gauge.metric == name:
                try:
                    values[gauge.name] = values.get(gauge.name, 0.0) + float(rest.split()[0]) * gauge.scale
                except (ValueError, IndexError):
                    pass
    return values


class ManagedEngine(UpstreamEngine):
    passthrough = True

    def __init__(self, kind, spec, environ: dict):
        self.kind, self.spec, self.options = kind, spec, spec.engine_options
        self.port, self.token = free_loopback_port(), secrets.token_urlsafe(32)
        super().__init__(
            f"http://127.0.0.1:{self.port}/v1",
            kind.upstream_model(spec, self.options),
            self.token,
            spec.config.timeout_s,
            spec.app_name,
        )
        self.name = kind.name
        self.environ = dict(environ)
        self.status = "starting_engine"
        self.process: subprocess.Popen | None = None
        self.started = threading.Event()
        self.stopping = False
        self.gauges: dict[str, float] = {}
        self.started_at = time.monotonic()
        self.scratch = tempfile.mkdtemp(prefix="llmapp-engine-")  # 0700, the server's own

    # starting --------------------------------------------------------------------------------------

    def _settings(self) -> dict:
        settings = self.kind.launch_settings(self.spec, self.options)
        if "argv" in settings:
            settings["argv"] = [a.replace("{port}", str(self.port)) for a in settings["argv"]]
        return {
            **settings,
            "engine": self.kind.name,
            "model": self.options["path"],
            "served_name": self.spec.app_name,
            "port": self.port,
            "token": self.token,
            "parent_pid": os.getpid(),
            "scratch": self.scratch,
        }

    def _supervise(self) -> None:
        """The engine's whole life, in one thread (the one its PR_SET_PDEATHSIG is tied to)."""
        env = {k: v for k, v in self.environ.items() if not k.startswith("LLMAPP_")}
        # A home of its own for the caches engines write (vLLM's model info, compiled kernels): the
        # server's account has none (/nonexistent). Removed when the engine stops.
        env.update(HOME=self.scratch, XDG_CACHE_HOME=os.path.join(self.scratch, "cache"), PYTHONUNBUFFERED="1")
        env.setdefault("HF_HUB_OFFLINE", "1")  # a local model: never the network
        try:
            self.process = subprocess.Popen(
                [self.options["python"], "-I", "-u", self.options["launcher"]],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd="/",
                process_group=0,
                text=True,
                errors="replace",
            )
        except OSError as e:
            self.error = f"the {self.kind.name} engine could not be started: {e}"
            self.started.set()
            return
        self.process.stdin.write(json.dumps(self._settings()))
        self.process.stdin.close()
        self.started.set()
        log.info("engine %s started (pid %d, loopback port %d)", self.kind.name, self.process.pid, self.port)
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
        if not self.stopping:
            self.error = f"the {self.kind.name} engine exited (code {code})"
            log.error("%s: the server stops with it", self.error)
            if self.status == "ready":
                self.status = "failed"
                os.kill(os.getpid(), signal.SIGTERM)  # a replica without its engine is a failed replica

    def _get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as e:
            return e.code, b""
        except (OSError, ValueError):
            return 0, b""

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
            "upstream": f"{self.kind.name} (pid {self.process.pid if self.process else '-'}, loopback)",
            "gauges": dict(self.gauges),
        }

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
        process group: at once once it exited, or after a grace."""
        self.stopping = True
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("engine %s did not stop within %g s: killed", self.kind.name, STOP_GRACE_S)
        self._kill_group()
        process.wait(5)
        shutil.rmtree(self.scratch, ignore_errors=True)
        log.info("engine %s stopped", self.kind.name)
