"""docs/protocol.md and the code must say the same thing."""

from __future__ import annotations

import binascii
import pathlib
import re

import bridgeproto as bp
from bridgeproto.wire import SEQUENCED, FrameType, armor, encode_frame

SEQUENCED_NAMES = {
    "REQUEST_HEAD",
    "RESPONSE_HEAD",
    "DATA",
    "END_OF_BODY",
    "RESET",
    "WINDOW",
    "GOAWAY",
    "ROUTE",
}
DOCS = pathlib.Path(__file__).parents[2] / "docs"
PROTOCOL = (DOCS / "protocol.md").read_text()


def table_rows(header_start: str, text: str = PROTOCOL) -> list[list[str]]:
    """Body rows of the markdown table whose header row starts with ``header_start``."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[first + 1 :]:
        if not line.startswith("|"):
            break
        if not set(line) <= set("|-: "):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_frame_type_table_matches_the_code() -> None:
    documented = {int(r[0]): (r[1], r[2] == "yes") for r in table_rows("| type | name")}
    sequenced = {t for t in FrameType if t.name in SEQUENCED_NAMES}
    assert documented == {t.value: (t.name, t in sequenced) for t in FrameType}
    # and the record classes agree on which are sequenced
    assert {cls.__name__ for cls in SEQUENCED} == {
        "RequestHead",
        "ResponseHead",
        "Data",
        "EndOfBody",
        "Reset",
        "Window",
        "GoAway",
        "Route",
    }


def test_error_code_table_matches_the_code() -> None:
    rows = table_rows("| code | name | HTTP |")
    assert {int(r[0]): (r[1], int(r[2])) for r in rows} == {
        c.value: (c.name, c.http_status) for c in bp.ErrorCode
    }


def test_worked_examples_are_right() -> None:
    assert binascii.crc32(b"123456789") == 0xCBF43926
    assert "`0xCBF43926`" in PROTOCOL
    ack = encode_frame(bp.Ack(7))
    example = PROTOCOL[PROTOCOL.index("### Example") :].split("```")[1]
    hex_parts = [line.split("   ")[0] for line in example.strip().splitlines()]
    hex_parts = [p for p in hex_parts if re.fullmatch(r"[0-9a-f ]+", p)]
    assert bytes.fromhex("".join(hex_parts)) == ack  # the CRC included
    example = PROTOCOL[PROTOCOL.index("Example: ROUTE") :].split("```")[1]
    hex_parts = [line.split("   ")[0] for line in example.strip().splitlines()]
    assert bytes.fromhex("".join(hex_parts)) == encode_frame(bp.Route(1, 8080), 3)
    # Every hex dump in the spec is a whole frame with a right CRC.
    for block in PROTOCOL.split("```")[1::2]:
        rows = [" ".join(line.split("   ")[0].split()) for line in block.strip().splitlines()]
        dump = [r for r in rows if re.fullmatch(r"(?:[0-9a-f]{2} ){3,}[0-9a-f]{2}", r)]
        if dump:
            frame = bytes.fromhex("".join(dump))
            assert binascii.crc32(frame[:-4]) == int.from_bytes(frame[-4:], "big")
    assert "`BP1:00000000:00000000:\\n`" in PROTOCOL
    assert armor(b"") == "BP1:00000000:00000000:\n"


def test_limits_defaults_match_the_core_docs() -> None:
    core = (DOCS / "core.md").read_text()
    limits = bp.Limits()
    assert limits.max_frame_size == 1 << 20 and "1 MiB frames" in core
    assert limits.initial_window == 4 << 20 and "4 MiB per-exchange" in core
    assert limits.session_window == 16 << 20 and "16 MiB session" in core
    assert limits.max_exchanges == 256 and "256 exchanges" in core
    assert limits.max_header_bytes == 64 << 10 and "64 KiB heads" in core
    config = bp.Config()
    for field, shown, value in [
        ("idle_timeout", "300 s", 300),
        ("exchange_timeout", "None", None),
        ("handshake_timeout", "30 s", 30),
        ("ping_interval", "20 s", 20),
        ("peer_timeout", "60 s", 60),
        ("shutdown_grace", "5 s", 5),
        ("max_body_bytes", "None", None),
        ("closed_exchange_memory", "1024", 1024),
        ("max_retained_bytes", "32 MiB", 32 << 20),
    ]:
        assert f"| `{field}` | {shown} |" in core
        assert getattr(config, field) == value, field


def test_the_embedding_example_in_the_adapter_docs_runs() -> None:
    """Run docs/adapters.md's first example against the test upstream, with an
    agent request where the example has its ``...``."""
    import anyio
    import httpx

    from upstream import running_upstream

    text = (DOCS / "adapters.md").read_text()
    example = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert "anyio.run(main)" in example and "\n        ...\n" in example

    async def scenario() -> None:
        async with running_upstream() as upstream:
            code = example.replace("anyio.run(main)", "")
            code = code.replace("        8000,", f"        {upstream.port},")
            code = code.replace('("127.0.0.1", 13131)', '("127.0.0.1", 0)')
            code = code.replace(
                "\n        ...\n",
                "\n        async with httpx.AsyncClient() as client:\n"
                "            url = f'http://{address[0]}:{address[1]}/rollout/abc/echo'\n"
                "            seen.append((await client.get(url)).json())\n",
            )
            namespace: dict[str, object] = {"httpx": httpx, "seen": []}
            exec(compile(code, "docs/adapters.md", "exec"), namespace)
            await namespace["main"]()  # type: ignore[operator]
            (echo,) = namespace["seen"]  # type: ignore[misc]
            headers = {n.lower(): v for n, v in echo["headers"]}
            assert headers["authorization"] == "Bearer the-real-key"

    anyio.run(scenario)


def test_the_session_table_in_core_md_matches_the_code() -> None:
    from bridgeproto._state import SessionInput, session_after

    states = bp.SessionState
    documented = set()
    for before, _, after in table_rows("| session state |", (DOCS / "core.md").read_text()):
        sources = re.findall(r"`([A-Z]+)`", before)
        if before.startswith("any but"):
            sources = [s.name for s in states if s.name not in sources]
        target = re.findall(r"`([A-Z]+)`", after)[0]
        documented |= {(states[name], states[target]) for name in sources}
    moves = {
        (state, new)
        for state in states
        for what in SessionInput
        if (new := session_after(state, what)) not in (None, state)
    }
    assert documented == moves


def test_the_harness_example_in_the_adapter_docs_runs() -> None:
    """Run docs/adapters.md's harness example: a simulated provider's client
    over a real offline sandbox, and an interception server that queues each
    model call for the harness (this test) to answer, plain and streamed."""
    import json
    import queue
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import anyio

    from bridgeproto_adapters.sandboxes import BwrapSandbox, SimulatedProvider
    from sandbox_kinds import need_bwrap

    need_bwrap()
    text = (DOCS / "adapters.md").read_text()
    example = text.split("### The mailbox transport", 1)[1].split("```python\n", 1)[1]
    example = example.split("```", 1)[0]
    intercepted: queue.Queue[tuple[dict[str, object], queue.Queue[object]]] = queue.Queue()

    class Interception(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            answer: queue.Queue[object] = queue.Queue()
            intercepted.put((body, answer))
            reply = answer.get(timeout=60)
            self.send_response(200)
            if isinstance(reply, list):  # a stream: events as the harness writes them
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                for event in reply:
                    self.wfile.write(event.encode())
                    self.wfile.flush()
            else:
                data = json.dumps(reply).encode()
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    def harness() -> None:
        for _ in range(2):
            body, answer = intercepted.get(timeout=60)
            said = body["messages"][-1]["content"]  # type: ignore[index]
            if body.get("stream"):
                answer.put([f"data: {json.dumps({'delta': w})}\n\n" for w in ("st", "re", "am")])
            else:
                answer.put({"content": f"you said {said}"})

    agent = (
        "import json, os, urllib.request\n"
        "url = os.environ['OPENAI_BASE_URL'] + '/chat/completions'\n"
        "def call(stream):\n"
        "    body = json.dumps({'messages': [{'role': 'user', 'content': 'hi'}],"
        " 'stream': stream}).encode()\n"
        "    return urllib.request.urlopen(urllib.request.Request(url, data=body))\n"
        "print(json.load(call(False))['content'])\n"
        "print(''.join(json.loads(line[6:])['delta'] for line in call(True)"
        " if line.startswith(b'data: ')))\n"
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), Interception)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    threading.Thread(target=harness, daemon=True).start()

    async def scenario() -> str:
        real = await BwrapSandbox.create()
        try:
            await real.write_file("/tmp/agent.py", agent.encode())
            namespace: dict[str, object] = {}
            exec(compile(example, "docs/adapters.md", "exec"), namespace)
            url = f"http://127.0.0.1:{server.server_address[1]}/rollout/7"
            provider = SimulatedProvider(real)
            return await namespace["run_rollout"](provider, "rollout-7", url)  # type: ignore[operator,no-any-return]
        finally:
            await real.aclose()

    try:
        assert anyio.run(scenario).splitlines() == ["you said hi", "stream"]
    finally:
        server.shutdown()


def test_the_routing_headers_dropped_are_the_ones_the_adapter_docs_list() -> None:
    from bridgeproto._http import ROUTING_HEADERS, ROUTING_PREFIXES

    text = (DOCS / "adapters.md").read_text()
    paragraph = text[text.index("Routing headers, which") :].split("\n\n")[0]
    listed = {name.lower() for name in re.findall(r"`([A-Za-z-]+\*?)`", paragraph)}
    listed.discard("upstream(..., pass_routing_headers=true)")
    code = {n.decode() for n in ROUTING_HEADERS} | {p.decode() + "*" for p in ROUTING_PREFIXES}
    assert listed == code


def test_ci_runs_the_readmes_test_command_verbatim() -> None:
    readme = (DOCS.parent / "README.md").read_text()
    commands = re.findall(r"^python3 -m venv \.venv && .*pytest.*$", readme, re.MULTILINE)
    assert len(commands) == 1, commands
    assert "tests/adapters/test_verifiers.py" in commands[0]  # the second environment's tests too
    assert commands[0] in (DOCS.parent / ".ci" / "run").read_text().splitlines()
