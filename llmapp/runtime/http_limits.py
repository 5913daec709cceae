"""Bounds on what a client may hold of an app server before its key is even checked: header bytes,
the time to send them, idle keep-alive connections and open connections.

uvicorn's httptools protocol has none of the first two (a 128 MiB header was read whole), and a
connection that never sends a byte was held for as long as the client liked. This protocol is
uvicorn's own with those bounds added; it answers in OpenAI's error shape and closes.
"""

import json
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = 64 * 1024  # request line and headers, together
    header_timeout_s: float = 10.0  # from the connection (or the first byte of a request) to its last header
    keep_alive_s: float = 5.0  # an idle connection between requests is closed after this long
    max_connections: int = 512  # more open connections than this are answered 503 and closed at once


def refusal(status: int, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, with OpenAI's error body."""
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}})
    head = (
        f"HTTP/1.1 {status} {REASONS[status]}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n"
    )
    if status == 503:
        head += "retry-after: 1\r\n"
    return (head + "\r\n" + body).encode()


def bounded_protocol(limits: HttpLimits) -> type:
    """uvicorn's httptools protocol class with ``limits``; pass it as uvicorn.Config(http=...)."""

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.header_bytes = 0
            self.in_headers = True  # until a request's headers are complete
            self.header_timer = None
            if len(self.connections) > limits.max_connections:
                self._refuse(503, f"The server has {limits.max_connections} open connections: try again.", "busy")
                return
            self._arm_header_timer()

        def _arm_header_timer(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
            self.header_timer = self.loop.call_later(limits.header_timeout_s, self._header_timeout)

        def _header_timeout(self) -> None:
            self.header_timer = None
            if not self.in_headers or self.transport.is_closing():
                return
            if self.header_bytes:  # part of a request arrived: say why it is cut off
                self._refuse(
                    408, f"The request's headers did not arrive within {limits.header_timeout_s:g} s.", "timeout"
                )
            else:
                self.transport.close()

        def _refuse(self, status: int, message: str, code: str) -> None:
            self.in_headers = False
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None
            self.transport.write(refusal(status, message, code))
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self.transport.is_closing():
                return
            super().data_received(data)
            if self.in_headers and not self.transport.is_closing():
                # What the parser holds of an unfinished head: bounded, whatever the client sends.
                self.header_bytes += len(data)
                if self.header_bytes > limits.max_header_bytes:
                    self._refuse(
                        431,
                        f"The request's headers are larger than {limits.max_header_bytes // 1024} KiB.",
                        "too_large",
                    )

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.in_headers, self.header_bytes = True, 0
            self._arm_header_timer()  # a keep-alive connection's next request gets the same bound

        def on_headers_complete(self) -> None:
            self.in_headers = False
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None
            super().connection_lost(exc)

    return BoundedHttpToolsProtocol
