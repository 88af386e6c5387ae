"""``bridgeproto run --expose``: ports inside reachable from the host, their
URLs printed before the command starts and again in the summary."""

from __future__ import annotations

import pathlib
import re
import subprocess
import urllib.request

import pytest

from bridge import free_port
from sandbox_kinds import need_bwrap
from test_cli import BRIDGEPROTO
from test_run_lifecycle import Running

# Two servers inside; each answers one request with its own port, then the command exits.
SERVERS = r"""
import http.server, threading
class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"port {self.server.server_port} {self.path}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
servers = [http.server.HTTPServer(("127.0.0.1", port), Answer) for port in (8700, 8701)]
threads = [threading.Thread(target=s.handle_request) for s in servers]
for t in threads: t.start()
print("listening", flush=True)
for t in threads: t.join()
"""


def test_run_exposes_ports_inside_at_free_or_chosen_host_ports(tmp_path: pathlib.Path) -> None:
    need_bwrap()
    chosen = free_port()
    command = ["--sandbox", "bwrap", "--expose", "8700", "--expose", f"{chosen}:8701"]
    with Running(*command, "--", "python3", "-c", SERVERS, tmp=tmp_path) as run:
        run.wait_for(run.stdout, "listening")
        # Printed before the command started, so already there.
        text = "\n".join(run.stderr)
        free = re.search(r"port 8700 inside is at (http://127\.0\.0\.1:\d+)", text)
        assert free is not None, text
        assert f"port 8701 inside is at http://127.0.0.1:{chosen}" in text
        for url, port in ((free.group(1), 8700), (f"http://127.0.0.1:{chosen}", 8701)):
            with urllib.request.urlopen(f"{url}/hi?x=1", timeout=30) as response:
                assert response.read().decode() == f"port {port} /hi?x=1"
        assert run.finish() == 0
    summary = "\n".join(run.stderr)
    assert f"port 8700 inside was at {free.group(1)}" in summary
    assert f"port 8701 inside was at http://127.0.0.1:{chosen}" in summary


@pytest.mark.parametrize(
    ("spec", "message"),
    [("x", "is not PORT or HOSTPORT:PORT"), ("9000:0", "is not PORT"), ("70000", "is not PORT")],
)
def test_bad_expose_specs_are_refused_by_name(spec: str, message: str) -> None:
    result = subprocess.run(
        [*BRIDGEPROTO, "run", "--expose", spec, "--", "true"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0 and message in result.stderr


def test_run_needs_an_upstream_or_a_port() -> None:
    result = subprocess.run(
        [*BRIDGEPROTO, "run", "--", "true"], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode != 0 and "give --upstream URL, --expose PORT, or both" in result.stderr
