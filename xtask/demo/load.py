#!/usr/bin/env python3
"""Steady keep-alive load on the demo service for `cargo xtask demo`.

N threads each hold one HTTP/1.1 connection and send a mix of requests at a
paced rate (the total is --rate requests per second while the service keeps
up; slow searches hold a thread back). Stops on SIGTERM, SIGINT or after --seconds. Standard library only.
"""

import argparse
import http.client
import json
import random
import signal
import threading
import time

# (weight, method, path maker, body maker)
MIX = [
    (35, "GET", lambda: "/", None),
    # ids above 900 are unknown users: a steady share of 404s.
    (35, "GET", lambda: f"/api/users/{random.randint(1, 1000)}", None),
    (15, "POST", lambda: "/api/orders",
     lambda: json.dumps({"items": [random.randint(1, 50) for _ in range(random.randint(1, 4))]})),
    (5, "GET", lambda: f"/api/search?q={random.choice(['socks', 'tea', 'lamp', 'rust'])}", None),
    (10, "GET", lambda: "/health", None),
]
WEIGHTS = [entry[0] for entry in MIX]
RECONNECT_PAUSE = 0.5


def worker(host, port, interval, stop, counts, lock):
    connection = None
    next_at = time.monotonic() + random.uniform(0, interval)
    while not stop.is_set():
        if stop.wait(max(0.0, next_at - time.monotonic())):
            break
        # Pacing without catch-up bursts: a slow response delays the rest.
        next_at = max(next_at + interval, time.monotonic())
        _, method, path, body = random.choices(MIX, weights=WEIGHTS)[0]
        try:
            if connection is None:
                connection = http.client.HTTPConnection(host, port, timeout=5)
            headers = {"Content-Type": "application/json"} if body else {}
            connection.request(method, path(), body=body() if body else None, headers=headers)
            response = connection.getresponse()
            response.read()
            outcome = response.status
        except (OSError, http.client.HTTPException):
            outcome = "error"
            if connection is not None:
                connection.close()
            connection = None
            stop.wait(RECONNECT_PAUSE)
        with lock:
            counts[outcome] = counts.get(outcome, 0) + 1
    if connection is not None:
        connection.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rate", type=float, default=150.0, help="total requests per second")
    parser.add_argument("--seconds", type=float, help="stop after this long (default: until signalled)")
    args = parser.parse_args()

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    counts, lock = {}, threading.Lock()
    interval = args.threads / args.rate
    threads = [
        threading.Thread(target=worker, args=(args.host, args.port, interval, stop, counts, lock), daemon=True)
        for _ in range(args.threads)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    print(f"load: {args.threads} connections, {args.rate:g} req/s to http://{args.host}:{args.port}/", flush=True)
    stop.wait(args.seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    total = sum(counts.values())
    summary = ", ".join(f"{key}: {value}" for key, value in sorted(counts.items(), key=str))
    print(f"load: {total} requests in {elapsed:.1f} s ({total / elapsed:.1f}/s); {summary}", flush=True)


if __name__ == "__main__":
    main()
