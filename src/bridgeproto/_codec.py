"""Binary framing: records to bytes and back.

Every frame is::

    magic "BP" | version u8 | type u8 | length u32 | seq u64 | payload | crc32 u32

all integers big-endian, the CRC-32 covering everything before it. The decoder
is incremental: feed bytes with ``receive_data`` and pull frames with
``next_frame`` until it says ``NEED_DATA``. ``receive_data(b"")`` means the
input has ended. A declared length above the limit is refused as soon as the
16-byte header is in, before any payload is buffered. docs/protocol.md is the
byte-level spec.
"""

from __future__ import annotations

import binascii
import enum
import struct
from collections.abc import Callable
from typing import Any, Literal

import attrs

from ._errors import CorruptFrameError, LocalProtocolError, RemoteProtocolError
from ._records import (
    PROTOCOL_VERSION,
    SEQUENCED,
    Ack,
    Data,
    EndOfBody,
    GoAway,
    Headers,
    Hello,
    Limits,
    Ping,
    Pong,
    Record,
    RequestHead,
    Reset,
    ResponseHead,
    Role,
    Route,
    Window,
)

MAGIC = b"BP"
HEADER = struct.Struct(">2sBBIQ")
HEADER_SIZE = HEADER.size  # 16
TRAILER_SIZE = 4
FRAME_OVERHEAD = HEADER_SIZE + TRAILER_SIZE

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_ID_CODE = struct.Struct(">IH")
_ID_ID = struct.Struct(">II")
_STATUS = struct.Struct(">IH")
_HELLO = struct.Struct(">IB16sIIIII")
_ROUTE = struct.Struct(">IH")


class FrameType(enum.IntEnum):
    HELLO = 1
    REQUEST_HEAD = 2
    RESPONSE_HEAD = 3
    DATA = 4
    END_OF_BODY = 5
    RESET = 6
    WINDOW = 7
    ACK = 8
    PING = 9
    PONG = 10
    GOAWAY = 11
    ROUTE = 12


class Sentinel(enum.Enum):
    """Values ``next_frame`` returns when it has no frame to give."""

    NEED_DATA = "NEED_DATA"
    END_OF_INPUT = "END_OF_INPUT"

    def __repr__(self) -> str:
        return self.value


NEED_DATA: Literal[Sentinel.NEED_DATA] = Sentinel.NEED_DATA
END_OF_INPUT: Literal[Sentinel.END_OF_INPUT] = Sentinel.END_OF_INPUT


@attrs.frozen
class Frame:
    """A decoded frame: its sequence number (0 when unsequenced) and record."""

    seq: int
    record: Record


# ---------------------------------------------------------------- encoding


def _blob(value: bytes) -> bytes:
    return _U32.pack(len(value)) + value


def _headers_bytes(headers: Headers) -> bytes:
    parts = [_U32.pack(len(headers))]
    for name, value in headers:
        parts += (_U32.pack(len(name)), name, _U32.pack(len(value)), value)
    return b"".join(parts)


def _encode_hello(record: Hello) -> bytes:
    lim = record.limits
    return _HELLO.pack(
        record.version,
        record.role,
        record.session_id,
        lim.max_frame_size,
        lim.initial_window,
        lim.session_window,
        lim.max_exchanges,
        lim.max_header_bytes,
    )


# Each encoder gives a payload in two parts, fixed fields and a tail of
# bytes as they are (a body chunk, a reason, a ping's payload), so that a
# body is copied once, into the frame.
Parts = tuple[bytes, bytes]


def _encode_request_head(record: RequestHead) -> Parts:
    return (
        _ID_ID.pack(record.exchange_id, record.route)
        + _blob(record.method)
        + _blob(record.target)
        + _headers_bytes(record.headers),
        b"",
    )


def _encode_response_head(record: ResponseHead) -> Parts:
    return (
        _STATUS.pack(record.exchange_id, record.status)
        + _blob(record.reason)
        + _headers_bytes(record.headers),
        b"",
    )


