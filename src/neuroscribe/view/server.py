"""`neuroscribe serve`: the report over HTTP on 127.0.0.1, one unit's detail per request.

Routes: `/` (the page), `/api/units` (run summary + one row per unit),
`/api/unit?id=UNIT_ID` (one unit's explanations and excerpts). Standard library only.
"""

from __future__ import annotations

import errno
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from neuroscribe.errors import ConfigError
from neuroscribe.rundir import Run
from neuroscribe.view.data import ReportData
from neuroscribe.view.page import content_security_policy, render_page


class ReportServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, data: ReportData, port: int):
        if not 0 <= port <= 65535:
            raise ConfigError(f"--port {port} is not a port number (0-65535; 0 picks a free one)")
        self.data = data
        self.page = render_page(f"neuroscribe · {data.run.name}", None).encode("utf-8")
        # The unit list is built once: it is what every visitor loads first.
        units = {
            "meta": data.meta().model_dump(mode="json"),
            "units": [s.model_dump(mode="json") for s in data.summaries()],
        }
        self.units_json = json.dumps(units, allow_nan=False).encode("utf-8")
        try:
            super().__init__(("127.0.0.1", port), _Handler)
        except OSError as e:
            why = "is already in use" if e.errno == errno.EADDRINUSE else f"cannot be used ({e})"
            if e.errno == errno.EACCES:
                why = "needs privileges (ports below 1024 usually do)"
            raise ConfigError(
                f"--port {port} on 127.0.0.1 {why}; pick another port, or --port 0 for a free one"
            ) from None
        self.port = self.server_address[1]

    def host_allowed(self, host: str | None) -> bool:
        """Whether a request's Host header names this server (blocks DNS rebinding).

        A page on another site whose name is re-pointed at 127.0.0.1 reaches this port,
        but its requests carry that site's name in Host; only the loopback names pass.
        """
        if not host:
            return False
        host = host.strip().lower()
        if host.startswith("["):  # "[::1]:8765" or "[::1]"
            name, _, rest = host.partition("]")
            name += "]"
            if rest and not rest.startswith(":"):
                return False
            port = rest[1:]
        else:
            name, _, port = host.partition(":")
        # Browsers leave the port out only when it is the default one.
        wanted = {str(self.port)} | ({""} if self.port == 80 else set())
        if port not in wanted:
            return False
        return name in _LOOPBACK_NAMES


_LOOPBACK_NAMES = {"127.0.0.1", "localhost", "[::1]"}


class _Handler(BaseHTTPRequestHandler):
    server: ReportServer

    def log_message(self, format: str, *args: object) -> None:  # keep the terminal quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", content_security_policy(server=True))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: object) -> None:
        self._send(status, json.dumps(obj, allow_nan=False).encode("utf-8"), "application/json")

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if not self.server.host_allowed(self.headers.get("Host")):
            # 421 Misdirected Request: this server does not answer for that name.
            self._json(421, {"error": "unexpected Host header; open http://127.0.0.1:PORT/"})
            return
        url = urlsplit(self.path)
        if url.path in ("/", "/index.html"):
            self._send(200, self.server.page, "text/html; charset=utf-8")
        elif url.path == "/api/units":
            self._send(200, self.server.units_json, "application/json")
        elif url.path == "/api/unit":
            ids = parse_qs(url.query).get("id", [])
            if len(ids) != 1:
                self._json(400, {"error": "pass exactly one ?id=UNIT_ID"})
            elif ids[0] not in self.server.data:
                self._json(404, {"error": f"no unit {ids[0]!r} in this run"})
            else:
                self._json(200, self.server.data.detail(ids[0]).model_dump(mode="json"))
        else:
            self._json(404, {"error": "not found"})


def make_server(run: Run, port: int = 8765) -> ReportServer:
    """A server bound to 127.0.0.1 (port 0 picks a free one); call `serve_forever()`."""
    return ReportServer(ReportData(run), port)
