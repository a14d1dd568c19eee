"""A clearly labelled stand-in for an image that cannot be obtained offline. Answers HTTP on its ports saying so."""

import http.server
import os
import signal
import sys
import threading

NAME = os.environ.get("PLACEHOLDER_FOR", "unknown")
PORTS = [int(p) for p in os.environ.get("PLACEHOLDER_PORTS", "8080").split(",") if p]
MESSAGE = (
    f"PLACEHOLDER for {NAME}: the real {NAME} image was not available when this lab was built. "
    "This container only shows where the service runs; it does not do its work.\n"
).encode()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("X-Placeholder-For", NAME)
        self.end_headers()
        self.wfile.write(MESSAGE)

    def log_message(self, *_):
        pass


servers = [http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler) for port in PORTS]  # noqa: S104
for server in servers[1:]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
sys.stdout.write(MESSAGE.decode())
sys.stdout.flush()
servers[0].serve_forever()
