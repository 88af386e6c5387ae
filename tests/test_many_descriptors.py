"""A harness host with hundreds of bridges holds thousands of descriptors:
nothing in the host side may be limited to the first 1,024 (``select()`` is)."""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator

import httpx
import pytest

from bridge import bridge

pytestmark = pytest.mark.anyio


@contextlib.contextmanager
def descriptors_past(number: int) -> Iterator[None]:
    """Hold enough descriptors that every new one numbers above ``number``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = number + 512
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.fail(f"the hard descriptor limit ({hard}) is below {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    held: list[int] = []
    try:
        while not held or held[-1] < number:
            held.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_pooled_upstream_connections_past_descriptor_1023() -> None:
    with descriptors_past(1100):
        async with bridge() as b, httpx.AsyncClient(base_url=b.url) as client:
            for _ in range(3):  # the second and third take the pooled connection
                response = await client.post("/echo", content=b"x")
                assert response.status_code == 200
            assert b.upstream.connections == 1
