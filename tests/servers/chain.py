"""Uninstrumented service of a call chain, for sonde's trace tests.

Usage: chain.py [--next PORT]...
Binds 127.0.0.1 on an ephemeral port and prints the port on the first line of
stdout. One thread per connection, keep-alive.

  GET /hop        calls GET /hop on 127.0.0.1:PORT for each --next, in order,
                  from the thread serving the request, then answers 200 (502 if
                  a call did not get 200)
  anything else   404

No trace context is read or sent: only sonde can join the hops. Each serving
thread keeps one keep-alive http.client connection per next port, so the
requests of a keep-alive connection into this service reach the next one on a
single connection too, in the same order.
"""

import argparse
import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

CALL_TIMEOUT_S = 10

_local = threading.local()


def connection(port):
    """This thread's connection to `port`."""
    if not hasattr(_local, "connections"):
        _local.connections = {}
    conn = _local.connections.get(port)
    if conn is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CALL_TIMEOUT_S)
        _local.connections[port] = conn
    return conn


def call(port):
    conn = connection(port)
    conn.request("GET", "/hop")
    response = conn.getresponse()
    response.read()
    return response.status


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    next_ports = []

    def log_message(self, format, *args):
        pass

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if urlsplit(self.path).path != "/hop":
            self.reply(404, b"not found\n")
            return
        statuses = [call(port) for port in self.next_ports]
        if all(status == 200 for status in statuses):
            self.reply(200, b"ok\n")
        else:
            self.reply(502, f"next hops answered {statuses}\n".encode())


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--next", type=int, action="append", default=[])
    args = parser.parse_args()
    Handler.next_ports = args.next
    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
