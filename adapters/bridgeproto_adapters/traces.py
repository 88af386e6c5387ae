"""Trace files: every frame that crosses the bridge, written by ``run --trace``
and read back by ``bridgeproto decode``.

A line is the seconds since the start, ``>`` (to the sandbox) or ``<``
(from it), and the batch in the text armor of docs/protocol.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TextIO

import bridgeproto as bp
from bridgeproto.wire import ArmorDecoder, Frame, FrameDecoder, armor

from .errors import BridgeError

__all__ = ["TraceWriter", "decode"]


class TraceWriter:
    """Records every frame crossing the bridge: time, direction, armored bytes."""

    def __init__(self, file: TextIO) -> None:
        self.file = file
        self.start = time.monotonic()

    def __call__(self, direction: str, data: bytes) -> None:
        self.file.write(f"{time.monotonic() - self.start:.6f} {direction} {armor(data)}")


def decode(path: str) -> Iterator[str]:
    """One line per frame of the trace at ``path``, as they are read; a
    ``BridgeError`` naming the line that is not a trace line."""
    decoders = {">": FrameDecoder(2**32 - 1), "<": FrameDecoder(2**32 - 1)}
    try:
        with open(path) as file:
            lines = file.read().splitlines()
    except OSError as exc:
        raise BridgeError(f"cannot read {path}: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        try:
            stamp, direction, armored = line.split(" ", 2)
            unarmor = ArmorDecoder(2**32 - 1)
            unarmor.receive_data(armored + "\n")
            batch = unarmor.next_batch()
            assert isinstance(batch, bytes) and direction in decoders
            decoder = decoders[direction]
            decoder.receive_data(batch)
            frames = []
            while isinstance(frame := decoder.next_frame(), Frame):
                frames.append(frame)
        except (ValueError, AssertionError, bp.ProtocolError) as exc:
            raise BridgeError(f"{path}:{number} is not a bridgeproto trace line ({exc})") from None
        arrow = "host <- sandbox" if direction == "<" else "host -> sandbox"
        for frame in frames:
            yield f"{float(stamp):10.6f} {arrow} seq={frame.seq:<5} {_describe(frame.record)}"


def _describe(record: bp.Record) -> str:
    if isinstance(record, bp.Data):
        preview = record.data[:24]
        more = "..." if len(record.data) > 24 else ""
        return f"Data(exchange {record.exchange_id}, {len(record.data)} bytes: {preview!r}{more})"
    if isinstance(record, bp.Hello):
        return f"Hello(version {record.version}, {record.role.name.lower()} side, {record.limits})"
    if isinstance(record, (bp.RequestHead, bp.ResponseHead)):
        text = repr(record)
        return text if len(text) < 200 else text[:197] + "..."
    return repr(record)
