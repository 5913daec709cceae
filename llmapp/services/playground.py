"""The playground: a chat with a running application, through its real endpoint.

The platform holds a short-lived key per user and application (an ApiKey of purpose "playground",
expiring after KEY_LIFETIME): its hash is published like any key, its plain value is kept only in
Redis, encrypted, and never reaches the browser. A message starts a *turn* (kept a few minutes);
the page then streams the turn's reply over SSE, token by token, from the endpoint's own stream.
The conversation lives in Redis for CONVERSATION_TTL after its last turn.
"""

import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
import redis
from flask_babel import gettext as _

from .. import keyspace, queues, secrets_box
from ..extensions import db
from ..i18n import _l, format_number
from ..models import ApiKey, Application, User, utcnow
from ..runtime import keys as runtime_keys
from ..runtime.answers import INPUT_MASKED_HEADER
from . import ServiceError, api_keys, lifecycle, replicas

KEY_LIFETIME = timedelta(hours=1)
KEY_RENEW_BEFORE = timedelta(minutes=10)  # a key this close to expiring is replaced, not used
CONVERSATION_TTL_S = 3600
TURN_TTL_S = 300
MAX_MESSAGE_CHARS = 8000
MAX_HISTORY_MESSAGES = 40  # the oldest turns drop out of the context first
MAX_SHOWN_BODY = 16_000  # characters of a request shown as code under its reply


class PlaygroundError(ServiceError):
    """The message can't be sent; the text says why (shown at the field)."""


@dataclass
class TurnEvent:
    """What the page is sent: ``token`` (text to append) or ``done`` (how it went)."""

    kind: str
    text: str = ""
    stats: dict = field(default_factory=dict)


def key_label(user: User) -> str:
    return f"playground · user {user.id}"  # an id, never the e-mail: the label reaches /metrics and the logs


def _key(application: Application, user: User) -> str:
    """The user's playground key for this application: the current one, or a new one."""
    connection = queues.connection()
    stored = connection.get(keyspace.playground(application.id, user.id, "key"))
    if stored:
        try:
            return secrets_box.decrypt(stored.decode())
        except ValueError:
            pass  # the secrets key changed: make a new one
    now = utcnow()
    # The user's older playground keys go: one live key per user and application.
    for old in db.session.scalars(
        db.select(ApiKey).where(
            ApiKey.application_id == application.id,
            ApiKey.purpose == "playground",
            ApiKey.label == key_label(user),
            ApiKey.revoked_at.is_(None),
        )
    ):
        old.revoked_at = now
    plain = runtime_keys.generate()
    db.session.add(
        ApiKey(
            application_id=application.id,
            label=key_label(user),
            key_hash=runtime_keys.digest(plain),
            prefix=plain[:10],
            purpose="playground",
            expires_at=now + KEY_LIFETIME,
        )
    )
    api_keys.publish_and_commit(application, _("The playground could not get a key"))
    usable_s = int((KEY_LIFETIME - KEY_RENEW_BEFORE).total_seconds())
    connection.set(keyspace.playground(application.id, user.id, "key"), secrets_box.encrypt(plain), ex=usable_s)
    return plain


def history(application: Application, user: User) -> list[dict]:
    """The conversation so far (none while the application is not running, or Redis is unreachable)."""
    if application.status != lifecycle.RUNNING:
        return []
    try:
        raw = queues.connection().get(keyspace.playground(application.id, user.id, "history"))
    except redis.RedisError:
        return []
    return json.loads(raw) if raw else []


@dataclass(frozen=True)
class Settings:
    """How a turn is asked for: the sampling people reach for, and a system prompt."""

    max_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # at most MAX_STOP sequences
    system: str = ""


MAX_STOP = 4  # as OpenAI's API allows
MAX_STOP_CHARS = 100


def stop_sequences(text: str | None) -> tuple[str, ...]:
    """Stop sequences typed one per line (blank lines ignored; "\\n" stands for a line break).

    :raise PlaygroundError: more than MAX_STOP, or one too long.
    """
    found = tuple(line.replace("\\n", "\n") for line in (text or "").splitlines() if line.strip())
    if len(found) > MAX_STOP:
        raise PlaygroundError(_("At most %(count)s stop sequences, one per line.", count=MAX_STOP))
    if any(len(sequence) > MAX_STOP_CHARS for sequence in found):
        raise PlaygroundError(_("A stop sequence has at most %(count)s characters.", count=MAX_STOP_CHARS))
    return found


def start_turn(application: Application, user: User, message: str, settings: Settings = Settings()) -> str:
    """Keep the user's message as a turn for the page to stream; return the turn's id.

    :raise PlaygroundError: the message is empty or too long, or the application is not running.
    """
    message = (message or "").strip()
    if not message:
        raise PlaygroundError(_("Type a message."))
    if len(message) > MAX_MESSAGE_CHARS or len(settings.system) > MAX_MESSAGE_CHARS:
        raise PlaygroundError(_("At most %(count)s characters.", count=format_number(MAX_MESSAGE_CHARS)))
    if application.status != lifecycle.RUNNING:
        raise PlaygroundError(
            _(
                "The application is %(status)s: deploy it to talk to it.",
                status=lifecycle.STATUS_LABELS.get(application.status, application.status),
            )
        )
    turn_id = uuid.uuid4().hex
    turn = {"message": message, **dataclasses.asdict(settings)}
    try:
        queues.connection().set(
            keyspace.playground(application.id, user.id, f"turn:{turn_id}"), json.dumps(turn), ex=TURN_TTL_S
        )
    except redis.RedisError as e:
        raise PlaygroundError(_("Redis is unreachable; try again shortly.")) from e
    return turn_id


