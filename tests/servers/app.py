"""Uninstrumented HTTP/1.1 test service for sonde's end-to-end tests.

Binds 127.0.0.1 on an ephemeral port and prints the port on the first line of
stdout. One thread per connection (with `--fork`: the parent accepts and a
forked child serves the connection it inherits), keep-alive,
`Expect: 100-continue` (answered by http.server itself).

  GET  /fast                      200 "ok"
  GET  /users/<id>                200
  GET  /boom                      500
  GET  /sleep?ms=N                200 after N ms
  GET  /hold?key=K                200 once /release?key=K was called
  GET  /release?key=K             200, releases every held request for K
  GET  /chunked?parts=N&gap_ms=M  200, chunked body in N parts, M ms apart
  POST /echo                      200, the request body (read by Content-Length)
  anything else                   404
"""

import sys
import threading
from socketserver import ForkingMixIn
import time
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HOLD_TIMEOUT_S = 60

_holds = {}
_holds_lock = threading.Lock()


def hold_event(key):
    with _holds_lock:
        return _holds.setdefault(key, threading.Event())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def reply(self, status, body=b"ok\n"):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path
        if path == "/fast":
            self.reply(200)
        elif path.startswith("/users/"):
            self.reply(200, f"user {path[len('/users/'):]}\n".encode())
        elif path == "/boom":
            self.reply(500, b"boom\n")
        elif path == "/sleep":
            time.sleep(int(query.get("ms", "0")) / 1000)
            self.reply(200)
        elif path == "/hold":
            released = hold_event(query.get("key", "")).wait(HOLD_TIMEOUT_S)
            self.reply(200 if released else 503)
        elif path == "/release":
            hold_event(query.get("key", "")).set()
            self.reply(200)
        elif path == "/chunked":
            self.chunked(int(query.get("parts", "1")), int(query.get("gap_ms", "0")))
        else:
            self.reply(404, b"not found\n")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if urlsplit(self.path).path == "/echo":
            self.reply(200, body)
        else:
            self.reply(404, b"not found\n")

    def chunked(self, parts, gap_ms):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(parts):
            if i > 0:
                time.sleep(gap_ms / 1000)
            data = f"part {i}\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.write(b"0\r\n\r\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


class ForkingServer(ForkingMixIn, HTTPServer):
    request_queue_size = 128


def main():
    server_class = ForkingServer if "--fork" in sys.argv[1:] else Server
    server = server_class(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
