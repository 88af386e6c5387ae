"""bridgeproto: HTTP exchanges between an offline sandbox and its host.

This package is the Sans-IO core. It does no I/O and never reads a clock;
adapters (the ``bridgeproto_adapters`` package) move the bytes. Its public
face has three layers:

* ``bridgeproto``: the protocol. ``Connection`` and its ``Config``, the
  records the wire carries, the events a connection reports, the errors.
* ``bridgeproto.wire``: the framing codec and the text armor, for tools that
  read or write frames themselves (fuzzers, trace readers, other transports).
* ``bridgeproto.http``: the translation between HTTP/1.1 and exchanges, the
  only layer that needs h11.
"""

from ._connection import Config, Connection
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
    Route,
    Window,
)
from ._state import Half, LinkState, SessionState

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSION",
    "SESSION_ID_BYTES",
    "Ack",
    "Config",
    "Connection",
    "CorruptFrameError",
    "CreditAvailable",
    "Data",
    "EndOfBody",
    "ErrorCode",
    "Event",
    "ExchangeReset",
    "GoAway",
    "Half",
    "HandshakeComplete",
    "Headers",
    "Hello",
    "Limits",
    "LinkBroken",
    "LinkState",
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
    "Route",
    "SessionClosed",
    "SessionFailed",
    "SessionState",
    "Window",
]
