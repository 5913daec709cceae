"""Periodic upkeep of the platform's data: thin wrappers over llmapp services."""

from llmapp.services import audit, logs, usage


def trim_logs() -> int:
    return logs.trim_all()


def upkeep() -> dict:
    """Trim the logs, move the app servers' usage records into the database, and apply the audit log's
    retention."""
    return {
        "log_lines_trimmed": logs.trim_all(),
        "usage_records": usage.collect(wait=True),
        "audit_pruned": audit.prune(),
    }
