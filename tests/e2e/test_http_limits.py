"""What a client may hold of an app server before its key is checked: header bytes, header time,
idle connections and open connections are bounded (a real server, raw sockets)."""

import json
import socket

import httpx

from conftest import wait_for

DEADLINE_S = 60  # a bounded server answers long before this; an unbounded one would hold on past it


def connect(server) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", server.spec.port), timeout=DEADLINE_S)
    return connection


def read_all(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def status_and_error(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]


def test_headers_larger_than_the_limit_are_refused_before_they_are_read_whole(served_tiny):
    with connect(served_tiny) as connection:
        connection.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        try:
            while sent < 16 * 1024 * 1024:  # an unbounded server would read all of it, and wait for more
                connection.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection: what it said first is below
        response = read_all(connection)
    assert sent < 16 * 1024 * 1024
    status, error = status_and_error(response)
    assert status == 431 and error["message"] == "The request's headers are larger than 64 KiB."


def test_headers_that_never_finish_are_cut_off(served_tiny):
    with connect(served_tiny) as connection:
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the empty line
        status, error = status_and_error(read_all(connection))
    assert status == 408 and "did not arrive within 5 s" in error["message"]


def test_a_connection_that_sends_nothing_is_closed(served_tiny):
    with connect(served_tiny) as connection:
        assert read_all(connection) == b""  # closed by the server (a timeout here would raise instead)


def test_open_connections_are_bounded_and_the_server_serves_again_after(served_tiny):
    extra = 20
    held = [connect(served_tiny) for _ in range(served_tiny.MAX_CONNECTIONS + extra)]
    try:
        # Each connection ends: those over the bound with a 503 at once, the others when they have sent
        # no request for the header timeout (closed without a word).
        answers = [read_all(connection) for connection in held]
    finally:
        for connection in held:
            connection.close()
    refused = [answer for answer in answers if answer]
    assert refused and all(status_and_error(answer)[0] == 503 for answer in refused)
    assert len(answers) - len(refused) <= served_tiny.MAX_CONNECTIONS
    assert wait_for(lambda: httpx.get(served_tiny.base + "/health", timeout=10).status_code == 200, DEADLINE_S)
