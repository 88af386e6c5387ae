"""The benchmark's agent: measures one scenario against a URL, prints JSON.

Standard library only, so the same file runs on the host (direct) and inside
any sandbox (bridged, polling): ``python3 agent.py '{"scenario": ..., "url": ...}'``.
Keep-alive ``http.client`` connections, like an SDK's.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

SMALL = b'{"model": "bench", "messages": [{"role": "user", "content": "hi"}]}'
JSON_HEADERS = {"Content-Type": "application/json"}


def _connect(url: str) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    return http.client.HTTPConnection(
        parts.hostname or "", parts.port or 80, timeout=600
    ), parts.path


def _post_json(conn: http.client.HTTPConnection, path: str) -> None:
    conn.request("POST", path + "/json", body=SMALL, headers=JSON_HEADERS)
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"POST {path}/json answered {response.status}")


def latency(url: str, n: int) -> dict[str, Any]:
    conn, path = _connect(url)
    _post_json(conn, path)  # warm the connection up
    times = []
    for _ in range(n):
        start = time.perf_counter()
        _post_json(conn, path)
        times.append(time.perf_counter() - start)
    return {"seconds": times}


def stream(url: str, n: int, gap: float) -> dict[str, Any]:
    conn, path = _connect(url)
    start = time.perf_counter()
    conn.request("GET", f"{path}/sse?n={n}&gap={gap}")
    response = conn.getresponse()
    first = None
    delays = []
    while True:
        line = response.readline()
        if not line:
            break
        if line.startswith(b"data: "):
            now = time.time()
            if first is None:
                first = time.perf_counter() - start
            delays.append(now - json.loads(line[6:])["written"])
    return {"first_event": first, "delays": delays}


def throughput(url: str, concurrency: int, duration: float) -> dict[str, Any]:
    counts = [0] * concurrency
    errors: list[str] = []
    deadline = time.perf_counter() + duration

    def worker(index: int) -> None:
        try:
            conn, path = _connect(url)
            while time.perf_counter() < deadline:
                _post_json(conn, path)
                counts[index] += 1
        except Exception as exc:  # reported, not raised: other workers go on
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    return {"requests": sum(counts), "seconds": elapsed, "errors": errors[:3]}


def _blocks(size: int) -> Iterator[bytes]:
    block = bytes(range(256)) * 1024
    while size > 0:
        yield block[: min(size, len(block))]
        size -= len(block)


def upload(url: str, size: int) -> dict[str, Any]:
    conn, path = _connect(url)
    start = time.perf_counter()
    conn.request("POST", path + "/sink", body=_blocks(size), headers={"Content-Length": str(size)})
    answer = json.loads(conn.getresponse().read())
    if answer.get("received") != size:
        raise RuntimeError(f"the upstream received {answer.get('received')} of {size} bytes")
    return {"bytes": size, "seconds": time.perf_counter() - start}


def download(url: str, size: int) -> dict[str, Any]:
    conn, path = _connect(url)
    start = time.perf_counter()
    conn.request("GET", f"{path}/source?size={size}")
    response = conn.getresponse()
    received = 0
    while chunk := response.read(1 << 20):
        received += len(chunk)
    if received != size:
        raise RuntimeError(f"received {received} of {size} bytes")
    return {"bytes": size, "seconds": time.perf_counter() - start}


def requests(url: str, n: int) -> dict[str, Any]:
    conn, path = _connect(url)
    start = time.perf_counter()
    for _ in range(n):
        _post_json(conn, path)
    return {"requests": n, "seconds": time.perf_counter() - start}


def websocket(url: str, n: int) -> dict[str, Any]:
    """Round trips of a 64-byte message on one WebSocket, after the handshake."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "", parts.port or 80), timeout=600)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET " + parts.path.encode() + b"/ws HTTP/1.1\r\nHost: bench\r\n"
        b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(65536)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"the WebSocket handshake was answered {head[:40]!r}")
    rest = head.split(b"\r\n\r\n", 1)[1]
    message = bytes(range(64))
    frame = bytes([0x82, 0x80 | len(message)]) + bytes(4) + message  # mask 0: sent as is
    times = []
    for _ in range(n + 1):  # the first warms the path up
        start = time.perf_counter()
        sock.sendall(frame)
        while len(rest) < 2 + len(message):
            rest += sock.recv(65536)
        times.append(time.perf_counter() - start)
        if rest[2 : 2 + len(message)] != message:
            raise RuntimeError("the WebSocket echo came back changed")
        rest = rest[2 + len(message) :]
    sock.sendall(bytes([0x88, 0x80]) + bytes(4))  # close
    sock.close()
    return {"seconds": times[1:]}


SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "latency": latency,
    "stream": stream,
    "throughput": throughput,
    "upload": upload,
    "download": download,
    "requests": requests,
    "websocket": websocket,
}


def main() -> None:
    args = json.loads(sys.argv[1])
    scenario = SCENARIOS[args.pop("scenario")]
    print(json.dumps(scenario(**args)))


if __name__ == "__main__":
    main()
