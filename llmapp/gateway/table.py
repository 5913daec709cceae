"""The gateway's routing table: every application's route, as the platform publishes it in Redis.

A route is JSON under ``keyspace.routes()`` (written by llmapp/services/routing.py):
``{"id", "name", "owner_id", "status", "release", "version", "replicas": [{"id", "url", "release", "draining"}],
"weights": {release: share}}`` (weights: while a canary runs, each release's share of new requests, %),
signed. App servers can reach Redis too, so every value the gateway routes by is signed with a key
derived from the platform's secret (``route_key``), which the servers never get: a value a server wrote
is not a route. What the gateway learns itself (requests in flight on a replica, whether it answers its
health check) lives on the ``Replica`` and survives a reload of its route. Pure: no I/O here.
"""

import hashlib
import hmac
import itertools
import json
import random
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

RUNNING = "running"
DELETED = "deleted"  # a route's tombstone: only a signed one removes a route (a missing entry doesn't)
FAILURES_TO_EXCLUDE = 2  # failed health checks in a row before a replica gets no new request


def route_key(material: str | bytes) -> bytes:
    """The key that signs routes and key routes, from the platform's secret (LLMAPP_SECRETS_KEY, else
    SECRET_KEY): the platform and the gateways derive the same one; app servers have neither."""
    material = material.encode() if isinstance(material, str) else material
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"llmapp gateway routes").derive(material)


def sign(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()[:32] + "." + text


def unsign(key: bytes, value: bytes | str) -> str | None:
    """The text of a signed value; None when the signature is not the key's."""
    value = value.decode(errors="replace") if isinstance(value, bytes) else value
    signature, _, text = value.partition(".")
    return text if hmac.compare_digest(sign(key, text).partition(".")[0], signature) else None


def key_route(key: bytes, key_digest: str, application_id: str) -> str:
    """The signed index entry sending a key (by its digest) to its application: "signature.id"."""
    signature = sign(key, f"{key_digest}:{application_id}").partition(".")[0]
    return f"{signature}.{application_id}"


def application_of_key(key: bytes, key_digest: str, value: bytes | str) -> str | None:
    value = value.decode(errors="replace") if isinstance(value, bytes) else value
    application_id = value.partition(".")[2]
    return application_id if hmac.compare_digest(key_route(key, key_digest, application_id), value) else None


@dataclass(eq=False)
class Replica:
    id: str
    url: str  # its base, without /v1
    draining: bool = False
    release: int | None = None  # the release it serves (during a roll-out, not every replica's is the same)
    in_flight: int = 0
    # None until its health is first known: a replica is asked before its first request (it must be
    # ready before it gets any), then checked in the background.
    healthy: bool | None = None
    failures: int = 0  # health checks failed in a row

    def checked(self, answered: bool) -> None:
        """A health check's outcome: one failure is a blip; FAILURES_TO_EXCLUDE in a row exclude it."""
        self.failures = 0 if answered else self.failures + 1
        if answered or self.healthy is None or self.failures >= FAILURES_TO_EXCLUDE:
            self.healthy = answered


@dataclass
class Route:
    id: str
    name: str
    owner_id: int
    status: str
    release: int | None = None
    replicas: list[Replica] = field(default_factory=list)
    weights: dict[int, int] = field(default_factory=dict)  # release → share (%) while a canary runs


def parse_route(raw: bytes | str, key: bytes | None = None) -> Route:
    """A route as published (signed with ``key``, when given). :raise ValueError: not one, or not
    signed with the key (the gateway skips it)."""
    if key is not None:
        raw = unsign(key, raw)
        if raw is None:
            raise ValueError("not signed with the platform's key")
    try:
        data = json.loads(raw)
        release = data.get("release")
        replicas = [
            Replica(str(r["id"]), str(r["url"]), bool(r.get("draining")), _number(r.get("release", release)))
            for r in data.get("replicas", [])
        ]
        return Route(
            str(data["id"]),
            str(data["name"]),
            int(data["owner_id"]),
            str(data["status"]),
            _number(release),
            replicas,
            {int(r): int(share) for r, share in (data.get("weights") or {}).items()},
        )
    except (KeyError, TypeError, AttributeError, RecursionError) as e:
        raise ValueError(f"not a route: {e}") from e


def _number(value) -> int | None:
    return int(value) if value is not None else None


class RoutingTable:
    def __init__(self):
        self.routes: dict[str, Route] = {}
        self._turn = itertools.count()  # breaks ties between replicas equally loaded
        self._random = random.Random()  # draws the release of each request while a canary runs

    def put(self, route: Route, application_id: str) -> None:
        """Replace an application's route (its tombstone removes it), keeping what is known of each
        replica that is still there (same id and address)."""
        old = self.routes.pop(application_id, None)
        if route.status == DELETED:
            return
        if old is not None:
            known = {(r.id, r.url): r for r in old.replicas}
            for i, replica in enumerate(route.replicas):
                kept = known.get((replica.id, replica.url))
                if kept is not None:
                    kept.draining, kept.release = replica.draining, replica.release
                    route.replicas[i] = kept
        self.routes[application_id] = route

    def put_all(self, routes: dict[str, Route]) -> None:
        """Apply every route read. One that is not there stays as last known: entries can vanish
        without the platform (a server may delete them; Redis may lose them): only tombstones delete."""
        for application_id, route in routes.items():
            self.put(route, application_id)

    def candidates(self, route: Route, tried=()) -> list[Replica]:
        """The replicas a new request may go to, least requests in flight first: not draining, not
        tried already for this request, and not known unhealthy, unless all are (then the replicas
        answer for themselves: a health check's verdict is older than the request). While a canary
        runs, a request first draws its release by the weights (a retry goes to any that answers)."""
        live = [r for r in route.replicas if not r.draining and r not in tried]
        eligible = [r for r in live if r.healthy is not False] or live
        if route.weights and not tried:
            release = self.draw(route.weights)
            eligible = [r for r in eligible if r.release == release] or eligible
        if len(eligible) > 1:
            turn = next(self._turn) % len(eligible)
            eligible = eligible[turn:] + eligible[:turn]  # equal loads take turns
            eligible.sort(key=lambda r: r.in_flight)  # stable: the rotation decides among equals
        return eligible

    def draw(self, weights: dict[int, int]) -> int | None:
        """A release, each with the chance its weight gives it (none for a weight of 0)."""
        shares = [(release, share) for release, share in sorted(weights.items()) if share > 0]
        point = self._random.uniform(0, sum(share for _, share in shares))
        for release, share in shares:
            point -= share
            if point < 0:
                return release
        return shares[-1][0] if shares else None

    def replicas(self):
        """Every replica of every running application (for the health checks)."""
        for route in list(self.routes.values()):
            if route.status == RUNNING:
                yield from route.replicas
