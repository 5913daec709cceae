"""Where requests to a URL a user chose (a webhook's) may go: pure rules, shared by the platform, which
checks a URL when it is saved, and the app server, which checks it again on every connection.

Without them, a webhook could reach what only this host's network reaches (the platform, Redis, the
app servers, a cloud's metadata service, a private network), and each delivery's outcome, logged for
its owner, would tell them what answers there. So a destination is refused when its address is
loopback, private, link-local, CGNAT (100.64.0.0/10), unspecified, multicast or reserved, also when
written in another form (an IPv4-mapped, 6to4 or NAT64 IPv6 address, a decimal, octal or hex IPv4
address) or named as such (localhost, a metadata service's name, also in look-alike characters that
fold to it: ``ⅼocalhost``), or a cloud's metadata address that is nominally public (Azure's
WireServer 168.63.129.16, the IETF protocol assignments 192.0.0.0/24 with Oracle's 192.0.0.192);
unless the admin's allow-list (WEBHOOK_ALLOWED_DESTINATIONS, a comma-separated list of host names,
addresses and CIDR networks) names it. Only http and https, and no user name or password in the URL.

When saved, a URL is checked for what it says (no DNS lookup: the name may not resolve there, and a
lookup proves nothing about later), as the sender will read it: parsed by httpx, its host IDNA-encoded
(a host that can't be is refused, as it could never be sent), and the encoded host is what the rules
judge. When used, ``Guard.addresses`` resolves the name, checks every address, and the caller
connects to the addresses it returned, never to the name again: a DNS answer
that changes in between (rebinding) can't move the connection.
"""

import ipaddress
import re
import socket
import unicodedata
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

CGNAT = ipaddress.ip_network("100.64.0.0/10")  # not "private" to ipaddress, yet not on the internet
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix: an IPv4 address in the last 32 bits
# Global to ipaddress, yet no destination: Azure's WireServer, and the IETF protocol assignments
# (192.0.0.0/24, whose 192.0.0.192 is Oracle Cloud's metadata service).
METADATA_ADDRESSES = (ipaddress.ip_network("168.63.129.16/32"),)
PROTOCOL_ASSIGNMENTS = ipaddress.ip_network("192.0.0.0/24")
LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
METADATA_NAMES = (
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "metadata.azure.internal",
    "instance-data",
    "instance-data.ec2.internal",
)
UNLESS_ALLOWED = ": webhooks can't go there unless an admin allows it (LLMAPP_WEBHOOK_ALLOW)."
HOST_NAME = re.compile(r"^[a-z0-9_.-]+$")  # what an encoded host name may contain
NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")  # what inet_aton reads as a part of an IPv4 address


class Refused(Exception):
    """A destination the rules refuse; the message says why, in words for the URL's owner."""


def has_control_characters(text: str) -> bool:
    """Line breaks, NUL, ESC, bidirectional overrides…: what would break a log line or mislead its reader."""
    return any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text)


def url_shape_error(url, *, query: bool = True) -> str | None:
    """What is wrong with the URL's form (None when nothing): http or https, a host, no user info, no
    white space or control characters, a valid port; with ``query=False`` no query or fragment either."""
    if not isinstance(url, str) or not url:
        return "Give a URL."
    if any(c.isspace() for c in url) or has_control_characters(url):
        return "A URL can't contain spaces, line breaks or other control characters."
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return "Not a valid URL (check the host and the port)."
    if parts.scheme.lower() not in ("http", "https"):
        return "The URL must start with http:// or https://."
    if "@" in parts.netloc:
        return "A URL can't contain a user name or password (user@host): put credentials elsewhere."
    if not parts.hostname:
        return "The URL needs a host, e.g. https://example.com/."
    if port == 0:
        return "Not a valid port."
    if not query and (parts.query or parts.fragment or url.endswith(("?", "#"))):
        return "The URL can't have a query (?…) or a fragment (#…)."
    if wire_host(url) is None:
        return f"“{parts.hostname}” is not a valid host name (it can't be encoded for DNS)."
    return None


def wire_host(url: str) -> str | None:
    """The URL's host as the sender (httpx) sends it: IDNA-encoded, lower case; None when httpx can't
    parse the URL or encode its host (``xn--``, ``a☃b.example``, ``ⅼocalhost``)."""
    try:
        parsed = httpx.URL(url)
        if not parsed.host:  # decoded back, as httpx does for the Host header: ``xn--`` fails there
            return None
        host = parsed.raw_host.decode("ascii")
    except (httpx.InvalidURL, ValueError):  # idna's errors are UnicodeErrors, ValueErrors
        return None
    if not host or (":" not in host and not HOST_NAME.match(host)):  # a name, not an IPv6 address
        return None
    return host


def allow_entries(value) -> tuple[str, ...]:
    """The allow-list setting as entries: a comma-separated string or a list, blanks dropped."""
    if not value:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    return tuple(item.strip().lower() for item in items if item and item.strip())


