"""Text-safe armor: batches of frames as lines of ASCII.

Some control planes carry only text (exec stdout as ``str``, read-file as
``str``). A batch of frame bytes travels as one line::

    BP1:<length, 8 hex>:<crc32 of the raw batch, 8 hex>:<base64 of the batch>\\n

The length is read and checked against the limit before the base64 is
buffered, and the CRC covers the whole batch, so a cut or altered batch is
refused whole and never half-applied. Blank lines between batches are ignored
(text channels like to add a trailing newline); anything else is an error.
"""

from __future__ import annotations

import base64
import binascii

from ._codec import END_OF_INPUT, NEED_DATA, Sentinel
from ._errors import CorruptFrameError, LocalProtocolError, RemoteProtocolError

ARMOR_PREFIX = "BP1:"
_HEAD_CHARS = len(ARMOR_PREFIX) + 8 + 1 + 8 + 1  # "BP1:" + length ":" + crc ":"
_HEX = frozenset("0123456789abcdef")


def armor(batch: bytes) -> str:
    """Armor one batch of frame bytes as a single newline-terminated line."""
    crc = binascii.crc32(batch)
    b64 = base64.b64encode(batch).decode("ascii")
    return f"{ARMOR_PREFIX}{len(batch):08x}:{crc:08x}:{b64}\n"


def _b64_chars(length: int) -> int:
    return 4 * ((length + 2) // 3)


class ArmorDecoder:
    """Incremental decoder of armored text; yields each batch's raw bytes.

    ``receive_data("")`` marks the end of input. After it raises, the decoder
    is spent and raises the same error again.
    """

    def __init__(self, max_batch_bytes: int) -> None:
        self.max_batch_bytes = max_batch_bytes
        self._buffer = ""
        self._pos = 0  # index of the first unread character in _buffer
        self._offset = 0  # text offset of _buffer[0], for error messages
        # Text received but not yet joined to _buffer. Joining only once
        # enough has arrived to make progress keeps decoding linear when a
        # long line comes in many small pieces.
        self._pending: list[str] = []
        self._pending_chars = 0
        self._wanted = 1
        self._ended = False
        self._error: RemoteProtocolError | None = None

    def receive_data(self, text: str) -> None:
        if self._ended:
            raise LocalProtocolError("receive_data after the end of input was signalled")
        if text:
            self._pending.append(text)
            self._pending_chars += len(text)
        else:
            self._ended = True

    def _fill(self) -> None:
        unread = len(self._buffer) - self._pos
        if self._pending and (self._ended or unread + self._pending_chars >= self._wanted):
            self._offset += self._pos
            self._buffer = "".join([self._buffer[self._pos :], *self._pending])
            self._pos = 0
            self._pending.clear()
            self._pending_chars = 0

    def next_batch(self) -> bytes | Sentinel:
        if self._error is not None:
            raise self._error
        try:
            return self._next_batch()
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def _next_batch(self) -> bytes | Sentinel:
        self._fill()
        buf = self._buffer
        while True:  # skip blank lines
            if buf.startswith("\n", self._pos):
                self._pos += 1
            elif buf.startswith("\r\n", self._pos):
                self._pos += 2
            else:
                break
        start = self._pos
        head = buf[start : start + _HEAD_CHARS]
        if head == "\r":
            return self._short(start + 2)
        if not (ARMOR_PREFIX.startswith(head) or head.startswith(ARMOR_PREFIX)):
            raise self._corrupt(f"text {head!r} where an armored batch should start")
        if len(head) < _HEAD_CHARS:
            return self._short(start + _HEAD_CHARS)
        length_hex, crc_hex = head[4:12], head[13:21]
        if head[12] != ":" or head[21] != ":" or not _HEX.issuperset(length_hex + crc_hex):
            raise self._corrupt(f"malformed armor header {head!r}")
        length = int(length_hex, 16)
        if length > self.max_batch_bytes:
            raise self._corrupt(
                f"armored batch declares {length} bytes; the limit is {self.max_batch_bytes}"
            )
        b64_end = start + _HEAD_CHARS + _b64_chars(length)
        newline = b64_end + 1 if buf.startswith("\r", b64_end) else b64_end
        if len(buf) <= newline:
            return self._short(newline + 1)
        if buf[newline] != "\n":
            raise self._corrupt("armored batch does not end where its length says")
        text = buf[start + _HEAD_CHARS : b64_end]
        try:
            batch = base64.b64decode(text, validate=True)
            # Strict, as RFC 4648 section 3.5 allows decoders to be: the padding
            # bits of the last quantum must be zero, so each batch has one spelling.
            canonical = (
                not text or base64.b64encode(base64.b64decode(text[-4:])) == text[-4:].encode()
            )
        except (binascii.Error, ValueError):
            raise self._corrupt("armored batch is not valid base64") from None
        if not canonical:
            raise self._corrupt(
                "armored batch is not canonical base64 (its padding bits are not zero)"
            )
        if len(batch) != length or binascii.crc32(batch) != int(crc_hex, 16):
            raise self._corrupt("armored batch fails its CRC check: damaged in transit")
        self._pos = newline + 1
        self._wanted = 1
        return batch

    def _short(self, wanted_end: int) -> Sentinel:
        if not self._ended:
            self._wanted = wanted_end - self._pos
            return NEED_DATA
        if self._pos == len(self._buffer):
            return END_OF_INPUT
        raise self._corrupt(
            f"input ended inside an armored batch ({len(self._buffer) - self._pos} chars)"
        )

    def _corrupt(self, what: str) -> CorruptFrameError:
        return CorruptFrameError(f"{what} (at text offset {self._offset + self._pos})")
