"""Outward routes: several host services reachable from inside one offline
sandbox, each with its own allowlist and its own host-side credentials, added
to a running bridge from synchronous code, on both transports."""

from __future__ import annotations

import json

import pytest

from bridgeproto.http import split_route
from bridgeproto_adapters.errors import BridgeError
from bridgeproto_adapters.launch import open_bridge
from sandbox_kinds import make_sandbox
from upstream import running_upstream

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# Runs inside the sandbox: each URL in argv is fetched once; prints what came back.
FETCH = r"""
import json, sys, urllib.request, urllib.error
out = []
for url in sys.argv[1:]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            out.append([r.status, r.headers.get("x-bridge-error"), r.read().decode()])
    except urllib.error.HTTPError as e:
        out.append([e.code, e.headers.get("x-bridge-error"), e.read().decode()])
print(json.dumps(out))
"""


def test_targets_name_their_route() -> None:
    assert split_route(b"/rollout/k/v1") == (0, b"/rollout/k/v1")
    assert split_route(b"/_routesque") == (0, b"/_routesque")
    assert split_route(b"/_routes/3/mcp/x?a=1") == (3, b"/mcp/x?a=1")
    assert split_route(b"/_routes/3") == (3, b"/")
    assert split_route(b"/_routes/3?a") == (3, b"/?a")
    for bad in (b"/_routes", b"/_routes/", b"/_routes/x/a", b"/_routes/03/a", b"/_routes/0/a"):
        refusal = split_route(bad)
        assert not isinstance(refusal, tuple) and refusal.status == 400, bad
        assert refusal.cause == "route-unknown" and "/_routes/N/" in refusal.message
    assert not isinstance(split_route(b"/_routes/4294967296/a"), tuple)


@pytest.mark.parametrize("transport", ["stream", "mailbox"])
async def test_two_routes_with_their_own_credentials_each_refused_the_others_paths(
    transport: str,
) -> None:
    async with (
        running_upstream() as tools,
        running_upstream() as model,
        make_sandbox("bwrap") as sandbox,
        open_bridge(sandbox, None, transport=transport) as bridge,
    ):
        # Synchronous, on the running bridge, and in force for the first request.
        tools_url = bridge.add_route(f"{tools.url}/tools", [(b"authorization", b"Bearer TOOLS")])
        model_url = bridge.add_route(f"{model.url}/model", [(b"authorization", b"Bearer MODEL")])
        assert bridge.add_route(f"{tools.url}/tools", [(b"authorization", b"Bearer TOOLS")]) == (
            tools_url
        )
        base = bridge.url
        tools_route = tools_url.split("/_routes/")[1].split("/")[0]
        model_route = model_url.split("/_routes/")[1].split("/")[0]
        urls = [
            f"{tools_url}/echo",
            f"{model_url}/echo",
            f"{base}/_routes/{tools_route}/model/echo",  # the model's path on the tools route
            f"{base}/_routes/{model_route}/tools/echo",  # and the other way round
            f"{base}/_routes/99/tools/echo",  # a route never given out
            f"{base}/tools/echo",  # no default upstream on this bridge
            f"{base}/_routes/x/echo",
        ]
        result = await sandbox.run(["python3", "-c", FETCH, *urls], env=bridge.env, timeout=60)
        assert result.exit_code == 0, result.stderr.decode()
        answers = json.loads(result.stdout)
        assert "TOOLS" not in json.dumps(dict(bridge.env)) and "MODEL" not in json.dumps(
            dict(bridge.env)
        )
    (status, _, body), (status2, _, body2) = answers[:2]
    assert status == status2 == 200
    seen_by_tools, seen_by_model = json.loads(body), json.loads(body2)
    assert seen_by_tools["target"] == "/tools/echo"
    assert seen_by_model["target"] == "/model/echo"
    assert ["authorization", "Bearer TOOLS"] in seen_by_tools["headers"]
    assert ["authorization", "Bearer MODEL"] in seen_by_model["headers"]
    for status, cause, body in answers[2:4]:
        assert (status, cause) == (403, "forbidden"), body
        assert "outside what this bridge allows" in body
    assert answers[4][:2] == [403, "forbidden"] and "has no route 99" in answers[4][2]
    assert answers[5][:2] == [403, "forbidden"] and "no default upstream" in answers[5][2]
    assert answers[6][:2] == [400, "route-unknown"]
    # Nothing refused reached either upstream, and each saw only its own key.
    assert [r["target"] for r in tools.requests] == ["/tools/echo"]
    assert [r["target"] for r in model.requests] == ["/model/echo"]


async def test_bad_routes_are_refused_with_the_cause_named() -> None:
    async with (
        running_upstream() as upstream,
        make_sandbox("bwrap") as sandbox,
        open_bridge(sandbox, f"{upstream.url}/rollout/k") as bridge,
    ):
        with pytest.raises(BridgeError, match="is not an http:// URL"):
            bridge.add_route("https://127.0.0.1:9/x")
        with pytest.raises(BridgeError, match="header name b'bad name' is not a token"):
            bridge.add_route(f"{upstream.url}/x", [(b"bad name", b"v")])
        with pytest.raises(BridgeError, match="CR, LF or NUL"):
            bridge.add_route(f"{upstream.url}/x", [(b"authorization", b"a\r\nb")])
        for port, host_port in ((0, 0), (70000, 0), (80, -1)):
            with pytest.raises(BridgeError, match="ports are 1-65535"):
                await bridge.expose(port, host_port)
        url = await bridge.expose(80)
        taken = int(url.rsplit(":", 1)[1])
        with pytest.raises(BridgeError, match=f"cannot listen on 127.0.0.1:{taken} for port 81"):
            await bridge.expose(81, taken)
    with pytest.raises(BridgeError, match="not running"):
        bridge.add_route(f"{upstream.url}/x")
    with pytest.raises(BridgeError, match="not running"):
        await bridge.expose(82)
