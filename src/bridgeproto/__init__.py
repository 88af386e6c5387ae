"""bridgeproto: HTTP exchanges between an offline sandbox and its host.

This package is the Sans-IO core: records, the framing codec with its text
armor, and the connection state machine. It does no I/O and never reads a
clock; adapters (the ``bridgeproto_adapters`` package) move the bytes.
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
from ._connection import Config, Connection, Half, SessionState
from ._errors import (
    CorruptFrameError,
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from ._events import (
    CreditAvailable,
    Event,
    ExchangeReset,
    HandshakeComplete,
    LinkBroken,
    SessionClosed,
    SessionFailed,
)
from ._records import (
    PROTOCOL_VERSION,
    SEQUENCED,
    SESSION_ID_BYTES,
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
    Window,
)

__version__ = "0.1.0"

__all__ = [
    "ARMOR_PREFIX",
    "END_OF_INPUT",
    "FRAME_OVERHEAD",
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "SEQUENCED",
    "SESSION_ID_BYTES",
    "Ack",
    "ArmorDecoder",
    "Config",
    "Connection",
    "CorruptFrameError",
    "CreditAvailable",
    "Data",
    "EndOfBody",
    "ErrorCode",
    "Event",
    "ExchangeReset",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "GoAway",
    "Half",
    "HandshakeComplete",
    "Headers",
    "Hello",
    "Limits",
    "LinkBroken",
    "LocalProtocolError",
    "Ping",
    "Pong",
    "ProtocolError",
    "Record",
    "RemoteProtocolError",
    "RequestHead",
    "Reset",
    "ResponseHead",
    "Role",
    "Sentinel",
    "SessionClosed",
    "SessionFailed",
    "SessionState",
    "Window",
    "armor",
    "encode_frame",
]
