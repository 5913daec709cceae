"""Run one application's server: python -m llmapp.runtime --spec instance/run/<application id>.json
(the deploy job runs it as `python -I -u -c <launcher> --spec … --spec-on-stdin`: services/server_processes.py)

The spec (written by the deploy job, readable by its owner only) holds no credentials: the Redis URL
and the application's environment variables arrive in the process environment. With --spec-on-stdin
the server reads the spec from its standard input (the deploy job opens the file for it: the server's
own account may not read the run folder); the path then only names the server's process.
"""

import argparse
import atexit
import logging
import logging.handlers
import os
import queue
import sys
import threading

import redis
import redis.asyncio
import uvicorn

from .. import engines
from . import logs
from .engines import Engine
from .http_limits import HttpLimits, bounded_protocol
from .plugins.published import CHAIN_KEY_VARIABLE
from .server import build_app
from .spec import REDIS_URL_VARIABLE, ServerSpec

log = logging.getLogger("llmapp.server")
REDIS_TIMEOUTS = {"socket_timeout": 2, "socket_connect_timeout": 2}  # an unreachable Redis never hangs a request


def make_engine(spec: ServerSpec) -> Engine:
    """The engine the spec names, built by its kind in the engine table."""
    return engines.kind(spec.engine).build(spec, os.environ)


def configure_logging(spec: ServerSpec, writer: logs.StreamWriter) -> None:
    secrets = [os.environ.get(name, "") for name in spec.secret_names]
    # Each line also goes to the server's standard error (its log file on the host), written by a thread
    # of its own: a write on the event loop lets go of the GIL, and the batcher thread would then keep the
    # loop waiting for it back (up to the interpreter's switch interval) on every request.
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    echoed: queue.SimpleQueue = queue.SimpleQueue()
    echo = logging.handlers.QueueListener(echoed, to_stderr)
    echo.start()
    atexit.register(echo.stop)  # what is queued is written before the process ends (a load failure's lines)
    # The server's own lines, and a managed engine's output (runtime/engines/managed.py) as source "engine".
    for logger, source in ((log, "server"), (logging.getLogger("llmapp.engine"), "engine")):
        for handler in (logs.RedisStreamHandler(writer, source=source), logging.handlers.QueueHandler(echoed)):
            handler.addFilter(logs.RedactSecrets(secrets))
            logger.addHandler(handler)
        logger.setLevel(spec.config.log_level)  # the application's log level field
        logger.propagate = False


def load(engine: Engine, spec: ServerSpec, chains, redis_url: str) -> None:
    """Load and warm up in the background, so /health answers (503, with the phase) meanwhile; the
    plugin chain too, so that no request is ever served without the plugins it was deployed with."""
    try:
        engine.load()
        engine.status = "warming_up"
        engine.warm_up()
        chains.load(redis.Redis.from_url(redis_url, **REDIS_TIMEOUTS))
        engine.status = "ready"
        log.info("ready on port %d", spec.port)
    except Exception as e:  # noqa: BLE001 - any load failure is reported through /health and the logs
        engine.error = f"{type(e).__name__}: {e}"
        engine.status = "failed"
        log.error("loading failed: %s", engine.error)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--spec-on-stdin", action="store_true")
    args = parser.parse_args(argv)
    spec = ServerSpec.from_json(sys.stdin.read()) if args.spec_on_stdin else ServerSpec.read(args.spec)
    redis_url = os.environ[REDIS_URL_VARIABLE]
    writer = logs.StreamWriter(
        redis.Redis.from_url(redis_url, **REDIS_TIMEOUTS),
        spec.app_id,
        maxlen=spec.config.log_lines,
        max_age_s=spec.config.log_days * 86400,
    )
    configure_logging(spec, writer)
    engine = make_engine(spec)
    chain_key = os.environ.pop(CHAIN_KEY_VARIABLE, "").encode()
    app = build_app(
        spec, engine, redis.asyncio.Redis.from_url(redis_url, **REDIS_TIMEOUTS), writer, chain_key=chain_key
    )
    chains = app.app.state.chains
    threading.Thread(target=load, args=(engine, spec, chains, redis_url), name="loader", daemon=True).start()
    log.info("starting %s (engine %s) on %s:%d", spec.app_name, spec.engine, spec.host, spec.port)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=spec.bind,
            port=spec.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=spec.grace_s,  # SIGTERM: finish in-flight requests, then exit
            http=bounded_protocol(
                HttpLimits(spec.max_header_bytes, spec.header_timeout_s, spec.keep_alive_s, spec.max_connections)
            ),
            timeout_keep_alive=spec.keep_alive_s,
        )
    )
    server.run()
    log.info("stopped")
    writer.flush()


if __name__ == "__main__":
    main()
