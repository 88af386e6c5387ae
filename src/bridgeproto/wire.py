"""The bytes on the wire: frames, and the text armor for text-only channels.

``Connection`` uses these itself; they are public for tools that handle
frames directly: fuzzers, trace readers, transports that batch frames.
docs/protocol.md is the byte-level spec.
"""

from ._armor import ARMOR_PREFIX, ArmorDecoder, armor
from ._codec import (
    END_OF_INPUT,
    FRAME_OVERHEAD,
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
]
