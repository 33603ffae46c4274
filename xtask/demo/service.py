#!/usr/bin/env python3
"""A small HTTP/1.1 service for `cargo xtask demo`; it knows nothing of sonde.

Endpoints with different latencies and failure modes (standard library only):
  GET  /                  fast
  GET  /api/users/<id>    ~20 ms; 404 for id > 900, 400 for a non-numeric id
  POST /api/orders        ~80 ms; JSON body; 201, or 500 about 5% of the time
  GET  /api/search?q=...  200-400 ms
  GET  /health            fast
Connections are kept alive and every response has a Content-Length.
"""

import argparse
import json
import random
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

USERS_PREFIX = "/api/users/"
MAX_USER_ID = 900
ORDER_FAILURE_RATE = 0.05


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo-service/1.0"

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/":
            self.reply(200, {"service": "demo", "endpoints": 4})
        elif url.path == "/health":
            self.reply(200, {"status": "ok"})
        elif url.path.startswith(USERS_PREFIX):
            self.get_user(url.path[len(USERS_PREFIX):])
        elif url.path == "/api/search":
            self.search(parse_qs(url.query).get("q", [""])[0])
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self):
        # The body is read in every case so the connection stays usable.
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if urlsplit(self.path).path != "/api/orders":
            self.reply(404, {"error": "not found"})
            return
        try:
            order = json.loads(body)
        except ValueError:
            order = None
        if not isinstance(order, dict):
            self.reply(400, {"error": "body is not a JSON object"})
            return
        time.sleep(random.uniform(0.07, 0.09))
        if random.random() < ORDER_FAILURE_RATE:
            self.reply(500, {"error": "order store unavailable"})
        else:
            self.reply(201, {"order_id": random.randint(1, 10**9), "items": len(order.get("items", []))})

    def get_user(self, user_id):
        if not user_id.isdigit():
            self.reply(400, {"error": "user id must be a number"})
            return
        time.sleep(random.uniform(0.015, 0.025))
        if int(user_id) > MAX_USER_ID:
            self.reply(404, {"error": "no such user"})
        else:
            self.reply(200, {"id": int(user_id), "name": f"user {user_id}"})

    def search(self, query):
        time.sleep(random.uniform(0.2, 0.4))
        self.reply(200, {"query": query, "results": [f"{query}-{i}" for i in range(3)]})

    def reply(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"demo service on http://{args.host}:{args.port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
