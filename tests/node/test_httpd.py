"""The small HTTP endpoints (health/metrics, explorer, Bitcoin devnet RPC) report a failed request
in one log line, never as a traceback on stderr - the demo and the daemons promise one line per
failure, and a poller hanging up at shutdown printed 20 lines of ``BrokenPipeError`` into the
demo's error output (seen under load)."""

from __future__ import annotations

import http.client
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from fusion_prime.node.httpd import LoggedHTTPServer

RAISED: list[BaseException] = []


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        raise RAISED[0]

    def log_message(self, fmt: str, *args: object) -> None:
        return


@pytest.fixture
def server() -> Iterator[LoggedHTTPServer]:
    s = LoggedHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=s.serve_forever, daemon=True)
    t.start()
    try:
        yield s
    finally:
        s.shutdown()
        s.server_close()


def _get(server: LoggedHTTPServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    try:
        conn.request("GET", "/")
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            conn.getresponse()  # the handler failed: the connection closes without an answer
    finally:
        conn.close()


@pytest.mark.parametrize("exc", [ValueError("share=1234567890"), BrokenPipeError(32, "Broken pipe")])
def test_a_failed_request_is_one_log_line_and_nothing_on_stderr(
        server: LoggedHTTPServer, exc: BaseException, capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    RAISED[:] = [exc]
    with caplog.at_level(logging.DEBUG, logger="fusion_prime.node.httpd"):
        _get(server)
        # handle_error runs after the connection is torn down: poll for its line (bounded)
        for _ in range(200):
            if caplog.records:
                break
            threading.Event().wait(0.05)
    out, err = capfd.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    (record,) = caplog.records
    if isinstance(exc, BrokenPipeError):
        assert record.levelno == logging.DEBUG and "hung up" in record.getMessage()
    else:
        assert record.levelno == logging.WARNING
        text = record.getMessage() + str(getattr(record, "__dict__", {}))
        assert "ValueError at test_httpd.py:" in text
        assert "1234567890" not in text, "an exception's message can carry a secret: never logged"


def test_an_ipv6_host_binds_ipv6() -> None:
    try:
        s = LoggedHTTPServer(("::1", 0), Handler)
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    try:
        assert s.server_address[0] == "::1"
    finally:
        s.server_close()
