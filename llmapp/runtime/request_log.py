"""The record of each request: one log line (with its request id and key label), its metrics, and
the plugin chain's webhooks; written when the response has ended, however it ended."""

import logging
import time
import uuid

from .plugins.webhook import WebhookSender

log = logging.getLogger("llmapp.server")


def record_request(ctx) -> None:
    """One log line per request (with its request id and key label), and its metrics."""
    outcome = ctx.outcome
    if ctx.answer is not None:  # the usage the client was told (a cache hit's too)
        outcome.prompt_tokens = ctx.answer.prompt_tokens or 0
        outcome.completion_tokens = ctx.answer.completion_tokens or 0
    ctx.served.outcomes[outcome.status] += 1
    if ctx.served.recorder is not None:
        ctx.served.recorder.observe(ctx)
    elapsed_ms = (time.perf_counter() - ctx.started) * 1000
    level = logging.ERROR if outcome.status >= 500 and outcome.status != 504 else logging.INFO
    if outcome.status in (429, 499, 504):
        level = logging.WARNING
    parts = [
        f"{ctx.request.url.path} {outcome.status}",
        f"{outcome.prompt_tokens}+{outcome.completion_tokens} tokens",
        f"in {elapsed_ms:.0f} ms",
    ]
    if ctx.parsed is not None and ctx.parsed.stream:
        parts.append("stream")
    if outcome.cache_status == "HIT":
        parts.append("(cache hit)")
    if ctx.key is not None:
        parts.append(f"key={ctx.key.label or ctx.key.id}")
    plugins = ctx.plugins
    if plugins is not None:
        parts.append("plugins " + ", ".join(f"{name} {ms * 1000:.2f} ms" for name, ms in plugins.seconds.items()))
        if plugins.passages:
            parts.append("passages " + " ".join(plugins.passages))
        for event in plugins.events:
            parts.append(f"policy: {event['plugin']} {event['action']} {event['side']} ({', '.join(event['found'])})")
    if outcome.error:
        parts.append(f"— {outcome.error}")
    fields = {
        "status": outcome.status,
        "ms": round(elapsed_ms, 1),
        "tokens_in": outcome.prompt_tokens,
        "tokens_out": outcome.completion_tokens,
        "stream": bool(ctx.parsed and ctx.parsed.stream),
        "cache": outcome.cache_status,
        "key": ctx.key.label if ctx.key else None,
    }
    if plugins is not None:
        fields["plugins_ms"] = {name: round(s * 1000, 3) for name, s in plugins.seconds.items()}
        fields["policy"] = plugins.events
        fields["passages"] = plugins.passages
    log.log(level, " ".join(parts), extra={"request_id": ctx.request_id, "fields": fields})
    if plugins is not None and plugins.chain.webhooks():
        send_webhooks(ctx, elapsed_ms)


def send_webhooks(ctx, elapsed_ms: float) -> None:
    """Each webhook of the chain gets its summary, queued for its sender thread (never awaited here)."""
    served, outcome = ctx.served, ctx.outcome
    if served.webhooks is None:
        served.webhooks = WebhookSender(allow=served.spec.webhook_allow)
    summary = {
        "application": served.spec.app_name,
        "request_id": ctx.request_id,
        "key_label": ctx.key.label if ctx.key else None,
        "status": outcome.status,
        "latency_ms": round(elapsed_ms, 1),
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
    }
    for step, seen in ctx.plugins.webhook_summaries(summary):
        served.webhooks.send(
            step.config["url"],
            step.config.get("secret", ""),
            seen,
            float(step.config.get("timeout_s", 5)),
            int(step.config.get("retries", 3)),
        )


def new_request_id(given: str | None) -> str:
    """The client's own X-Request-Id when it is a sensible one, else a new one."""
    if given and len(given) <= 128 and all(c.isalnum() or c in "-_.:" for c in given):
        return given
    return uuid.uuid4().hex
