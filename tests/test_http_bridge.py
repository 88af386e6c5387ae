"""HTTP through the whole bridge: real sockets, a real upstream, real clients."""

from __future__ import annotations

import json

import httpx
import pytest
from bridge import bridge

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_json_round_trip() -> None:
    async with bridge() as b, httpx.AsyncClient(base_url=b.url) as client:
        response = await client.get("/json")
        assert response.status_code == 200
        assert response.json() == {"ok": True}
        echo = (await client.post("/echo", content=b"hello")).json()
        assert echo["method"] == "POST" and echo["body_size"] == 5


async def test_over_a_real_subprocess() -> None:
    async with bridge(transport="process") as b, httpx.AsyncClient(base_url=b.url) as client:
        response = await client.get("/json")
        assert response.json() == {"ok": True}
