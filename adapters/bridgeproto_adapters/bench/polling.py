"""The host half of the polling baseline.

Every 0.2 s one exec runs ``find`` on the requests directory; each request
found costs three more control-plane calls: read it, upload the response,
delete it. The replay to the upstream buffers the whole response, as the
first-attempt design did.
"""

from __future__ import annotations

import base64
import json
import pathlib
from typing import Any

import anyio
import h11

from ..host_side import HostOptions, UpstreamPool
from ..sandboxes import LiveProcess, SandboxClient, SandboxError, stop_process

HOST_POLL_SECONDS = 0.2
DIRECTORY = "/tmp/bp-poll"
SERVER_SOURCE = (pathlib.Path(__file__).parent / "poll_server.py").read_text()


class PollingBaseline:
    def __init__(self, sandbox: SandboxClient, upstream_host: str, upstream_port: int) -> None:
        self.sandbox = sandbox
        self.pool = UpstreamPool(upstream_host, upstream_port, HostOptions())
        self.process: LiveProcess | None = None

    async def start(self, port: int) -> None:
        self.process = await self.sandbox.open_process(
            ["python3", "-c", SERVER_SOURCE, str(port), DIRECTORY]
        )
        ready = b""
        with anyio.fail_after(20):
            while b"ready" not in ready:
                data = await self.process.read(1024)
                if not data:
                    raise SandboxError(f"the polling server ended before it was ready: {ready!r}")
                ready += data

    async def run(self) -> None:
        """The host loop; runs until cancelled."""
        while True:
            found = await self.sandbox.run(
                ["find", f"{DIRECTORY}/requests", "-name", "*.json", "-type", "f"]
            )
            for path in sorted(found.stdout.decode().split()):
                await self._answer(path)
            await anyio.sleep(HOST_POLL_SECONDS)

    async def _answer(self, path: str) -> None:
        request = json.loads(await self.sandbox.read_file(path))
        status, headers, body = await self._replay(request)
        answer = {"status": status, "headers": headers, "body": base64.b64encode(body).decode()}
        name = path.rsplit("/", 1)[1]
        await self.sandbox.write_file(f"{DIRECTORY}/responses/{name}", json.dumps(answer).encode())
        await self.sandbox.run(["rm", "-f", path])

    async def _replay(self, request: dict[str, Any]) -> tuple[int, list[list[str]], bytes]:
        body = base64.b64decode(request["body"])
        skip = {"host", "content-length", "connection", "transfer-encoding"}
        headers = [(n, v) for n, v in request["headers"] if n.lower() not in skip]
        headers += [
            ("host", f"{self.pool.host}:{self.pool.port}"),
            ("content-length", str(len(body))),
        ]
        conn = await self.pool.acquire()
        await conn.send(
            h11.Request(method=request["method"], target=request["path"], headers=headers)
        )
        await conn.send(h11.Data(data=body))
        await conn.send(h11.EndOfMessage())
        response = await conn.next_event()
        assert isinstance(response, h11.Response)
        chunks = []
        while isinstance(event := await conn.next_event(), h11.Data):
            chunks.append(bytes(event.data))
        kept = self.pool.keep(conn)
        if not kept:
            await self.pool.discard(conn)
        pairs = [[n.decode(), v.decode()] for n, v in response.headers.raw_items()]
        return response.status_code, pairs, b"".join(chunks)

    async def aclose(self) -> None:
        if self.process is not None:
            await stop_process(self.process)
        await self.pool.aclose()
