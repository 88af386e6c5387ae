"""The text armor: batches survive text-only channels whole or not at all."""

from __future__ import annotations

import base64
import binascii
import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

import bridgeproto as bp
from bridgeproto.wire import (
    END_OF_INPUT,
    NEED_DATA,
    ArmorDecoder,
    Frame,
    FrameDecoder,
    armor,
    encode_frame,
)
from strategies import frames


def unarmor_all(text: str, *, chunk: int = 0, limit: int = 1 << 20) -> list[bytes]:
    decoder = ArmorDecoder(limit)
    out: list[bytes] = []
    step = chunk or max(len(text), 1)
    for piece in [*(text[i : i + step] for i in range(0, len(text), step)), ""]:
        decoder.receive_data(piece)
        while isinstance(batch := decoder.next_batch(), bytes):
            out.append(batch)
    return out


def test_armor_line_layout() -> None:
    batch = b"\x00\x01frames"
    line = armor(batch)
    b64 = base64.b64encode(batch).decode()
    assert line == f"BP1:00000008:{binascii.crc32(batch):08x}:{b64}\n"
    assert line.isascii()


@pytest.mark.parametrize("chunk", [0, 1, 5])
def test_batches_whole_bytewise_and_with_crlf_and_blank_lines(chunk: int) -> None:
    batches = [b"", b"a", b"frame bytes" * 50]
    text = "\n" + armor(batches[0]) + "\r\n" + armor(batches[1]).replace("\n", "\r\n")
    text += armor(batches[2]) + "\n\n"
    assert unarmor_all(text, chunk=chunk) == batches


def test_trailing_text_after_a_batch_is_an_error_after_the_batch() -> None:
    decoder = ArmorDecoder(1024)
    decoder.receive_data(armor(b"ok") + "hello\n")
    assert decoder.next_batch() == b"ok"
    with pytest.raises(bp.CorruptFrameError, match="'hello\\\\n' where an armored batch"):
        decoder.next_batch()
    with pytest.raises(bp.CorruptFrameError):  # and it stays failed
        decoder.next_batch()


def test_need_data_until_the_line_is_complete() -> None:
    line = armor(b"x" * 100)
    decoder = ArmorDecoder(1024)
    decoder.receive_data(line[:-1])
    assert decoder.next_batch() is NEED_DATA
    decoder.receive_data(line[-1:])
    assert decoder.next_batch() == b"x" * 100
    assert decoder.next_batch() is NEED_DATA
    decoder.receive_data("")
    assert decoder.next_batch() is END_OF_INPUT
    with pytest.raises(bp.LocalProtocolError):
        decoder.receive_data("x")


def test_declared_length_is_checked_before_the_body_arrives() -> None:
    decoder = ArmorDecoder(1000)
    decoder.receive_data("BP1:00100000:00000000:")
    with pytest.raises(bp.CorruptFrameError, match="declares 1048576 bytes; the limit is 1000"):
        decoder.next_batch()


def _flip(line: str, index: int) -> str:
    swapped = "B" if line[index] != "B" else "C"
    return line[:index] + swapped + line[index + 1 :]


GOOD = armor(b"some frame bytes")
BAD_TEXT = [
    ("altered body", _flip(GOOD, 30), "fails its CRC check"),
    ("altered crc", GOOD[:13] + "00000000" + GOOD[21:], "fails its CRC check"),
    ("truncated", GOOD[:-5], "input ended inside an armored batch"),
    ("too long", GOOD[:-1] + "AAAA\n", "does not end where its length says"),
    ("not base64", GOOD[:22] + "*" * (len(GOOD) - 23) + "\n", "not valid base64"),
    ("bad header", "BP1:0000000g:00000000:\n", "malformed armor header"),
    ("wrong prefix", "BP2:" + GOOD[4:], "where an armored batch should start"),
    ("lone cr", GOOD.replace("\n", "\rX"), "does not end where its length says"),
    ("non-ascii", GOOD[:22] + "é" * (len(GOOD) - 23) + "\n", "not valid base64"),
]


@pytest.mark.parametrize(("name", "text", "message"), BAD_TEXT, ids=[b[0] for b in BAD_TEXT])
@pytest.mark.parametrize("chunk", [0, 1])
def test_damaged_batches_are_refused_whole(name: str, text: str, message: str, chunk: int) -> None:
    got: list[bytes] = []
    decoder = ArmorDecoder(1024)
    pieces = [GOOD + text] if chunk == 0 else list(GOOD + text)
    with pytest.raises(bp.CorruptFrameError, match=message):
        for piece in [*pieces, ""]:
            decoder.receive_data(piece)
            while isinstance(batch := decoder.next_batch(), bytes):
                got.append(batch)
    assert got == [b"some frame bytes"]  # the good batch before it is kept, nothing after


@given(st.lists(st.lists(frames(), max_size=3), max_size=4), st.integers(1, 50))
def test_round_trip_of_framed_batches(batches: list[list[Frame]], chunk: int) -> None:
    raw = [b"".join(encode_frame(f.record, f.seq) for f in batch) for batch in batches]
    text = "".join(armor(b) for b in raw)
    assert unarmor_all(text, limit=2**32 - 1) == raw
    assert unarmor_all(text, chunk=chunk, limit=2**32 - 1) == raw
    # and the frames inside decode back to the same records
    decoder = FrameDecoder(2**32 - 1)
    for batch in unarmor_all(text, limit=2**32 - 1):
        if batch:
            decoder.receive_data(batch)
    decoded = []
    while isinstance(item := decoder.next_frame(), Frame):
        decoded.append(item)
    assert decoded == [f for batch in batches for f in batch]


@given(st.text(max_size=300), st.integers(0, 30))
def test_any_text_raises_only_remote_protocol_error(text: str, chunk: int) -> None:
    with contextlib.suppress(bp.RemoteProtocolError):
        unarmor_all(text, chunk=chunk, limit=256)


@given(st.binary(max_size=200), st.data())
def test_any_damage_to_an_armored_batch_is_detected(batch: bytes, data: st.DataObject) -> None:
    line = armor(batch)
    index = data.draw(st.integers(0, len(line) - 2))  # any character but the newline
    replacement = data.draw(st.characters(codec="ascii").filter(lambda c: c != line[index]))
    damaged = line[:index] + replacement + line[index + 1 :]
    try:
        result = unarmor_all(damaged)
    except bp.RemoteProtocolError:
        return
    # A base64 alphabet has spare bits in its last character; changing only
    # those leaves the batch intact, which is the one acceptable outcome.
    assert result == [batch]


def test_base64_must_be_canonical() -> None:
    """Padding bits must be zero: "QR==" decodes to b"A" in lenient decoders, but
    only "QQ==" spells it, as strict decoders (and this one) insist."""
    crc = f"{binascii.crc32(b'A'):08x}"
    good, sloppy = f"BP1:00000001:{crc}:QQ==\n", f"BP1:00000001:{crc}:QR==\n"
    assert armor(b"A") == good
    decoder = ArmorDecoder(1024)
    decoder.receive_data(good)
    assert decoder.next_batch() == b"A"
    decoder = ArmorDecoder(1024)
    decoder.receive_data(sloppy)
    with pytest.raises(bp.RemoteProtocolError, match="not canonical base64"):
        decoder.next_batch()
