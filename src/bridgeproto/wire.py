"""The bytes on the wire: frames, and the text armor for text-only channels.

``Connection`` uses these itself; they are public for tools that handle
frames directly: fuzzers, trace readers, transports that batch frames.
docs/protocol.md is the byte-level spec.
"""

from ._armor import ARMOR_PREFIX, ArmorDecoder, armor
from ._codec import (
    END_OF_INPUT,
    FRAME_OVERHEAD,
    HEADER,
    MAGIC,
    NEED_DATA,
    Frame,
    FrameDecoder,
    FrameType,
    Sentinel,
    encode_frame,
)
from ._records import SEQUENCED

__all__ = [
    "ARMOR_PREFIX",
    "END_OF_INPUT",
    "FRAME_OVERHEAD",
    "NEED_DATA",
    "SEQUENCED",
    "ArmorDecoder",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "Sentinel",
    "armor",
    "encode_frame",
    "frame_types",
]


def frame_types(data: bytes) -> list[int] | None:
    """The type of each frame in ``data``, read from the frame headers alone
    (payloads and CRCs are not checked: for a transport deciding how soon to
    carry bytes, not for trusting them); None unless ``data`` is whole
    frames one after another."""
    types = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < HEADER.size:
            return None
        magic, _, frame_type, length, _ = HEADER.unpack_from(data, pos)
        if magic != MAGIC:
            return None
        types.append(frame_type)
        pos += FRAME_OVERHEAD + length
    return types if pos == len(data) else None
