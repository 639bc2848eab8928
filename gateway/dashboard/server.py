"""``[dashboard]``: a read-only page over the gateway's store, served by ``http.server`` in threads of its own.

Routes: ``/`` the page, ``/app.js`` its script (both from the package: no CDN, a hub may be offline),
``/api/state`` the snapshot (``gateway.report.snapshot``) as JSON, ``/models/<version>.tflite`` a stored
model version, verified by its sha256 before it is sent. Each request reads the store through a read-only
connection of its own, so a browser never holds the gateway's store lock and the round thread never waits
on it. Off by default; bound to loopback unless configured; beyond loopback a token (``?token=`` or
``Authorization: Bearer``) or HTTPS with client certificates from ``ca_file`` is required (config.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from edge_runtime.config import ConfigError, setting

from ..readonly import open_readonly
from ..report import snapshot

if TYPE_CHECKING:
    from ..config import GatewayConfig
    from ..rounds import Rounds

log = logging.getLogger(__name__)
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8")}
MODEL_PATH = re.compile(r"^/models/([0-9a-f]{64})\.tflite$")


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, config: GatewayConfig, rounds: Rounds | None) -> None:
        self.config = config
        self.rounds = rounds
        section = config.dashboard
        try:
            super().__init__((section.host, section.port), Handler)
        except OSError as exc:
            raise ConfigError(f"{setting(config.source, 'dashboard', 'port')}: cannot listen on "
                              f"{section.host}:{section.port}: {exc.strerror or exc}") from exc  # fmt: skip
        scheme = "http"
        if section.cert_file:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(section.cert_file, section.key_file)
            if section.ca_file:
                context.load_verify_locations(section.ca_file)
                context.verify_mode = ssl.CERT_REQUIRED
            self.socket = context.wrap_socket(self.socket, server_side=True)
            scheme = "https"
        host = f"[{section.host}]" if ":" in section.host else section.host
        self.url = f"{scheme}://{host}:{self.server_address[1]}/"

    def privacy(self) -> dict[str, Any] | None:
        budget = self.rounds.privacy if self.rounds is not None else None
        if budget is None:
            return None
        spent = budget.spent()
        return {"mode": spent.mode, "epsilon": spent.epsilon, "target": spent.target, "delta": spent.delta,
                "rounds_left": spent.rounds_left}  # fmt: skip

    def state(self) -> dict[str, Any]:
        connection = open_readonly(self.config.storage / "gateway.db")
        try:
            report = snapshot(connection, self.config.storage, privacy=self.privacy())
        finally:
            connection.close()
        report["federation"] = self.config.gateway.federation
        if self.rounds is not None:  # served by the running gateway itself (its lock is held by `gateway run`)
            report["gateway"] = {"running": True, "pid": os.getpid()}
        policy = self.rounds.policy if self.rounds is not None else None
        interval = self.config.rounds.interval
        report["next_round_at"] = policy.next_open_at if policy is not None and interval else None
        return report


class Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "tinyfed-dashboard"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _allowed(self, query: dict[str, list[str]]) -> bool:
        token = self.server.config.dashboard.token
        if not token:
            return True
        given = query.get("token", [""])[0]
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = header.removeprefix("Bearer ")
        return hmac.compare_digest(given.encode(), token.encode())

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == "/favicon.ico":  # asked by every browser, without the token
            self._send(204, b"", "image/x-icon")
            return
        if not self._allowed(parse_qs(parts.query)):
            self._send(401, b"a token is required: ?token=... or Authorization: Bearer ...\n", "text/plain")
            return
        try:
            if parts.path in STATIC:
                name, content_type = STATIC[parts.path]
                body = resources.files(__package__).joinpath("static", name).read_bytes()
                self._send(200, body, content_type)
            elif parts.path == "/api/state":
                self._send(200, json.dumps(self.server.state()).encode(), "application/json")
            elif (match := MODEL_PATH.match(parts.path)) is not None:
                self._model(match.group(1))
            else:
                self._send(404, b"not found\n", "text/plain")
        except ConfigError as exc:
            self._send(503, f"{exc}\n".encode(), "text/plain")

    def _model(self, version: str) -> None:
        connection = open_readonly(self.server.config.storage / "gateway.db")
        try:
            known = connection.execute("SELECT 1 FROM models WHERE version = ?", (version,)).fetchone()
        finally:
            connection.close()
        path = self.server.config.storage / "models" / f"{version}.tflite"
        if not known or not path.is_file():
            self._send(404, b"no such model version in the store\n", "text/plain")
            return
        body = path.read_bytes()
        if hashlib.sha256(body).hexdigest() != version:
            self._send(500, b"the stored file does not match its version: the store is damaged\n", "text/plain")
            return
        self._send(200, body, "application/octet-stream",
                   {"Content-Disposition": f'attachment; filename="{version[:12]}.tflite"'})  # fmt: skip


def start_dashboard(config: GatewayConfig, rounds: Rounds | None) -> tuple[DashboardServer, threading.Thread]:
    server = DashboardServer(config, rounds)
    thread = threading.Thread(target=server.serve_forever, name="dashboard", daemon=True)
    thread.start()
    return server, thread