# Record class -> its frame type and payload encoder; ``_DECODERS`` below is
# the mirror image, and a test keeps the two covering the same types.
_ENCODERS: dict[type[Record], tuple[FrameType, Callable[[Any], Parts]]] = {
    Hello: (FrameType.HELLO, lambda r: (_encode_hello(r), b"")),
    RequestHead: (FrameType.REQUEST_HEAD, _encode_request_head),
    ResponseHead: (FrameType.RESPONSE_HEAD, _encode_response_head),
    Data: (FrameType.DATA, lambda r: (_U32.pack(r.exchange_id), r.data)),
    EndOfBody: (FrameType.END_OF_BODY, lambda r: (_U32.pack(r.exchange_id), b"")),
    Reset: (FrameType.RESET, lambda r: (_ID_CODE.pack(r.exchange_id, r.code), r.reason.encode())),
    Window: (FrameType.WINDOW, lambda r: (_ID_ID.pack(r.exchange_id, r.increment), b"")),
    Ack: (FrameType.ACK, lambda r: (_U64.pack(r.seq), b"")),
    Ping: (FrameType.PING, lambda r: (b"", r.payload)),
    Pong: (FrameType.PONG, lambda r: (b"", r.payload)),
    GoAway: (
        FrameType.GOAWAY,
        lambda r: (_ID_CODE.pack(r.last_exchange_id, r.code), r.reason.encode()),
    ),
    Route: (FrameType.ROUTE, lambda r: (_ROUTE.pack(r.route, r.port), b"")),
}


def encode_frame(record: Record, seq: int = 0) -> bytes:
    """Encode one record as a frame.

    Sequenced records (heads, data, ends, resets, windows, goaway) need a
    ``seq`` of at least 1; the others must use 0.
    """
    try:
        frame_type, encode = _ENCODERS[type(record)]
    except KeyError:
        raise LocalProtocolError(f"cannot encode {record!r}: not a bridgeproto record") from None
    sequenced = isinstance(record, SEQUENCED)
    if sequenced and not 1 <= seq < 2**64:
        raise LocalProtocolError(f"{type(record).__name__} needs a sequence number >= 1")
    if not sequenced and seq != 0:
        raise LocalProtocolError(f"{type(record).__name__} is not sequenced; use seq 0")
    fixed, tail = encode(record)
    head = HEADER.pack(MAGIC, PROTOCOL_VERSION, frame_type, len(fixed) + len(tail), seq) + fixed
    crc = binascii.crc32(tail, binascii.crc32(head))
    return b"".join((head, tail, _U32.pack(crc)))


# ---------------------------------------------------------------- decoding


class _Reader:
    """Walks a payload (bytes, or a view of the decoder's buffer, each field
    copied out once); every short read is a ``RemoteProtocolError``."""

    def __init__(self, data: bytes | memoryview, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise RemoteProtocolError(
                f"{self.what} payload ends after {len(self.data)} bytes;"
                f" a field needs {n} bytes at offset {self.pos}"
            )
        chunk = bytes(self.data[self.pos : end])
        self.pos = end
        return chunk

    def unpack(self, fmt: struct.Struct) -> tuple[Any, ...]:
        # (Any: a hello's layout holds the session id's bytes among its numbers)
        if self.pos + fmt.size > len(self.data):
            self.take(fmt.size)  # (raises)
        values = fmt.unpack_from(self.data, self.pos)
        self.pos += fmt.size
        return values

    def blob(self) -> bytes:
        # (``unpack`` and ``take`` inlined: a head has two blobs a header)
        data, start = self.data, self.pos + 4
        if start > len(data):
            self.take(4)  # (raises)
        (n,) = _U32.unpack_from(data, self.pos)
        self.pos = start
        end = start + n
        if end > len(data):
            self.take(n)  # (raises)
        self.pos = end
        return bytes(data[start:end])

    def headers(self) -> Headers:
        (count,) = self.unpack(_U32)
        # Each header needs at least 8 bytes, so a huge count fails fast.
        if count * 8 > len(self.data) - self.pos:
            raise RemoteProtocolError(
                f"{self.what} declares {count} headers but has only"
                f" {len(self.data) - self.pos} bytes left"
            )
        return tuple((self.blob(), self.blob()) for _ in range(count))

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)

    def text(self) -> str:
        try:
            return self.rest().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError(f"{self.what} reason is not UTF-8: {exc}") from None

    def done(self) -> None:
        if self.pos != len(self.data):
            raise RemoteProtocolError(
                f"{self.what} payload has {len(self.data) - self.pos} trailing bytes"
            )


