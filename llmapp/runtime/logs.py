"""Application logs: a bounded Redis Stream per application, written by app servers and jobs alike."""

import logging
import time

import redis

MAXLEN = 2000  # lines kept per application (approximately: XADD MAXLEN ~)


def stream_key(application_id) -> str:
    return f"llmapp:logs:{application_id}"


def append(
    connection: redis.Redis, application_id, message: str, level: str = "INFO", source: str = "platform"
) -> None:
    connection.xadd(
        stream_key(application_id),
        {"ts": f"{time.time():.3f}", "level": level, "source": source, "message": message},
        maxlen=MAXLEN,
        approximate=True,
    )


def tail(connection: redis.Redis, application_id, count: int = 50) -> list[dict]:
    """The last ``count`` lines, oldest first (none when Redis is unreachable: a page still renders)."""
    try:
        entries = connection.xrevrange(stream_key(application_id), count=count)
    except redis.RedisError:
        return []
    return [
        {"id": entry_id.decode(), **{k.decode(): v.decode() for k, v in fields.items()}}
        for entry_id, fields in reversed(entries)
    ]


class RedactSecrets(logging.Filter):
    """Replace the values of secret environment variables, should any reach a log record."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, "••••")
            record.msg, record.args = message, None
        return True


class RedisStreamHandler(logging.Handler):
    def __init__(self, connection: redis.Redis, application_id, source: str = "server"):
        super().__init__()
        self.connection, self.application_id, self.source = connection, application_id, source

    def emit(self, record: logging.LogRecord) -> None:
        try:
            append(self.connection, self.application_id, self.format(record), record.levelname, self.source)
        except redis.RedisError:
            self.handleError(record)
