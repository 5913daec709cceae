"""Run one application's server: python -m llmapp.runtime --spec instance/run/<application id>.json

The spec (written by the deploy job) holds no secrets: those arrive in the process environment.
"""

import argparse
import json
import logging
import os
import socket
import sys
import threading

import redis
import redis.asyncio
import uvicorn

from . import logs
from .engines import Engine, OpenAIEngine, TransformersEngine
from .server import build_app

log = logging.getLogger("llmapp.server")


def make_engine(spec: dict) -> Engine:
    if spec["engine"] == "openai":
        api_key = os.environ.get(spec.get("api_key_env") or "OPENAI_API_KEY")
        return OpenAIEngine(spec["base_url"], spec["upstream_model"], api_key, spec["config"]["timeout_s"])
    return TransformersEngine(spec["model_path"], spec["config"]["batch_size"], spec.get("precision", "fp32"))


def configure_logging(spec: dict, connection: redis.Redis) -> None:
    secrets = [os.environ.get(name, "") for name in spec.get("secret_names", [])]
    to_redis = logs.RedisStreamHandler(connection, spec["app_id"], source="server")
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    for handler in (to_redis, to_stderr):
        handler.addFilter(logs.RedactSecrets(secrets))
        log.addHandler(handler)
    log.setLevel(spec["config"]["log_level"])  # the application's log level field
    log.propagate = False


def load(engine: Engine, spec: dict, connection: redis.Redis) -> None:
    """Load and warm up in the background, so /health answers (503, with the phase) meanwhile."""
    try:
        engine.load()
        engine.status = "warming_up"
        engine.warm_up()
        engine.status = "ready"
        connection.hset(
            f"llmapp:servers:{spec['app_id']}",
            mapping={
                "host": spec["host"],
                "port": spec["port"],
                "pid": os.getpid(),
                "deploy_id": spec.get("deploy_id", ""),
                "config": json.dumps(spec["config"]),
                "hostname": socket.gethostname(),
            },
        )
        log.info("ready on port %d", spec["port"])
    except Exception as e:  # noqa: BLE001 - any load failure is reported through /health and the logs
        engine.error = f"{type(e).__name__}: {e}"
        engine.status = "failed"
        log.error("loading failed: %s", engine.error)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", required=True)
    args = parser.parse_args(argv)
    with open(args.spec) as f:
        spec = json.load(f)
    connection = redis.Redis.from_url(spec["redis_url"])
    configure_logging(spec, connection)
    engine = make_engine(spec)
    app = build_app(spec, engine, redis.asyncio.Redis.from_url(spec["redis_url"]))
    threading.Thread(target=load, args=(engine, spec, connection), name="loader", daemon=True).start()
    log.info("starting %s (engine %s) on %s:%d", spec["app_name"], spec["engine"], spec["host"], spec["port"])
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=spec["bind"],
            port=spec["port"],
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=spec.get("grace_s", 10),  # SIGTERM: finish in-flight requests, then exit
        )
    )
    server.run()
    connection.delete(f"llmapp:servers:{spec['app_id']}")
    log.info("stopped")


if __name__ == "__main__":
    main()
