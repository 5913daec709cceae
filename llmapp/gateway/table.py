"""The gateway's routing table: every application's route, as the platform publishes it in Redis.

A route is JSON under ``keyspace.routes()`` (written by llmapp/services/routing.py):
``{"id", "name", "owner_id", "status", "release", "replicas": [{"id", "url", "draining"}]}``.
What the gateway learns itself (requests in flight on a replica, whether it answers its health
check) lives on the ``Replica`` and survives a reload of its route. Pure: no I/O here.
"""

import itertools
import json
from dataclasses import dataclass, field

RUNNING = "running"


@dataclass(eq=False)
class Replica:
    id: str
    url: str  # its base, without /v1
    draining: bool = False
    in_flight: int = 0
    # None until its health is first known: a replica is asked before its first request (it must be
    # ready before it gets any), then checked in the background.
    healthy: bool | None = None


@dataclass
class Route:
    id: str
    name: str
    owner_id: int
    status: str
    release: int | None = None
    replicas: list[Replica] = field(default_factory=list)


def parse_route(raw: bytes | str) -> Route:
    """A route as published. :raise ValueError: not one (the gateway skips it)."""
    data = json.loads(raw)
    try:
        replicas = [Replica(str(r["id"]), str(r["url"]), bool(r.get("draining"))) for r in data.get("replicas", [])]
        release = data.get("release")
        return Route(
            str(data["id"]),
            str(data["name"]),
            int(data["owner_id"]),
            str(data["status"]),
            int(release) if release is not None else None,
            replicas,
        )
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"not a route: {e}") from e


class RoutingTable:
    def __init__(self):
        self.routes: dict[str, Route] = {}
        self._turn = itertools.count()  # breaks ties between replicas equally loaded

    def put(self, route: Route | None, application_id: str) -> None:
        """Replace (or with None, remove) an application's route, keeping what is known of each
        replica that is still there (same id and address)."""
        old = self.routes.pop(application_id, None)
        if route is None:
            return
        if old is not None:
            known = {(r.id, r.url): r for r in old.replicas}
            for i, replica in enumerate(route.replicas):
                kept = known.get((replica.id, replica.url))
                if kept is not None:
                    kept.draining = replica.draining
                    route.replicas[i] = kept
        self.routes[application_id] = route

    def replace_all(self, routes: dict[str, Route]) -> None:
        for application_id in set(self.routes) - set(routes):
            self.routes.pop(application_id)
        for application_id, route in routes.items():
            self.put(route, application_id)

    def candidates(self, route: Route, tried=()) -> list[Replica]:
        """The replicas a new request may go to, least requests in flight first: not draining, not
        known unhealthy, not tried already for this request."""
        eligible = [r for r in route.replicas if not r.draining and r.healthy is not False and r not in tried]
        if len(eligible) > 1:
            turn = next(self._turn) % len(eligible)
            eligible = eligible[turn:] + eligible[:turn]  # equal loads take turns
            eligible.sort(key=lambda r: r.in_flight)  # stable: the rotation decides among equals
        return eligible

    def replicas(self):
        """Every replica of every running application (for the health checks)."""
        for route in list(self.routes.values()):
            if route.status == RUNNING:
                yield from route.replicas