def version_mismatch(peer_version: int) -> str:
    """What both sides say when their wire versions differ."""
    return (
        f"the peer speaks bridgeproto wire version {peer_version} and this side speaks"
        f" version {PROTOCOL_VERSION}; run the same bridgeproto release on both sides"
    )


def _decode_hello(r: _Reader) -> Record:
    # Only the version is frozen across versions: read it first, and nothing
    # else of a hello that is not ours (its layout may have changed).
    (version,) = _U32.unpack_from(r.data, 0) if len(r.data) >= 4 else (PROTOCOL_VERSION,)
    if version != PROTOCOL_VERSION:
        raise RemoteProtocolError(version_mismatch(version))
    version, role, session_id, *limits = r.unpack(_HELLO)
    if role not in (Role.SANDBOX, Role.HOST):
        raise RemoteProtocolError(f"HELLO names unknown role {role}")
    return Hello(version, Role(role), bytes(session_id), Limits(*limits))


def _decode_request_head(r: _Reader) -> Record:
    exchange_id, route = r.unpack(_ID_ID)
    return RequestHead(exchange_id, r.blob(), r.blob(), r.headers(), route=route)


def _decode_response_head(r: _Reader) -> Record:
    exchange_id, status = r.unpack(_STATUS)
    return ResponseHead(exchange_id, status, r.blob(), r.headers())


def _decode_data(r: _Reader) -> Record:
    (exchange_id,) = r.unpack(_U32)
    return Data(exchange_id, r.rest())


def _decode_end(r: _Reader) -> Record:
    return EndOfBody(*r.unpack(_U32))


def _decode_reset(r: _Reader) -> Record:
    exchange_id, code = r.unpack(_ID_CODE)
    return Reset(exchange_id, code, r.text())


def _decode_window(r: _Reader) -> Record:
    return Window(*r.unpack(_ID_ID))


def _decode_ack(r: _Reader) -> Record:
    return Ack(*r.unpack(_U64))


def _decode_goaway(r: _Reader) -> Record:
    last_id, code = r.unpack(_ID_CODE)
    return GoAway(last_id, code, r.text())


_DECODERS: dict[FrameType, Callable[[_Reader], Record]] = {
    FrameType.HELLO: _decode_hello,
    FrameType.REQUEST_HEAD: _decode_request_head,
    FrameType.RESPONSE_HEAD: _decode_response_head,
    FrameType.DATA: _decode_data,
    FrameType.END_OF_BODY: _decode_end,
    FrameType.RESET: _decode_reset,
    FrameType.WINDOW: _decode_window,
    FrameType.ACK: _decode_ack,
    FrameType.PING: lambda r: Ping(r.rest()),
    FrameType.PONG: lambda r: Pong(r.rest()),
    FrameType.GOAWAY: _decode_goaway,
    FrameType.ROUTE: lambda r: Route(*r.unpack(_ROUTE)),
}


def _by_type_byte() -> dict[int, tuple[str, Callable[[_Reader], Record], bool]]:
    """Type byte -> the type's name, its decoder, whether it is sequenced:
    one look-up a frame."""
    sequenced = {frame_type for cls, (frame_type, _) in _ENCODERS.items() if cls in SEQUENCED}
    return {int(t): (t.name, decode, t in sequenced) for t, decode in _DECODERS.items()}


_BY_TYPE_BYTE = _by_type_byte()