def literal_address(host: str) -> IPAddress | None:
    """The address a URL's host names literally, in any notation a resolver reads (127.0.0.1, [::1],
    2130706433, 0x7f.1, 0177.0.0.1); None for a name.

    :raise Refused: a host that looks like an address but isn't one (names never end in digits).
    """
    host = host.strip("[]").rstrip(".").lower()
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    labels = host.split(".")
    if not NUMERIC_LABEL.match(labels[-1]):
        return None
    if all(NUMERIC_LABEL.match(label) for label in labels):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            pass
    raise Refused(f"“{host}” is not a valid host name or address.")


def address_refusal(address: IPAddress) -> str | None:
    """Why an address is no destination ("a loopback address"), None for an address on the internet.
    An IPv6 address that carries an IPv4 address (mapped, 6to4, NAT64) is judged by that one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return address_refusal(embedded)
    checks = (
        (any(address in n for n in METADATA_ADDRESSES), "a cloud metadata service's address"),
        (address in PROTOCOL_ASSIGNMENTS, "a reserved address (IETF protocol assignments)"),
        (address.is_unspecified, "an unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address (where cloud metadata services answer)"),
        (address.is_multicast, "a multicast address"),
        (address in CGNAT, "a shared (CGNAT) address"),
        (address.is_private, "a private address"),
        (address.is_reserved or not address.is_global, "a reserved address"),
    )
    return next((reason for refused, reason in checks if refused), None)


def _name_refusal(name: str) -> str | None:
    if name in LOCAL_NAMES or name.endswith(".localhost"):
        return "this host itself"
    if name in METADATA_NAMES:
        return "a cloud metadata service"
    return None


def _bare(host: str) -> str:
    """The host as the rules compare it: folded as a resolver folds it (NFKC, so ``ⅼocalhost`` and
    ``ｌｏｃａｌｈｏｓｔ`` are ``localhost``), lower case, without brackets, a final dot or a zone."""
    return unicodedata.normalize("NFKC", host).strip("[]").rstrip(".").lower().split("%")[0]


@dataclass(frozen=True)
class Guard:
    """The rules with an allow-list; ``resolve`` is how names are resolved (socket.getaddrinfo)."""

    allowed: tuple[str, ...] = ()
    resolve: Callable = field(default=socket.getaddrinfo, compare=False)

    @classmethod
    def from_setting(cls, value, **kwargs) -> "Guard":
        return cls(allow_entries(value), **kwargs)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(_bare(entry) for entry in self.allowed if self._network(entry) is None)

    @property
    def networks(self) -> tuple[IPNetwork, ...]:
        return tuple(n for n in map(self._network, self.allowed) if n is not None)

    @staticmethod
    def _network(entry: str) -> IPNetwork | None:
        try:
            return ipaddress.ip_network(entry.strip("[]"), strict=False)
        except ValueError:
            return None  # a host name (one that is neither a name nor a network never matches)

    def allows(self, address: IPAddress) -> bool:
        return any(address.version == n.version and address in n for n in self.networks)

    def url_error(self, url, *, query: bool = True) -> str | None:
        """What is wrong with a destination URL as written (None when nothing): its form, then a
        literal address or a name that the rules refuse. Looks nothing up."""
        error = url_shape_error(url, query=query)
        if error:
            return error
        try:  # as written (folded) and as it will be sent (encoded): the two must both pass
            for host in dict.fromkeys((urllib.parse.urlsplit(url).hostname, wire_host(url))):
                self.check_host(host)
        except Refused as e:
            return str(e)
        return None

    def check_host(self, host: str) -> IPAddress | None:
        """The host's literal address (None for a name).

        :raise Refused: the host is an address or a name the rules refuse.
        """
        name = _bare(host)
        if name in self.names:
            return literal_address(name)
        address = literal_address(name)
        if address is not None:
            reason = None if self.allows(address) else address_refusal(address)
        else:
            reason = _name_refusal(name)
        if reason:
            raise Refused(f"“{name}” is {reason}{UNLESS_ALLOWED}")
        return address

    def addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for ``host``: resolved here, each one checked.

        :raise Refused: the host, or any address it resolves to, is refused.
        :raise OSError: the name does not resolve (a failure to retry, not a refusal).
        """
        address = self.check_host(host)
        if address is not None:
            return [str(address)]
        name = _bare(host)
        found = self.resolve(name, port, type=socket.SOCK_STREAM)  # :raise OSError: (maybe for now)
        addresses = list(dict.fromkeys(ipaddress.ip_address(_bare(info[4][0])) for info in found))
        if not addresses:
            raise socket.gaierror(f"“{name}” does not resolve.")
        if name not in self.names:
            for resolved in addresses:  # one refused answer refuses the name: no mixing public and private
                reason = None if self.allows(resolved) else address_refusal(resolved)
                if reason:
                    raise Refused(f"“{name}” resolves to {reason}{UNLESS_ALLOWED}")
        return [str(resolved) for resolved in addresses]
