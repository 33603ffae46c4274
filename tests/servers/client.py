"""HTTP client process for sonde's client-side test.

Usage: client.py PORT PATH COUNT
Makes COUNT GET requests to 127.0.0.1:PORT/PATH on one keep-alive connection
with http.client. Prints this process's executable (what sonde names the
service after) on the first line, then one status code per line.
"""

import http.client
import os
import sys


def main():
    port, path, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    print(os.readlink("/proc/self/exe"), flush=True)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(count):
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        print(response.status, flush=True)
    conn.close()


if __name__ == "__main__":
    main()
