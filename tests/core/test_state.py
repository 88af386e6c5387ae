"""The lifecycle tables: what each allows, and that a connection follows them."""

from __future__ import annotations

import pytest

import bridgeproto as bp
from bridgeproto._state import (
    ENDED,
    PEER_WATCHED,
    Half,
    HalfInput,
    LinkInput,
    LinkState,
    SessionInput,
    SessionState,
    both_halves_done,
    drained,
    half_after,
    half_input,
    link_after,
    session_after,
)
from pair import SID, Pair

S, In = SessionState, SessionInput


def test_the_session_table_allows_exactly_the_documented_moves() -> None:
    allowed = {
        (state, what): new
        for state in S
        for what in In
        if (new := session_after(state, what)) is not None
    }
    assert allowed == {
        (S.NEW, In.START): S.HANDSHAKING,
        (S.HANDSHAKING, In.PEER_HELLO): S.OPEN,
        (S.CLOSING, In.PEER_HELLO): S.CLOSING,
        (S.CLOSED, In.PEER_HELLO): S.CLOSED,
        (S.HANDSHAKING, In.GOAWAY_SENT): S.CLOSING,
        (S.OPEN, In.GOAWAY_SENT): S.CLOSING,
        (S.CLOSING, In.DRAINED): S.CLOSED,
        (S.CLOSING, In.GRACE_OVER): S.CLOSED,
        **{(state, In.FAILURE): S.FAILED for state in S if state is not S.FAILED},
    }
    # Nothing leaves FAILED, and CLOSED only fails.
    assert all(session_after(S.FAILED, what) is None for what in In)
    assert {S.CLOSED, S.FAILED} == ENDED


def test_the_link_breaks_once_and_resumes_any_number_of_times() -> None:
    assert link_after(LinkState.UP, LinkInput.BREAK) is LinkState.BROKEN
    assert link_after(LinkState.BROKEN, LinkInput.BREAK) is None
    assert link_after(LinkState.BROKEN, LinkInput.RESUME) is LinkState.UP
    assert link_after(LinkState.UP, LinkInput.RESUME) is LinkState.UP


def test_a_half_goes_idle_open_done_and_nothing_else() -> None:
    moves = {
        (half, what): new
        for half in Half
        for what in HalfInput
        if (new := half_after(half, what)) is not None
    }
    assert moves == {
        (Half.IDLE, HalfInput.HEAD): Half.OPEN,
        (Half.IDLE, HalfInput.INFORMATIONAL_HEAD): Half.IDLE,
        (Half.OPEN, HalfInput.DATA): Half.OPEN,
        (Half.OPEN, HalfInput.END): Half.DONE,
    }


def test_the_rules_moved_by_state() -> None:
    # The 101 rule: an informational head leaves the half idle, but not 101.
    heads = {status: half_input(bp.ResponseHead(1, status)) for status in (100, 101, 103, 199, 200)}
    assert heads == {
        100: HalfInput.INFORMATIONAL_HEAD,
        101: HalfInput.HEAD,
        103: HalfInput.INFORMATIONAL_HEAD,
        199: HalfInput.INFORMATIONAL_HEAD,
        200: HalfInput.HEAD,
    }
    assert half_input(bp.RequestHead(1, b"GET", b"/")) is HalfInput.HEAD
    assert half_input(bp.Data(1, b"x")) is HalfInput.DATA
    assert half_input(bp.EndOfBody(1)) is HalfInput.END
    # Both halves done, and only then.
    assert [(a, b) for a in Half for b in Half if both_halves_done(a, b)] == [
        (Half.DONE, Half.DONE)
    ]

    # Drained: closing, the peer's goaway in, nothing open, all acknowledged.
    def is_drained(state: SessionState, goaway: bool, open_: int, acked: bool) -> bool:
        return drained(state, peer_said_goaway=goaway, exchanges_open=open_, all_acknowledged=acked)

    assert [state for state in S if is_drained(state, True, 0, True)] == [S.CLOSING]
    assert not is_drained(S.CLOSING, False, 0, True)
    assert not is_drained(S.CLOSING, True, 1, True)
    assert not is_drained(S.CLOSING, True, 0, False)
    assert frozenset({S.OPEN, S.CLOSING}) == PEER_WATCHED


def test_a_connection_walks_the_table_from_new_to_closed() -> None:
    conn = bp.Connection(bp.Role.SANDBOX, SID)
    assert conn.state is S.NEW and conn.next_deadline() is None
    assert conn.handle_timer(1e9) == []
    with pytest.raises(bp.LocalProtocolError, match="before start"):
        conn.receive_data(b"", 0.0)
    with pytest.raises(bp.LocalProtocolError, match="before start"):
        conn.close(0.0)
    with pytest.raises(bp.LocalProtocolError, match="before start"):
        conn.resume(0.0)
    with pytest.raises(bp.LocalProtocolError, match="before the handshake"):
        conn.start_exchange(b"GET", b"/", [], 0.0)
    conn.start(0.0)
    assert conn.state is S.HANDSHAKING
    with pytest.raises(bp.LocalProtocolError, match="already called"):
        conn.start(0.0)

    pair = Pair()  # started and handshaken
    s, h = pair.sandbox, pair.host
    assert s.state is h.state is S.OPEN
    s.close(0.0)
    assert s.state is S.CLOSING
    with pytest.raises(bp.LocalProtocolError, match="closing") as refused:
        s.start_exchange(b"GET", b"/", [], 0.0)
    assert refused.value.code is bp.ErrorCode.SHUTTING_DOWN
    pair.pump()
    assert s.state is h.state is S.CLOSED
    s.close(0.0)  # nothing more to do
    assert s.state is S.CLOSED


def test_the_link_state_follows_a_break_and_a_resume() -> None:
    pair = Pair()
    s = pair.sandbox
    pair.pump()
    assert s.link is LinkState.UP
    events = s.receive_data(b"XX not a frame", 1.0)
    assert isinstance(events[-1], bp.LinkBroken) and s.link is LinkState.BROKEN
    assert s.receive_data(b"more", 1.0) == []  # a broken link reads nothing more
    s.resume(2.0)
    assert s.link is LinkState.UP and s.state is S.OPEN
