"""The VM guest's HTTP server, for labs whose "VM" is a network namespace
(no QEMU): the same bodies as the guest's busybox httpd (tests/vm/init).

GET /cgi-bin/stream?chunk=N&delay=USEC: the decimal numbers 1, 2, 3, ...
one per line, CHUNK numbers every DELAY microseconds, until the client goes
away (as tests/vm/stream.cgi: paced here, so that a stall on the path shows
as a gap at the client, `hw-vm-client stream`).
GET /hello.txt: "homeward-vm up\\n" (a reachability probe).

Standard library only. Prints "listening" when it accepts connections.

Usage: stream_server.py [--addr A] [--port P]"""

import argparse
import http.server
import socketserver
import sys
import time
import urllib.parse

HELLO = b"homeward-vm up\n"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, fmt, *args):
        sys.stderr.write("stream_server: %s %s\n" % (self.client_address[0], fmt % args))
        sys.stderr.flush()

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/hello.txt":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(HELLO)))
            self.end_headers()
            self.wfile.write(HELLO)
            return
        if url.path != "/cgi-bin/stream":
            self.send_error(404)
            return
        query = urllib.parse.parse_qs(url.query)
        chunk = int(query.get("chunk", ["500"])[0])
        delay = int(query.get("delay", ["10000"])[0]) / 1e6
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.flush()
        i = 1
        sent = 0
        try:
            while True:
                body = "".join("%d\n" % n for n in range(i, i + chunk)).encode()
                self.wfile.write(body)
                self.wfile.flush()
                sent += len(body)
                i += chunk
                time.sleep(delay)
        except (BrokenPipeError, ConnectionResetError, TimeoutError) as e:
            self.log_message("stream ended after %d bytes: %s", sent, e)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--addr", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    a = p.parse_args()
    server = Server((a.addr, a.port), Handler)
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
