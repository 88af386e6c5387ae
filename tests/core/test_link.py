"""The link's own checks: the peer's hello, on either side."""

from __future__ import annotations

import pytest

import bridgeproto as bp
from pair import SID, RawPeer


@pytest.mark.parametrize("role", list(bp.Role))
def test_either_side_refuses_a_peer_that_claims_its_own_role(role: bp.Role) -> None:
    conn = bp.Connection(role, SID)
    conn.start(0.0)
    (failed,) = conn.receive_data(RawPeer(role).hello(), 0.0)
    assert isinstance(failed, bp.SessionFailed)
    assert f"both sides claim the {role.name.lower()} role" in failed.reason
    assert f"one must be the {role.peer.name.lower()} side" in failed.reason


@pytest.mark.parametrize("role", list(bp.Role))
def test_either_side_takes_its_peer_s_hello(role: bp.Role) -> None:
    conn = bp.Connection(role, SID)
    conn.start(0.0)
    (done,) = conn.receive_data(RawPeer(role.peer).hello(), 0.0)
    assert isinstance(done, bp.HandshakeComplete) and conn.state is bp.SessionState.OPEN
