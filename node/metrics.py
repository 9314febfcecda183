"""Prometheus metrics and the loopback health/metrics HTTP endpoint.

Each node owns a :class:`CollectorRegistry` instead of the process-global one, so several
nodes can live in one process (tests, the in-process benchmark) without their counters
colliding. The HTTP endpoint binds to loopback only (config validation enforces it): it is
for the local Prometheus agent and the operator's ``status`` command, not for peers.

``GET /metrics`` - Prometheus text format. ``GET /healthz`` - JSON from the node's health
callback, HTTP 200 when serving and 503 when draining or not ready.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .httpd import LoggedHTTPServer


class NodeMetrics:
    def __init__(self, node_id: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.envelopes_sent = Counter("fp_envelopes_sent_total", "Envelopes delivered to a peer", ["peer"], registry=r)
        self.envelopes_received = Counter(
            "fp_envelopes_received_total", "Envelopes accepted from a peer", ["peer", "outcome"], registry=r
        )
        self.envelopes_rejected = Counter(
            "fp_envelopes_rejected_total", "Envelopes refused or dropped, by reason", ["reason"], registry=r
        )
        self.delivery_retries = Counter("fp_delivery_retries_total", "Delivery attempts retried", ["peer"], registry=r)
        self.delivery_failures = Counter(
            "fp_delivery_failures_total", "Envelopes given up at the round deadline", ["peer"], registry=r
        )
        self.buffered = Gauge("fp_envelopes_buffered", "Envelopes waiting for their session", registry=r)
        self.proposals = Counter("fp_proposals_total", "Session proposals answered", ["phase", "decision"], registry=r)
        self.sessions = Counter("fp_sessions_total", "Sessions finished", ["phase", "outcome"], registry=r)
        self.active_sessions = Gauge("fp_sessions_active", "Sessions running", registry=r)
        self.session_seconds = Histogram(
            "fp_session_duration_seconds", "Wall time of a session", ["phase"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.round_timeouts = Counter("fp_round_timeouts_total", "Rounds that hit their deadline", ["phase"],
                                      registry=r)
        self.machine_seconds = Histogram(
            "fp_machine_step_seconds", "Time inside one RoundMachine start/receive call", ["phase"], registry=r,
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
        )
        self.presignatures = Gauge("fp_presignatures", "Presignatures by state", ["state"], registry=r)
        self.info = Gauge("fp_node_info", "Static node information", ["node_id"], registry=r)
        self.info.labels(node_id=node_id).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HealthServer:
    """``/metrics`` and ``/healthz`` on a loopback port, served from a daemon thread."""

    def __init__(self, host: str, port: int, metrics: NodeMetrics, health: Callable[[], dict[str, Any]]) -> None:
        metrics_ref, health_ref = metrics, health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body, status, ctype = metrics_ref.render(), 200, CONTENT_TYPE_LATEST
                elif self.path in ("/healthz", "/health"):
                    doc = health_ref()
                    body = json.dumps(doc).encode()
                    status, ctype = (200 if doc.get("status") == "serving" else 503), "application/json"
                else:
                    body, status, ctype = b"not found\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # requests are not worth a log line each; errors surface as metrics

        self._server = LoggedHTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fp-health", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