@dataclass(frozen=True)
class Turn:
    """A turn ready to stream: everything it needs, read from the database beforehand."""

    application_id: str
    user_id: int
    url: str
    key: str
    request_id: str
    timeout_s: float
    body: dict


def _replica_url(application: Application) -> str:
    """A serving replica's address (the playground shows what one server answers, with its timings).

    :raise ServiceError: none serves now.
    """
    serving = application.serving_replicas
    if not serving:
        raise ServiceError(_("%(name)s has no server ready now; try again once it runs.", name=application.name))
    return replicas.endpoint_url(serving[0])


def take_turn(application: Application, user: User, turn_id: str) -> Turn | None:
    """The turn to stream (None when it has streamed already, or expired). A turn streams once.

    :raise ServiceError: no key could be made for it (Redis is unreachable).
    """
    raw = queues.connection().getdel(keyspace.playground(application.id, user.id, f"turn:{turn_id}"))
    if raw is None:
        return None
    turn = json.loads(raw)
    return Turn(
        application_id=str(application.id),
        user_id=user.id,
        url=_replica_url(application) + "/chat/completions",
        key=_key(application, user),
        request_id=f"playground-{turn_id[:12]}",
        timeout_s=float(application.config.get("timeout_s", 60)) + 10,
        body=request_body(application.name, history(application, user), turn),
    )


def request_body(model: str, earlier: list[dict], turn: dict) -> dict:
    """The chat completion a turn asks for (what "this request as code" shows): the system prompt, the
    conversation so far, the message; the settings left at the API's defaults are not sent."""
    system = [{"role": "system", "content": turn["system"]}] if turn.get("system") else []
    body = {
        "model": model,
        "messages": [*system, *earlier, {"role": "user", "content": turn["message"]}],
        "max_tokens": turn["max_tokens"],
        "temperature": turn["temperature"],
    }
    if turn.get("top_p", 1.0) != 1.0:
        body["top_p"] = turn["top_p"]
    if turn.get("stop"):
        body["stop"] = list(turn["stop"])
    return {**body, "stream": True, "stream_options": {"include_usage": True}}


# Its error is a lazy message (the page renders it); turn it into text with str() before sending it as JSON.
ENDED = TurnEvent("done", stats={"error": _l("This reply has ended (or expired); send the message again.")})


def stream_turn(turn: Turn) -> Iterator[TurnEvent]:
    """The reply from the application's endpoint as it streams, then how it went. No database access:
    a stream may last the application's whole timeout."""
    started = time.perf_counter()
    first_token_s, reply, usage, finish, error, input_masked = None, [], {}, None, None, ""
    try:
        with httpx.stream(
            "POST",
            turn.url,
            headers={"Authorization": f"Bearer {turn.key}", "X-Request-Id": turn.request_id},
            json=turn.body,
            timeout=httpx.Timeout(turn.timeout_s, connect=5),
        ) as response:
            input_masked = response.headers.get(INPUT_MASKED_HEADER, "")
            if response.status_code != 200:
                response.read()
                error = _error_message(response)
            else:
                for chunk in _sse_chunks(response):
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content") or ""
                        if text:
                            first_token_s = first_token_s or time.perf_counter() - started
                            reply.append(text)
                            yield TurnEvent("token", text)
                        finish = choice.get("finish_reason") or finish
    except (httpx.HTTPError, ServiceError, ValueError) as e:  # ValueError: a chunk that is not JSON
        error = _("The endpoint could not be reached: %(reason)s", reason=e)
    latency_s = time.perf_counter() - started
    if reply and not error:
        _remember(turn, "".join(reply))
    completion = usage.get("completion_tokens")
    yield TurnEvent(
        "done",
        stats={
            "error": error,
            "request_id": turn.request_id,
            "latency_s": latency_s,
            "first_token_s": first_token_s,
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": completion,
            "tokens_per_s": completion / latency_s if completion and latency_s > 0 else None,
            "finish_reason": finish,
            "input_masked": input_masked,
            # The request as code, while it is short enough to read (a long conversation is summed up).
            "body": turn.body if len(json.dumps(turn.body)) <= MAX_SHOWN_BODY else None,
            "messages": len(turn.body["messages"]),
        },
    )


def clear(application: Application, user: User) -> None:
    queues.connection().delete(keyspace.playground(application.id, user.id, "history"))


def _remember(turn: Turn, reply: str) -> None:
    said = [m for m in turn.body["messages"] if m["role"] != "system"]  # the next turn sends its own
    kept = [*said, {"role": "assistant", "content": reply}][-MAX_HISTORY_MESSAGES:]
    try:
        queues.connection().set(
            keyspace.playground(turn.application_id, turn.user_id, "history"), json.dumps(kept), ex=CONVERSATION_TTL_S
        )
    except redis.RedisError:
        pass  # the reply was shown; the next turn starts without it


def _sse_chunks(response: httpx.Response) -> Iterator[dict]:
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        chunk = json.loads(data)
        if "error" in chunk:
            raise ServiceError(chunk["error"].get("message", "the stream ended with an error"))
        yield chunk


def _error_message(response: httpx.Response) -> str:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    return f"{response.status_code}: {message}"
