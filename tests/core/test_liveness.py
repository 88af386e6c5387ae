"""Liveness through a connection: timers due together fire in their order,
and the next deadline is found without a walk over the exchanges in flight."""

from __future__ import annotations

import pytest

import bridgeproto as bp
from bridgeproto._exchange import Exchange
from bridgeproto._exchanges import Exchanges
from bridgeproto._liveness import Timer
from bridgeproto.wire import FrameDecoder, Sentinel
from pair import Pair

QUIET = {"ping_interval": None, "peer_timeout": None}


def test_timers_due_together_fire_as_the_exchanges_opened_then_the_ping() -> None:
    config = bp.Config(exchange_timeout=10.0, idle_timeout=5.0, ping_interval=3.0)
    pair = Pair(config, config)
    s, h = pair.sandbox, pair.host
    h.declare_route(1, 8080)
    inward = h.start_exchange(b"GET", b"/", [], 0.0, route=1)  # id 2, opened first
    pair.pump()
    outward = s.start_exchange(b"GET", b"/", [], 0.0)  # id 1, opened second
    assert (inward, outward) == (2, 1)
    pair.take(s)
    s.data_to_send()
    events = s.handle_timer(20.0)  # both exchanges' timers, and the ping, are due
    assert [(e.exchange_id, e.code) for e in events if isinstance(e, bp.ExchangeReset)] == [
        (2, bp.ErrorCode.DEADLINE_EXCEEDED),  # not IDLE_TIMEOUT: the total deadline comes first
        (1, bp.ErrorCode.DEADLINE_EXCEEDED),
    ]
    assert s.open_exchanges == []
    assert s.next_deadline() == 23.0  # a ping went out at 20
    assert records(s.data_to_send()).count("Ping") == 1


def records(data: bytes) -> list[str]:
    decoder = FrameDecoder(bp.Limits().max_frame_size)
    decoder.receive_data(data)
    names = []
    while not isinstance(frame := decoder.next_frame(), Sentinel):
        names.append(type(frame.record).__name__)
    return names


def test_the_next_ping_is_an_interval_after_the_last_ping_or_frame_whichever_is_later() -> None:
    config = bp.Config(ping_interval=20.0, peer_timeout=None, idle_timeout=None)
    pair = Pair(config, config)
    s = pair.sandbox
    assert s.next_deadline() == 20.0
    s.handle_timer(20.0)  # pings
    assert s.next_deadline() == 40.0
    pair.now = 25.0
    pair.deliver(s)
    pair.deliver(pair.host)  # the pong, heard at 25
    assert s.next_deadline() == 45.0


def test_a_verdict_that_ends_the_session_ends_the_round() -> None:
    config = bp.Config(idle_timeout=5.0, peer_timeout=8.0, ping_interval=None)
    pair = Pair(config, config)
    s = pair.sandbox
    s.start_exchange(b"GET", b"/", [], 0.0)
    events = s.handle_timer(10.0)  # the peer timer and the idle timer are both due
    resets = [e for e in events if isinstance(e, bp.ExchangeReset)]
    assert [r.code for r in resets] == [bp.ErrorCode.PEER_UNRESPONSIVE]
    assert isinstance(events[-1], bp.SessionFailed)
    assert s.next_deadline() is None and s.handle_timer(20.0) == []


def test_an_idle_deadline_follows_time_that_went_back() -> None:
    pair = Pair(bp.Config(idle_timeout=300.0, **QUIET))
    s = pair.sandbox
    xid = s.start_exchange(b"POST", b"/", [], 0.0)
    s.send_data(xid, b"a", 100.0)
    assert s.next_deadline() == 400.0
    s.send_data(xid, b"b", 50.0)  # a caller's clock stepped back
    assert s.next_deadline() == 350.0
    (reset,) = s.handle_timer(350.0)
    assert isinstance(reset, bp.ExchangeReset) and reset.code is bp.ErrorCode.IDLE_TIMEOUT


def test_a_new_exchange_s_idle_deadline_is_armed_exactly(lookups: list[int]) -> None:
    pair = Pair(bp.Config(**QUIET))
    s = pair.sandbox
    for n in range(10):
        s.start_exchange(b"GET", b"/", [], float(n))
    lookups.clear()
    assert s.next_deadline() == 300.0
    assert len(lookups) == 1  # the top entry was already right: nothing corrected


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every exchange the registry is asked for, by id (patched before the
    connections are made, so the timers' own look-ups are counted)."""
    asked: list[int] = []
    original = Exchanges.get

    def counting(self: Exchanges, exchange_id: int) -> Exchange | None:
        asked.append(exchange_id)
        return original(self, exchange_id)

    monkeypatch.setattr(Exchanges, "get", counting)
    return asked


def test_the_next_deadline_of_a_thousand_exchanges_looks_at_one(lookups: list[int]) -> None:
    limits = bp.Limits(max_exchanges=2000)
    pair = Pair(bp.Config(limits=limits, **QUIET), bp.Config(limits=limits, **QUIET))
    s = pair.sandbox
    for n in range(1000):
        s.start_exchange(b"GET", b"/", [], float(n))
    lookups.clear()
    assert s.next_deadline() == 300.0  # the first exchange's idle timer
    assert len(lookups) == 1
    lookups.clear()
    (reset,) = s.handle_timer(300.0)  # only the first is due
    assert isinstance(reset, bp.ExchangeReset) and reset.exchange_id == 1
    # Five today (the due one at the top, twice, its opening order and its
    # reset, and the next top); a walk would ask for all thousand.
    assert len(lookups) < 10
    assert s.next_deadline() == 301.0


def test_timer_order_is_the_documented_one() -> None:
    assert list(Timer) == [
        Timer.HANDSHAKE,
        Timer.PEER,
        Timer.GRACE,
        Timer.TOTAL,
        Timer.IDLE,
        Timer.STALL,
        Timer.PING,
    ]
