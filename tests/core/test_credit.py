"""Credit on its own: spending, granting, taking and returning a window."""

from __future__ import annotations

from bridgeproto._credit import Credit
from bridgeproto._records import MAX_WINDOW


def test_spending_and_granting_move_what_can_be_sent() -> None:
    c = Credit(can_send=100, window=1000)
    c.spend(60)
    assert c.can_send == 40
    assert c.grant(10) and c.can_send == 50
    assert c.grant(MAX_WINDOW - 50) and c.can_send == MAX_WINDOW  # exactly the limit
    assert not c.grant(1) and c.can_send == MAX_WINDOW  # one past: refused, unchanged


def test_taking_more_than_granted_is_refused_and_changes_nothing() -> None:
    c = Credit(can_send=0, window=1000)
    assert c.take(1000) and c.can_receive == 0  # exactly the window
    assert not c.take(1) and c.can_receive == 0


def test_consumed_bytes_are_announced_once_half_a_window_gathers() -> None:
    c = Credit(can_send=0, window=1000)
    assert c.take(1000)
    c.release(499)
    assert c.due() == 0 and c.can_receive == 0  # just under half: wait
    c.release(1)
    assert c.due() == 500 and c.can_receive == 500  # exactly half: announce
    assert c.due() == 0 and c.unreturned == 0  # announced once only
    c.release(500)
    assert c.due() == 500 and c.can_receive == 1000


def test_nothing_consumed_announces_nothing_even_for_a_tiny_window() -> None:
    c = Credit(can_send=0, window=1)  # half a window rounds to 0
    assert c.due() == 0
    c.release(1)
    assert c.due() == 1
