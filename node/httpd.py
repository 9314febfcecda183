"""The one ``ThreadingHTTPServer`` the project's small HTTP endpoints share (the node's health and
metrics, the bridge explorer, the Bitcoin devnet's JSON-RPC).

Why not the stdlib class as is: ``socketserver`` prints a full traceback to stderr whenever a
request fails - a client that hung up before its answer was written (a closed browser tab, a
poller stopped at shutdown) ends as 20 lines of ``BrokenPipeError`` in a daemon's or the demo's
output, which promise one line per failure. Here a hang-up is a debug line and any other failure
one warning line naming the exception type and where it was raised (never its message).
"""

from __future__ import annotations

import logging
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .logs import internal_error, log_event

log = logging.getLogger("fusion_prime.node.httpd")

#: a client that went away mid-request: nothing is wrong with the server
HANG_UPS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class LoggedHTTPServer(ThreadingHTTPServer):
    """A threaded HTTP server (daemon threads; IPv6 when the host has a ``:``) whose request
    failures go to the log in one line instead of to stderr as tracebacks."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if exc is None or isinstance(exc, HANG_UPS):
            log.debug("http client %s hung up (%s)", client_address, type(exc).__name__)
            return
        log_event(log, logging.WARNING, "http request failed", server=type(self).__name__,
                  error=internal_error(exc))
