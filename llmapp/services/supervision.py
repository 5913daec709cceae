"""What the reconcile decides about a server, as pure rules (no database, Redis or process): whether
one that does not answer its health checks is dead or busy, whether one that died is restarted, and
what of its keys' last use to believe."""

from dataclasses import dataclass
from datetime import UTC, datetime

from ..models import MAX_ID

SILENT_CHECKS = 3  # unanswered health checks, with no CPU used meanwhile, before a server counts as dead
BUSY_LIMIT_S = 120  # a server that answers nothing while it keeps using CPU is hung after this long
# A worker marks a job started when it takes it, a moment (a fork, a few imports: seconds on a loaded
# machine) before the job takes its application's lock; past this, a started job without it has died.
JOB_START_GRACE_S = 60
WAITING = frozenset({"queued", "scheduled", "deferred"})


def job_in_hand(status: str | None, started_s_ago: float | None, took_its_lock: bool) -> bool:
    """Whether a deploy or stop job is on its way, so that the reconcile leaves its application to it:
    waiting to run (RQ's statuses), or started and not yet holding its lock (between RQ marking it
    started and the job's first step). A job that held its lock and lost it, or that started too long
    ago to still be on its way, has died: the reconcile repairs what it left."""
    if status in WAITING:
        return True
    return status == "started" and not took_its_lock and started_s_ago is not None and started_s_ago < JOB_START_GRACE_S


@dataclass(frozen=True)
class Silence:
    """What the reconcile remembers of a server that does not answer its health checks."""

    misses: int = 0  # checks unanswered while the process used no CPU
    cpu_s: float | None = None  # its CPU time at the last check
    busy_since: float | None = None  # since when it answers nothing while using CPU (wall-clock seconds)

    @classmethod
    def load(cls, fields: dict) -> "Silence":
        def number(name):
            return float(fields[name]) if fields.get(name) not in (None, b"", "") else None

        return cls(int(number(b"misses") or 0), number(b"cpu_s"), number(b"busy_since"))

    def dump(self) -> dict:
        return {k: "" if v is None else str(v) for k, v in self.__dict__.items()}


def key_uses(written: dict) -> dict[int, datetime]:
    """A server's record of its keys' last use (key id → unix time, as it wrote them to Redis), with
    what is not that left out: a server writes what it likes, and one bad entry must not stop the
    reconcile that reads them."""
    uses = {}
    for key_id, when in written.items():
        try:
            key_id, when = int(key_id), float(when)
            if 1 <= key_id <= MAX_ID and 0 <= when < 32503680000:  # before the year 3000
                uses[key_id] = datetime.fromtimestamp(when, UTC).replace(tzinfo=None)
        except (ValueError, OverflowError):
            continue
    return uses


def judge_silence(previous: Silence, cpu_s: float, now: float) -> tuple[Silence, str | None]:
    """A server that did not answer its health check: is it dead (the reason) or busy (None)?

    A process that used CPU since the last check is working (a burst of long prompts, a slow
    machine): it is given BUSY_LIMIT_S. One that used none (stopped, deadlocked) is dead after
    SILENT_CHECKS checks.
    """
    if previous.cpu_s is not None and cpu_s > previous.cpu_s + 0.01:
        busy_since = previous.busy_since if previous.busy_since is not None else now
        if now - busy_since >= BUSY_LIMIT_S:
            return Silence(), f"the server answered no health check for {BUSY_LIMIT_S} s while busy (hung)"
        return Silence(0, cpu_s, busy_since), None
    misses = previous.misses + 1
    if misses >= SILENT_CHECKS:
        return Silence(), "the server stopped answering its health checks"
    return Silence(misses, cpu_s, None), None


@dataclass(frozen=True)
class RestartDecision:
    """What to do with a server that died or went silent: restart after ``delay_s``, or fail saying why."""

    restart: bool
    delay_s: float = 0
    error: str = ""


def decide_restart(reason: str, policy: str, max_restarts: int, restarts_used: int) -> RestartDecision:
    """The restart policy as a rule (pure): on-failure restarts after 1, 2, 4… s up to ``max_restarts``
    times; then, or with never, the application fails with the reason and the count."""
    if policy == "on-failure" and restarts_used < max_restarts:
        return RestartDecision(True, delay_s=2**restarts_used)
    said = f"{reason[0].upper()}{reason[1:]}"
    if policy == "on-failure":
        return RestartDecision(False, error=f"{said} after {restarts_used} restart{'s' if restarts_used != 1 else ''}.")
    return RestartDecision(False, error=f"{said} (restart policy: {policy}).")
