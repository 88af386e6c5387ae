"""The record vocabulary: one frozen class per thing the wire can say.

Records validate themselves on construction, so a record that exists is a
record that can be encoded. Invalid arguments raise ``LocalProtocolError``;
the decoder turns that into ``RemoteProtocolError`` when the bad values came
from the peer.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from typing import Any

import attrs

from ._errors import ErrorCode, LocalProtocolError

PROTOCOL_VERSION = 2

MAX_EXCHANGE_ID = 2**32 - 1
MAX_ROUTE = 2**32 - 1
MAX_PORT = 65535
MAX_WINDOW = 2**32 - 1
MAX_SEQ = 2**64 - 1
MAX_PING_PAYLOAD = 64
MAX_REASON_BYTES = 1024
SESSION_ID_BYTES = 16

Headers = tuple[tuple[bytes, bytes], ...]


class Role(enum.IntEnum):
    """Which end of the bridge a connection is.

    Either side originates exchanges: the sandbox side with odd ids (outward
    routes, to host services), the host side with even ids (inward routes, to
    ports inside the sandbox that it has declared with ``Route``).
    """

    SANDBOX = 1
    HOST = 2

    @property
    def peer(self) -> Role:
        return Role.HOST if self is Role.SANDBOX else Role.SANDBOX


# RFC 9110 token characters, for methods and header names (the HTTP layer
# builds its own head grammar from them).
TOKEN_CHARS = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
TOKEN = re.compile(TOKEN_CHARS + rb"\Z")
_BAD_VALUE_BYTES = re.compile(rb"[\x00\r\n]")
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")


def _invalid(msg: str) -> LocalProtocolError:
    return LocalProtocolError(msg)


def _check_uint(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _invalid(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise _invalid(f"{name} {value} is out of range [{low}, {high}]")


def _exchange_id(_: Any, attribute: attrs.Attribute[int], value: int) -> None:
    _check_uint(attribute.name, value, 1, MAX_EXCHANGE_ID)


def _uint32(_: Any, attribute: attrs.Attribute[int], value: int) -> None:
    _check_uint(attribute.name, value, 0, 2**32 - 1)


def _bytes(_: Any, attribute: attrs.Attribute[bytes], value: bytes) -> None:
    if not isinstance(value, bytes):
        raise _invalid(f"{attribute.name} must be bytes, got {type(value).__name__}")


def _reason(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str):
        raise _invalid(f"{attribute.name} must be str, got {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise _invalid(f"{attribute.name} cannot be encoded as UTF-8") from None
    if size > MAX_REASON_BYTES:
        raise _invalid(f"{attribute.name} is longer than {MAX_REASON_BYTES} bytes")


def clip_reason(reason: str) -> str:
    """Reasons a side passes on may quote the peer; keep them within the limit."""
    return reason if len(reason) <= 300 else reason[:297] + "..."


def _code(value: int) -> ErrorCode:
    try:
        return ErrorCode(value)
    except ValueError:
        raise _invalid(f"unknown error code {value!r}") from None


def _headers(value: Iterable[tuple[bytes, bytes]]) -> Headers:
    """Normalise to a tuple of (name, value) byte pairs, checking each."""
    result = []
    for item in value:
        try:
            name, val = item
        except (TypeError, ValueError):
            raise _invalid(f"a header must be a (name, value) pair, got {item!r}") from None
        if not isinstance(name, bytes) or not isinstance(val, bytes):
            raise _invalid(f"header name and value must be bytes, got {item!r}")
        if not TOKEN.match(name):
            raise _invalid(f"header name {name!r} is not a token")
        if _BAD_VALUE_BYTES.search(val):
            raise _invalid(f"header {name!r} has a value containing CR, LF or NUL")
        result.append((name, val))
    return tuple(result)


def headers_size(headers: Iterable[tuple[bytes, bytes]]) -> int:
    """Bytes a header list counts against ``max_header_bytes``: its encoded size."""
    return sum(len(n) + len(v) + 8 for n, v in headers)


def request_head_size(method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]]) -> int:
    """The size of a request head as docs/protocol.md defines it, the one
    measure of ``max_header_bytes`` (the agent's side checks it too, so it
    refuses exactly the heads the session would)."""
    return 8 + len(method) + len(target) + headers_size(headers)


@attrs.frozen
class Limits:
    """What one side accepts; sent to the peer in ``Hello``.

    ``max_frame_size`` bounds a frame's payload, ``initial_window`` is the body
    credit granted for each exchange, ``session_window`` the credit shared by
    all exchanges, ``max_exchanges`` the exchanges open at once and
    ``max_header_bytes`` the size of one head (method, target and headers).
    """

    max_frame_size: int = attrs.field(default=1 << 20, validator=_uint32)
    initial_window: int = attrs.field(default=4 << 20, validator=_uint32)
    session_window: int = attrs.field(default=16 << 20, validator=_uint32)
    max_exchanges: int = attrs.field(default=256, validator=_uint32)
    max_header_bytes: int = attrs.field(default=64 << 10, validator=_uint32)

    def __attrs_post_init__(self) -> None:
        if self.max_frame_size < 1024:
            raise _invalid(f"max_frame_size {self.max_frame_size} is below the minimum of 1024")
        if self.max_header_bytes + 1024 > self.max_frame_size:
            raise _invalid(
                f"max_header_bytes {self.max_header_bytes} must leave 1024 bytes of room"
                f" in max_frame_size {self.max_frame_size}"
            )
        if self.initial_window < 1 or self.session_window < 1 or self.max_exchanges < 1:
            raise _invalid("initial_window, session_window and max_exchanges must be at least 1")


@attrs.frozen
class Hello:
    """First record on every link: who we are and what we accept.

    Sent again after a link is reopened; the same ``session_id`` resumes the
    session where it stopped.
    """

    version: int = attrs.field(validator=_uint32)
    role: Role = attrs.field(converter=Role)
    session_id: bytes = attrs.field(validator=_bytes)
    limits: Limits = attrs.field(validator=attrs.validators.instance_of(Limits))

    @session_id.validator
    def _check_session_id(self, _: attrs.Attribute[bytes], value: bytes) -> None:
        if len(value) != SESSION_ID_BYTES:
            raise _invalid(f"session_id must be {SESSION_ID_BYTES} bytes, got {len(value)}")


@attrs.frozen
class RequestHead:
    """Opens an exchange: the client's request line and headers, and the
    route it takes (outward: which host service, 0 being the default one;
    inward: a route the host side declared)."""

    exchange_id: int = attrs.field(validator=_exchange_id)
    method: bytes = attrs.field(validator=_bytes)
    target: bytes = attrs.field(validator=_bytes)
    headers: Headers = attrs.field(default=(), converter=_headers)
    route: int = attrs.field(default=0, validator=_uint32, kw_only=True)

    @method.validator
    def _check_method(self, _: attrs.Attribute[bytes], value: bytes) -> None:
        if not TOKEN.match(value):
            raise _invalid(f"method {value!r} is not a token")

    @target.validator
    def _check_target(self, _: attrs.Attribute[bytes], value: bytes) -> None:
        if not _TARGET.match(value):
            raise _invalid(f"target {value!r} must be non-empty visible ASCII")

    @property
    def head_size(self) -> int:
        return request_head_size(self.method, self.target, self.headers)


@attrs.frozen
class ResponseHead:
    """The upstream's status line and headers for an exchange."""

    exchange_id: int = attrs.field(validator=_exchange_id)
    status: int = attrs.field()
    reason: bytes = attrs.field(default=b"", validator=_bytes)
    headers: Headers = attrs.field(default=(), converter=_headers)

    @status.validator
    def _check_status(self, _: attrs.Attribute[int], value: int) -> None:
        _check_uint("status", value, 100, 599)

    @reason.validator
    def _check_reason(self, _: attrs.Attribute[bytes], value: bytes) -> None:
        if _BAD_VALUE_BYTES.search(value):
            raise _invalid("reason phrase contains CR, LF or NUL")

    @property
    def head_size(self) -> int:
        return 4 + len(self.reason) + headers_size(self.headers)