def decode_payload(type_byte: int, version: int, seq: int, payload: bytes | memoryview) -> Frame:
    """Turn a frame whose CRC has checked out into a ``Frame``."""
    # The version first (a hello is read at any version, so that a mismatch
    # is reported with both versions named), then the type.
    if version != PROTOCOL_VERSION and type_byte != FrameType.HELLO:
        raise RemoteProtocolError(
            f"a frame of type {type_byte} has wire version {version}; this end speaks"
            f" version {PROTOCOL_VERSION}"
        )
    found = _BY_TYPE_BYTE.get(type_byte)
    if found is None:
        raise RemoteProtocolError(f"unknown frame type {type_byte}")
    name, decode, sequenced = found
    reader = _Reader(payload, name)
    try:
        record = decode(reader)
    except LocalProtocolError as exc:
        raise RemoteProtocolError(f"invalid {name} record: {exc}") from None
    reader.done()
    if sequenced and seq == 0:
        raise RemoteProtocolError(f"{name} frame must carry a sequence number")
    if not sequenced and seq != 0:
        raise RemoteProtocolError(f"{name} frame must not carry a sequence number")
    return Frame(seq, record)


class FrameDecoder:
    """Incremental frame decoder with a capped, linear receive buffer.

    The bytes given are kept as they are and frames decoded from them in
    place; only a frame cut between two pieces is copied, to be completed.
    After it raises, the decoder is spent and raises the same error again.
    """

    def __init__(self, max_frame_size: int) -> None:
        self.max_frame_size = max_frame_size
        self._buffer: bytes | bytearray = b""
        self._start = 0  # where in ``_buffer`` the undecoded bytes begin
        self._offset = 0  # stream offset of the first undecoded byte
        self._ended = False
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer) - self._start

    def receive_data(self, data: bytes) -> None:
        """Add bytes; ``b""`` marks the end of input."""
        if self._ended:
            raise LocalProtocolError("receive_data after the end of input was signalled")
        if not data:
            self._ended = True
        elif self._start == len(self._buffer):
            # Nothing held: decode from these (a copy of a caller's buffer,
            # which it may reuse, but bytes as they are).
            self._buffer, self._start = data if type(data) is bytes else bytes(data), 0
        else:
            held = self._buffer
            if isinstance(held, bytes):
                held = bytearray(memoryview(held)[self._start :])  # the cut frame only
            else:
                del held[: self._start]
            held += data
            self._buffer, self._start = held, 0

    def next_frame(self) -> Frame | Sentinel:
        if self._error is not None:
            raise self._error
        try:
            return self._next_frame()
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def _next_frame(self) -> Frame | Sentinel:
        buf, start = self._buffer, self._start
        held = len(buf) - start
        if held < HEADER_SIZE:
            if buf[start : start + 2] != MAGIC[:held]:
                raise self._bad_magic()
            return self._short(HEADER_SIZE)
        magic, version, type_byte, length, seq = HEADER.unpack_from(buf, start)
        if magic != MAGIC:
            raise self._bad_magic()
        if length > self.max_frame_size:
            raise CorruptFrameError(
                f"frame at stream offset {self._offset} declares a {length}-byte payload;"
                f" the limit is {self.max_frame_size}"
            )
        total = HEADER_SIZE + length + TRAILER_SIZE
        if held < total:
            return self._short(total)
        end = start + total - TRAILER_SIZE
        with memoryview(buf) as view, view[start + HEADER_SIZE : end] as payload:
            (crc,) = _U32.unpack_from(buf, end)
            if binascii.crc32(view[start:end]) != crc:
                raise CorruptFrameError(
                    f"CRC mismatch in the frame at stream offset {self._offset}:"
                    " the frame was damaged in transit"
                )
            try:  # (each field is copied out of the buffer once)
                frame = decode_payload(type_byte, version, seq, payload)
            except RemoteProtocolError as exc:
                raise RemoteProtocolError(
                    f"{exc} (frame at stream offset {self._offset})"
                ) from None
        self._offset += total
        if held == total:
            self._buffer, self._start = b"", 0  # let go of what was read
        else:
            self._start = start + total
        return frame

    def _bad_magic(self) -> CorruptFrameError:
        found = bytes(self._buffer[self._start : self._start + 2])
        return CorruptFrameError(
            f"bad magic {found!r} at stream offset {self._offset}:"
            " the bytes are not a bridgeproto frame"
        )

    def _short(self, needed: int) -> Sentinel:
        if not self._ended:
            return NEED_DATA
        if not self.buffered:
            return END_OF_INPUT
        raise CorruptFrameError(
            f"input ended inside the frame at stream offset {self._offset}:"
            f" {self.buffered} of at least {needed} bytes arrived"
        )
