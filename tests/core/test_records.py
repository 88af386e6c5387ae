"""Records validate on construction, with messages that name the problem."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

import bridgeproto as bp

SID = bytes(16)

INVALID: list[tuple[str, Any, str]] = [
    ("status low", lambda: bp.ResponseHead(1, 99), "status 99 is out of range"),
    ("status high", lambda: bp.ResponseHead(1, 600), "status 600 is out of range"),
    ("status bool", lambda: bp.ResponseHead(1, True), "status must be an int"),
    ("reason CRLF", lambda: bp.ResponseHead(1, 200, b"O\r\nK"), "reason phrase contains CR"),
    ("id zero", lambda: bp.Data(0, b""), "exchange_id 0 is out of range"),
    ("id too big", lambda: bp.EndOfBody(2**32), "exchange_id 4294967296 is out of range"),
    ("data str", lambda: bp.Data(1, "text"), "data must be bytes, got str"),
    ("method", lambda: bp.RequestHead(1, b"GE T", b"/"), "method b'GE T' is not a token"),
    ("target space", lambda: bp.RequestHead(1, b"GET", b"/a b"), "must be non-empty visible"),
    ("target empty", lambda: bp.RequestHead(1, b"GET", b""), "must be non-empty visible"),
    ("header name", lambda: bp.RequestHead(1, b"GET", b"/", [(b"a:b", b"")]), "not a token"),
    ("header LF", lambda: bp.RequestHead(1, b"GET", b"/", [(b"a", b"x\ny")]), "CR, LF or NUL"),
    ("header NUL", lambda: bp.ResponseHead(1, 200, b"", [(b"a", b"\0")]), "CR, LF or NUL"),
    ("header str", lambda: bp.RequestHead(1, b"GET", b"/", [("a", "b")]), "must be bytes"),
    (
        "header shape",
        lambda: bp.RequestHead(1, b"GET", b"/", [(b"a",)]),
        "must be a .name, value. pair",
    ),
    ("reset code", lambda: bp.Reset(1, 999), "unknown error code 999"),
    ("reason long", lambda: bp.Reset(1, 0, "x" * 1025), "longer than 1024 bytes"),
    ("reason type", lambda: bp.GoAway(0, 0, b"x"), "reason must be str"),
    ("reason surrogate", lambda: bp.GoAway(0, 0, "\ud800"), "cannot be encoded as UTF-8"),
    ("window zero", lambda: bp.Window(1, 0), "increment 0 is out of range"),
    ("window id", lambda: bp.Window(-1, 1), "exchange_id -1 is out of range"),
    ("ack negative", lambda: bp.Ack(-1), "seq -1 is out of range"),
    ("ping long", lambda: bp.Ping(b"x" * 65), "longer than 64 bytes"),
    ("session id", lambda: bp.Hello(1, bp.Role.HOST, b"short", bp.Limits()), "must be 16 bytes"),
    ("role", lambda: bp.Hello(1, 3, SID, bp.Limits()), "3 is not a valid Role"),
    ("frame size", lambda: bp.Limits(max_frame_size=100), "below the minimum of 1024"),
    ("header room", lambda: bp.Limits(max_frame_size=2048, max_header_bytes=2000), "1024 bytes"),
    ("zero window", lambda: bp.Limits(initial_window=0), "must be at least 1"),
]


@pytest.mark.parametrize(("name", "build", "message"), INVALID, ids=[i[0] for i in INVALID])
def test_invalid_records_are_refused(name: str, build: Any, message: str) -> None:
    with pytest.raises((bp.LocalProtocolError, ValueError), match=message):
        build()


def test_records_are_frozen_and_slotted() -> None:
    head = bp.RequestHead(1, b"GET", b"/", [(b"a", b"1"), (b"a", b"2")])
    assert head.headers == ((b"a", b"1"), (b"a", b"2"))  # order and duplicates kept
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        head.exchange_id = 3  # type: ignore[misc]
    assert not hasattr(head, "__dict__")


def test_error_codes_carry_http_statuses() -> None:
    assert bp.ErrorCode.HEADERS_TOO_LARGE.http_status == 431
    assert bp.ErrorCode.BODY_TOO_LARGE.http_status == 413
    assert bp.ErrorCode.IDLE_TIMEOUT.http_status == 504
    assert bp.ErrorCode.UPSTREAM_UNREACHABLE.http_status == 502
    assert all(100 <= code.http_status <= 599 for code in bp.ErrorCode)


def test_error_codes_name_their_cause_to_the_agent() -> None:
    assert bp.ErrorCode.UPSTREAM_TIMEOUT.cause == "upstream-timeout"
    assert bp.ErrorCode.TOO_MANY_EXCHANGES.cause == "bridge-busy"
    causes = [code.cause for code in bp.ErrorCode]
    assert len(set(causes)) == len(causes)  # each names one code
    assert all(c == c.lower() and " " not in c and "_" not in c for c in causes)


def test_protocol_error_is_abstract() -> None:
    with pytest.raises(TypeError, match="abstract"):
        bp.ProtocolError("x")
    err = bp.LocalProtocolError("too big", code=bp.ErrorCode.BODY_TOO_LARGE)
    assert err.status_hint == 413 and isinstance(err, bp.ProtocolError)
    assert bp.LocalProtocolError("misuse").status_hint is None
    assert issubclass(bp.CorruptFrameError, bp.RemoteProtocolError)