@attrs.frozen
class Route:
    """The host side declares an inward route: exchanges it opens with this
    route number go to ``127.0.0.1:port`` inside the sandbox, and nowhere else."""

    route: int = attrs.field()
    port: int = attrs.field()

    @route.validator
    def _check_route(self, _: attrs.Attribute[int], value: int) -> None:
        _check_uint("route", value, 1, MAX_ROUTE)

    @port.validator
    def _check_port(self, _: attrs.Attribute[int], value: int) -> None:
        _check_uint("port", value, 1, MAX_PORT)


@attrs.frozen
class Data:
    """A chunk of body bytes, request or response by who sent it."""

    exchange_id: int = attrs.field(validator=_exchange_id)
    data: bytes = attrs.field(validator=_bytes)


@attrs.frozen
class EndOfBody:
    """The sender's body for this exchange is complete."""

    exchange_id: int = attrs.field(validator=_exchange_id)


@attrs.frozen
class Reset:
    """Abandons one exchange, and only that one."""

    exchange_id: int = attrs.field(validator=_exchange_id)
    code: ErrorCode = attrs.field(converter=_code)
    reason: str = attrs.field(default="", validator=_reason)


@attrs.frozen
class Window:
    """Grants ``increment`` more body bytes; exchange id 0 means session-wide."""

    exchange_id: int = attrs.field(validator=_uint32)
    increment: int = attrs.field()

    @increment.validator
    def _check_increment(self, _: attrs.Attribute[int], value: int) -> None:
        _check_uint("increment", value, 1, MAX_WINDOW)


@attrs.frozen
class Ack:
    """Everything up to and including ``seq`` has been received."""

    seq: int = attrs.field()

    @seq.validator
    def _check_seq(self, _: attrs.Attribute[int], value: int) -> None:
        _check_uint("seq", value, 0, MAX_SEQ)


def _ping_payload(_: Any, attribute: attrs.Attribute[bytes], value: bytes) -> None:
    _bytes(_, attribute, value)
    if len(value) > MAX_PING_PAYLOAD:
        raise _invalid(f"ping payload is longer than {MAX_PING_PAYLOAD} bytes")


@attrs.frozen
class Ping:
    """Asks the peer to prove it is alive; answered with a ``Pong``."""

    payload: bytes = attrs.field(default=b"", validator=_ping_payload)


@attrs.frozen
class Pong:
    """Answer to a ``Ping``, echoing its payload."""

    payload: bytes = attrs.field(default=b"", validator=_ping_payload)


@attrs.frozen
class GoAway:
    """The sender takes no exchange above ``last_exchange_id`` and is draining."""

    last_exchange_id: int = attrs.field(validator=_uint32)
    code: ErrorCode = attrs.field(default=ErrorCode.NO_ERROR, converter=_code)
    reason: str = attrs.field(default="", validator=_reason)


Record = (
    Hello
    | RequestHead
    | ResponseHead
    | Data
    | EndOfBody
    | Reset
    | Window
    | Ack
    | Ping
    | Pong
    | GoAway
    | Route
)

# Records that take part in sequencing and exactly-once delivery. The others
# belong to one link: a hello or an ack means nothing on the next link.
SEQUENCED = (RequestHead, ResponseHead, Data, EndOfBody, Reset, Window, GoAway, Route)
