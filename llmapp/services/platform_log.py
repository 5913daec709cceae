"""The platform's lines in an application's log (a Redis Stream, see runtime/logs.py): what its
deploys, stops, restarts and the reconcile did, beside what its server writes."""

import redis
from flask import current_app

from .. import queues
from ..runtime import logs


def log_event(application_id, message: str, level: str = "INFO") -> None:
    """Add a line to the application's log; the platform's work never fails for want of its log."""
    try:
        logs.append(queues.connection(), application_id, message, level, source="platform")
    except redis.RedisError as e:
        current_app.logger.warning("application %s: %s (not in its log: Redis: %s)", application_id, message, e)
