"""The benchmark's upstream: a real HTTP/1.1 server on loopback, in its own process.

Routes: POST or GET /json (a small JSON answer), GET /sse?n=N&gap=S (N events
S seconds apart, each carrying the wall-clock time it was written), POST
/sink (reads the body, answers its size), GET /source?size=N (N bytes), GET
/ws (a WebSocket that echoes each message).
Run as ``python -m bridgeproto_adapters.bench.upstream``; it prints its port.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.abc
import h11

from ..h11io import H11Stream

BLOCK = bytes(range(256)) * 1024  # 256 KiB
_WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455's, for the accept key
Send = Callable[[h11.Event], Awaitable[None]]


async def _serve(stream: anyio.abc.SocketStream) -> None:
    http = H11Stream(stream, h11.SERVER, read_size=1 << 20)
    async with stream:
        try:
            while True:
                request = await http.next_event()
                if not isinstance(request, h11.Request):
                    return
                received = 0
                while not isinstance(event := await http.next_event(), h11.EndOfMessage):
                    if isinstance(event, h11.Data):
                        received += len(event.data)
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                if _is_websocket(request):
                    await _echo_websocket(http, request)
                    return
                await _answer(request, received, http.send)
                if http.h11.our_state is not h11.DONE or http.h11.their_state is not h11.DONE:
                    return
                http.h11.start_next_cycle()
        except (anyio.BrokenResourceError, OSError, h11.ProtocolError):
            return


def _is_websocket(request: h11.Request) -> bool:
    return any(n == b"upgrade" and v.lower() == b"websocket" for n, v in request.headers)


async def _echo_websocket(http: H11Stream, request: h11.Request) -> None:
    """Accept the handshake, then send each message back (frames of up to
    64 KiB, as the benchmark's agent sends them) until a close."""
    key = dict(request.headers)[b"sec-websocket-key"]
    accept = base64.b64encode(hashlib.sha1(key + _WEBSOCKET_GUID).digest())
    await http.send(h11.InformationalResponse(status_code=101, headers=[
        (b"upgrade", b"websocket"), (b"connection", b"upgrade"),
        (b"sec-websocket-accept", accept),
    ]))  # fmt: skip
    buffer = bytearray(http.h11.trailing_data[0])
    while True:
        while (frame := _client_frame(buffer)) is None:
            buffer += await http.stream.receive(1 << 20)
        opcode, payload = frame
        length = len(payload)
        size = bytes([length]) if length < 126 else b"\x7e" + length.to_bytes(2, "big")
        await http.stream.send(bytes([0x80 | opcode]) + size + payload)
        if opcode == 0x8:  # close
            return


def _client_frame(buffer: bytearray) -> tuple[int, bytes] | None:
    """The first whole masked frame in ``buffer``, taken out of it (None: more needed)."""
    if len(buffer) < 2:
        return None
    length, start = buffer[1] & 0x7F, 2
    if length == 126:
        if len(buffer) < 4:
            return None
        length, start = int.from_bytes(buffer[2:4], "big"), 4
    end = start + 4 + length
    if len(buffer) < end:
        return None
    mask = buffer[start : start + 4]
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(buffer[start + 4 : end]))
    opcode = buffer[0] & 0x0F
    del buffer[:end]
    return opcode, payload


async def _answer(request: h11.Request, received: int, send: Send) -> None:
    url = urlsplit(request.target.decode())
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    path = url.path.rsplit("/", 1)[-1]
    if path == "sse":
        await send(h11.Response(status_code=200, headers=[(b"content-type", b"text/event-stream")]))
        gap = float(query.get("gap", "0.02"))
        for i in range(int(query.get("n", "50"))):
            if i:
                await anyio.sleep(gap)
            event = json.dumps({"i": i, "written": time.time()}).encode()
            await send(h11.Data(data=b"data: " + event + b"\n\n"))
        await send(h11.EndOfMessage())
        return
    if path == "source":
        size = int(query.get("size", "0"))
        await send(h11.Response(status_code=200, headers=[(b"content-length", b"%d" % size)]))
        while size > 0:
            chunk = BLOCK[: min(size, len(BLOCK))]
            await send(h11.Data(data=chunk))
            size -= len(chunk)
        await send(h11.EndOfMessage())
        return
    body = json.dumps({"ok": True, "received": received}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send(h11.Response(status_code=200, headers=headers))
    await send(h11.Data(data=body))
    await send(h11.EndOfMessage())


async def main() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0, backlog=1024)
    print(listener.extra(anyio.abc.SocketAttribute.local_port), flush=True)
    async with listener:
        await listener.serve(_serve)


if __name__ == "__main__":
    try:
        anyio.run(main)
    except KeyboardInterrupt:
        sys.exit(0)
