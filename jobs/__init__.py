"""RQ jobs. Each is a thin, importable function that takes ids and calls an llmapp service."""
