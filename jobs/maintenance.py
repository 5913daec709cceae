"""Periodic upkeep of the platform's data: thin wrappers over llmapp services."""

from llmapp.services import logs


def trim_logs() -> int:
    return logs.trim_all()
