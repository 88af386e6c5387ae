"""``bridgeproto demo``: the whole bridge, end to end, with nothing else running.

A built-in OpenAI-compatible upstream streams a chat completion on loopback;
an offline sandbox runs a small client that asks for it through the bridge
and prints the tokens as they arrive, then shows that it cannot reach the
upstream directly. The upstream demands a key that only the host side adds.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import h11

from .foreground import start_foreground
from .h11io import H11Stream
from .launch import open_bridge
from .providers import open_sandbox

DEMO_KEY = b"Bearer demo-secret-stays-on-the-host"
TOKENS = ["Hello", " from", " the", " host", ",", " one", " token", " at", " a", " time", "."]

CLIENT = r"""
import json, os, socket, sys, urllib.request
request = urllib.request.Request(
    os.environ["OPENAI_BASE_URL"] + "/chat/completions",
    data=json.dumps({"model": "demo", "stream": True,
                     "messages": [{"role": "user", "content": "hi"}]}).encode(),
    headers={"Content-Type": "application/json",
             "Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]},
)
print("inside the sandbox: streaming a chat completion through the bridge:")
with urllib.request.urlopen(request) as response:
    for line in response:
        line = line.strip()
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            chunk = json.loads(line[6:])
            print(chunk["choices"][0]["delta"].get("content", ""), end="", flush=True)
print()
host, port = os.environ["DEMO_UPSTREAM"].split(":")
try:
    socket.create_connection((host, int(port)), timeout=3).close()
    print(f"inside the sandbox: {host}:{port} is reachable directly -- NOT offline")
except OSError as exc:
    print(f"inside the sandbox: {host}:{port} is unreachable directly ({exc.strerror})")
"""


async def _serve(stream: anyio.abc.SocketStream) -> None:
    http = H11Stream(stream, h11.SERVER)
    send = http.send
    async with stream:
        while True:
            try:
                event = await http.next_event()
                if not isinstance(event, h11.Request):
                    return
                while not isinstance(rest := await http.next_event(), h11.EndOfMessage):
                    if isinstance(rest, h11.ConnectionClosed):
                        return
            except (anyio.BrokenResourceError, h11.ProtocolError):
                return
            if (b"authorization", DEMO_KEY) not in list(event.headers):
                body = b'{"error": {"message": "missing or wrong key"}}'
                await send(
                    h11.Response(status_code=401, headers=[(b"content-length", b"%d" % len(body))])
                )
                await send(h11.Data(data=body))
                await send(h11.EndOfMessage())
                return
            await send(
                h11.Response(status_code=200, headers=[(b"content-type", b"text/event-stream")])
            )
            for token in TOKENS:
                await anyio.sleep(0.08)  # a model thinking
                await send(h11.Data(data=b": keepalive\n\n"))
                chunk = {"choices": [{"index": 0, "delta": {"content": token}}]}
                await send(h11.Data(data=b"data: " + json.dumps(chunk).encode() + b"\n\n"))
            await send(h11.Data(data=b"data: [DONE]\n\n"))
            await send(h11.EndOfMessage())
            return


@asynccontextmanager
async def demo_upstream() -> AsyncIterator[int]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, _serve)
        yield port
        tg.cancel_scope.cancel()


async def run_demo(sandbox_kind: str = "auto") -> int:
    async with demo_upstream() as port:
        print(f"host: an OpenAI-compatible upstream is streaming on 127.0.0.1:{port}/demo")
        sandbox, note = await open_sandbox(sandbox_kind)
        print(f"host: {note}", flush=True)
        try:
            upstream = f"http://127.0.0.1:{port}/demo"
            async with open_bridge(
                sandbox, upstream, headers=[(b"authorization", DEMO_KEY)]
            ) as bridge:
                inside = bridge.env["OPENAI_BASE_URL"]
                print(f"host: the bridge is up; inside, OPENAI_BASE_URL={inside}")
                print("host: the real key stays here; the sandbox has a placeholder", flush=True)
                env = {**bridge.env, "DEMO_UPSTREAM": f"127.0.0.1:{port}"}
                client = start_foreground(sandbox, ["python3", "-u", "-c", CLIENT], env, None)
                try:
                    code = await client.wait()
                finally:
                    await client.stop()
            print(bridge.session.stats.summary(), file=sys.stderr)
            return code
        finally:
            await sandbox.aclose()
