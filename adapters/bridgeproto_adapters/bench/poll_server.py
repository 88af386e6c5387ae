"""The sandbox half of the polling baseline (standard library only).

Our own rendering of the first-attempt design, kept faithful to its numbers:
a threading HTTP server on 127.0.0.1 writes each request as a JSON file
(method, path, headers, base64 body) and polls for the response file every
0.1 s. Only GET, POST and OPTIONS with a Content-Length body, as there.
Run as ``python3 poll_server.py PORT DIRECTORY``; prints "ready" when listening.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

POLL_SECONDS = 0.1
_ids = itertools.count()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    directory = "/tmp/bp-poll"

    def _relay(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        name = f"{os.getpid()}-{next(_ids)}.json"
        request = {
            "method": self.command,
            "path": self.path,
            "headers": list(self.headers.items()),
            "body": base64.b64encode(body).decode(),
        }
        requests = os.path.join(self.directory, "requests")
        partial = os.path.join(requests, name + ".partial")
        with open(partial, "w") as file:
            json.dump(request, file)
        os.replace(partial, os.path.join(requests, name))
        answer_path = os.path.join(self.directory, "responses", name)
        while True:
            time.sleep(POLL_SECONDS)
            try:
                with open(answer_path) as file:
                    answer = json.load(file)
            except (FileNotFoundError, ValueError):
                continue  # not there yet, or still being written
            os.remove(answer_path)
            break
        payload = base64.b64decode(answer["body"])
        self.send_response(answer["status"])
        for name_, value in answer["headers"]:
            if name_.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name_, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_OPTIONS = _relay

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    port, Handler.directory = int(sys.argv[1]), sys.argv[2]
    for sub in ("requests", "responses"):
        os.makedirs(os.path.join(Handler.directory, sub), exist_ok=True)
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
