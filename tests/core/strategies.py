"""Hypothesis strategies for records, shared by the codec and fuzz tests."""

from __future__ import annotations

from hypothesis import strategies as st

import bridgeproto as bp
from bridgeproto.wire import SEQUENCED, Frame

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12).map(str.encode)
values = st.binary(max_size=40).filter(lambda b: not any(c in b for c in b"\r\n\x00"))
headers = st.lists(st.tuples(tokens, values), max_size=5).map(tuple)
exchange_ids = st.integers(1, 2**32 - 1)
targets = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30
).map(str.encode)
reasons = st.text(max_size=40)  # hypothesis leaves out lone surrogates
codes = st.sampled_from(list(bp.ErrorCode))
limits = st.builds(
    bp.Limits,
    max_frame_size=st.integers(70 * 1024, 2**32 - 1),
    initial_window=st.integers(1, 2**32 - 1),
    session_window=st.integers(1, 2**32 - 1),
    max_exchanges=st.integers(1, 2**32 - 1),
    max_header_bytes=st.integers(0, 64 * 1024),
)

records: st.SearchStrategy[bp.Record] = st.one_of(
    st.builds(
        bp.Hello,
        version=st.just(bp.PROTOCOL_VERSION),  # a hello of another version is refused
        role=st.sampled_from(list(bp.Role)),
        session_id=st.binary(min_size=16, max_size=16),
        limits=limits,
    ),
    st.builds(
        bp.RequestHead, exchange_ids, tokens, targets, headers, route=st.integers(0, 2**32 - 1)
    ),
    st.builds(
        bp.ResponseHead,
        exchange_ids,
        st.integers(100, 599),
        values,
        headers,
    ),
    st.builds(bp.Data, exchange_ids, st.binary(max_size=200)),
    st.builds(bp.EndOfBody, exchange_ids),
    st.builds(bp.Reset, exchange_ids, codes, reasons),
    st.builds(bp.Window, st.integers(0, 2**32 - 1), st.integers(1, 2**32 - 1)),
    st.builds(bp.Ack, st.integers(0, 2**64 - 1)),
    st.builds(bp.Ping, st.binary(max_size=64)),
    st.builds(bp.Pong, st.binary(max_size=64)),
    st.builds(bp.GoAway, st.integers(0, 2**32 - 1), codes, reasons),
    st.builds(bp.Route, st.integers(1, 2**32 - 1), st.integers(1, 65535)),
)


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    record = draw(records)
    seq = draw(st.integers(1, 2**64 - 1)) if isinstance(record, SEQUENCED) else 0
    return Frame(seq, record)
