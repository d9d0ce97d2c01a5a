#!/usr/bin/env python3
"""test-server: the field report's example service, for drover.

An HTTP app that shows its environment (GET /), answers its health check
(GET /healthcheck), says which process answered (GET /whoami), and on
SIGTERM starts failing its health check while it finishes the requests in
flight, then exits: what a well-behaved service does during a rolling
upgrade.

Listens on $PORT0 (or $PORT, or 3000). GET /slow?ms=N answers after N ms,
to have requests in flight.
"""
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

draining = threading.Event()
in_flight = 0
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "test-server/1.0"
    # Head and body leave in one write (flushed after each request): two
    # small writes would meet Nagle and the peer's delayed ACK, 40 ms each.
    wbufsize = 64 * 1024

    def log_message(self, fmt, *args):
        sys.stdout.write("%s %s\n" % (self.address_string(), fmt % args))
        sys.stdout.flush()

    def reply(self, code, body, ctype="application/json"):
        data = body if isinstance(body, bytes) else body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        global in_flight
        with lock:
            in_flight += 1
        try:
            path, _, query = self.path.partition("?")
            if path == "/healthcheck":
                if draining.is_set():
                    self.reply(503, '{"status": "draining"}\n')
                else:
                    self.reply(200, '{"status": "ok"}\n')
            elif path == "/slow":
                ms = 100
                for part in query.split("&"):
                    if part.startswith("ms="):
                        ms = min(int(part[3:] or 0), 60000)
                time.sleep(ms / 1000)
                self.reply(200, '{"slept_ms": %d}\n' % ms)
            elif path == "/whoami":
                self.reply(200, '{"pid": %d}\n' % os.getpid())
            elif path == "/":
                env = {k: v for k, v in sorted(os.environ.items())}
                self.reply(200, json.dumps({"pid": os.getpid(), "env": env}, indent=2) + "\n")
            else:
                self.reply(404, '{"error": "not found"}\n')
        finally:
            with lock:
                in_flight -= 1


def main():
    port = int(os.environ.get("PORT0") or os.environ.get("PORT") or 3000)
    httpd = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    httpd.daemon_threads = True

    def on_term(signum, frame):
        # Fail the health check at once, finish what is in flight, then go.
        draining.set()
        print("SIGTERM: draining %d in-flight requests" % in_flight, flush=True)

        def finish():
            deadline = time.time() + 30
            while time.time() < deadline:
                with lock:
                    if in_flight == 0:
                        break
                time.sleep(0.02)
            httpd.shutdown()

        threading.Thread(target=finish, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    print("test-server listening on port %d" % port, flush=True)
    httpd.serve_forever(poll_interval=0.1)
    print("test-server stopped", flush=True)


if __name__ == "__main__":
    main()
