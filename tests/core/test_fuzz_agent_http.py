"""Fuzz target for the sandbox side's HTTP handling: bytes from an agent
into ``AgentConnection``.

Under pytest it runs a fixed number of hypothesis examples. With atheris
installed it is a coverage-guided fuzzer (for N minutes: N * 60 seconds)::

    pip install atheris && python tests/core/test_fuzz_agent_http.py -max_total_time=600

Whatever the agent sends, in whatever pieces: ``AgentConnection`` never
raises, every request it lets through passes the path policy and carries no
hop-by-hop or routing header the bridge must not pass, and every refusal is
a complete HTTP error answer.
"""

from __future__ import annotations

import sys

from hypothesis import given, settings
from hypothesis import strategies as st

import bridgeproto as bp
from bridgeproto.http import (
    AgentClosed,
    AgentConnection,
    AgentEnd,
    AgentRefused,
    AgentRequest,
    HttpPolicy,
    check_target,
)

POLICY = HttpPolicy(allowed_prefixes=["/rollout/k1"], max_header_bytes=4096,
                       max_body_bytes=10_000)  # fmt: skip
HOP_BY_HOP = {b"connection", b"keep-alive", b"te", b"upgrade", b"expect", b"host"}


def fuzz_one_input(data: bytes) -> None:
    piece = (data[0] % 16 + 1) if data else 1  # feed in pieces of this size
    data = data[1:]
    agent = AgentConnection(POLICY)
    chunks = [data[i : i + piece] for i in range(0, len(data), piece)] + [b""]
    for chunk in chunks:
        agent.receive_data(chunk)
        while (event := agent.next_event()) is not None:
            if isinstance(event, AgentRequest):
                assert check_target(event.method, event.target, POLICY) is None
                names = {name for name, _ in event.headers}
                assert not names & HOP_BY_HOP, names
            elif isinstance(event, AgentRefused):
                assert event.reply is not None and event.reply.startswith(b"HTTP/1.1 ")
                assert b"x-bridge-error: " in event.reply.lower()
                return  # the connection closes after a refusal
            elif isinstance(event, AgentEnd):
                # Answer, as the bridge would, and go on with the next request.
                head = bp.ResponseHead(1, 200, b"OK", [(b"content-length", b"2")])
                answer = agent.respond_head(head) + agent.respond_data(b"ok")
                assert answer.startswith(b"HTTP/1.1 200 ")
                agent.respond_end()
                if not agent.next_cycle():
                    return
            elif isinstance(event, AgentClosed):
                return


@settings(max_examples=300)
@given(st.binary(max_size=3000))
def test_agent_http_survives_any_bytes(data: bytes) -> None:
    fuzz_one_input(data)


REQUEST_PARTS = [
    b"GET /rollout/k1/json HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /rollout/k1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /rollout/k1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"3\r\nabc\r\n0\r\n\r\n",
    b"FFFFFFFFFFFFFFFFFFFF\r\n",
    b"Connection: content-length, x-a\r\n",
    b"GET /rollout/k1/%2e%2e/x HTTP/1.1\r\n",
    b"GET /rollout/k1#x HTTP/1.0\r\n\r\n",
    b"Expect: 100-continue\r\n",
    b"X-Forwarded-For: 1.2.3.4\r\n",
    b"\r\n",
]


@settings(max_examples=300)
@given(st.lists(st.sampled_from(REQUEST_PARTS), max_size=8), st.integers(0, 255))
def test_agent_http_survives_plausible_requests(parts: list[bytes], piece: int) -> None:
    # HTTP-shaped input reaches deeper than random bytes do.
    fuzz_one_input(bytes([piece]) + b"".join(parts))


if __name__ == "__main__":
    import atheris  # type: ignore[import-not-found]

    atheris.instrument_all()
    atheris.Setup(sys.argv, fuzz_one_input)
    atheris.Fuzz()
