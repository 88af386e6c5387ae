"""HTTP/1.1 on both ends of the bridge, on h11, without I/O.

``AgentConnection`` is the sandbox side's view of one agent connection: it
parses the agent's requests into what the bridge carries, refuses what the
bridge must not carry (answering in the sandbox, without touching the host),
and renders the host's answers back into HTTP/1.1 bytes.

``upstream_request`` is the host side's view: it checks a request head
again (the sandbox is not trusted), cleans its headers, adds the upstream's
Host and credentials, and builds the h11 request for the upstream.

Header hygiene is the same both ways: hop-by-hop headers never cross, except
that the body framing (Content-Length, or Transfer-Encoding: chunked when the
length is unknown) is carried as it is, so the far side frames the body the
same way, and that a request's ``Upgrade`` (with ``Connection: upgrade``)
crosses, as does the 101 that accepts it.

**Upgrades.** An agent's request to switch protocols (WebSocket, or any
token) crosses like any other request, under the same allowlist and header
policy; it may not have a body. The upstream decides: a 101 switches the
agent's connection, and from then on the exchange's two bodies carry the new
protocol's bytes each way (the end of a body is a half-close); any other
answer is passed on as usual.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

import attrs
import h11

from ._errors import ErrorCode
from ._records import TOKEN, TOKEN_CHARS, Headers, RequestHead, ResponseHead, request_head_size

_H11_MOVED = (
    "h11 {version} no longer keeps the size of the chunk it reads where bridgeproto.http"
    " reads it (h11._readers.ChunkedReader._bytes_in_chunk, through h11.Connection._reader),"
    " so chunks past the body limit could no longer be refused before their bytes come;"
    " install h11 0.14 to 0.16, or a bridgeproto made for this h11"
)
_H11_BUFFER_MOVED = (
    "h11 {version} no longer keeps its receive buffer where bridgeproto.http replaces it"
    " (h11.Connection._receive_buffer, an h11._receivebuffer.ReceiveBuffer over a bytearray"
    " _data); install h11 0.14 to 0.16, or a bridgeproto made for this h11"
)
try:
    from h11._readers import ChunkedReader as _ChunkedReader
except ImportError:
    raise ImportError(_H11_MOVED.format(version=getattr(h11, "__version__", "?"))) from None
try:
    from h11._receivebuffer import ReceiveBuffer as _ReceiveBuffer
except ImportError:
    raise ImportError(_H11_BUFFER_MOVED.format(version=getattr(h11, "__version__", "?"))) from None


def check_h11() -> None:
    """The two private parts of h11 the HTTP layer uses: the size of the
    chunk being read (h11 has no public way to tell it before the chunk's
    bytes come), and the receive buffer (``h11_connection``). Checked when
    this module loads, so an h11 that moved them stops the import with what
    to do, rather than turning a check off in silence;
    tests/adapters/test_dependencies.py pins them too."""
    version = getattr(h11, "__version__", "?")
    conn = h11.Connection(h11.SERVER)
    if not isinstance(getattr(_ChunkedReader(), "_bytes_in_chunk", None), int) or not hasattr(
        conn, "_reader"
    ):
        raise ImportError(_H11_MOVED.format(version=version))
    buffer = getattr(conn, "_receive_buffer", None)
    if not isinstance(buffer, _ReceiveBuffer) or not all(
        hasattr(buffer, name) for name in ("_data", "_next_line_search", "_multiple_lines_search")
    ):
        raise ImportError(_H11_BUFFER_MOVED.format(version=version))


check_h11()


class _BodyPassingBuffer(_ReceiveBuffer):
    """h11's receive buffer, except that bytes arriving in an empty buffer
    are kept as they came, and handed over as they are when a body takes
    them all. Anything else h11 asks of it (a head's lines, a chunk's size
    line, part of the bytes) first makes them h11's own bytearray."""

    def __iadd__(self, data: bytes | bytearray) -> _BodyPassingBuffer:
        if not self._data and type(data) is bytes:
            self._data = data  # type: ignore[assignment]  # (bytes until h11 needs more)
        else:
            self._own()
            self._data += data
        return self

    def _own(self) -> None:
        data: bytes | bytearray = self._data
        if type(data) is bytes:
            self._data = bytearray(data)

    def maybe_extract_at_most(self, count: int) -> bytearray | None:
        data = self._data
        if not data or len(data) > count:
            self._own()
            return super().maybe_extract_at_most(count)
        self._data = bytearray()  # (what h11's own extraction resets, reset too)
        self._next_line_search = self._multiple_lines_search = 0
        return data

    def maybe_extract_next_line(self) -> bytearray | None:
        self._own()
        return super().maybe_extract_next_line()

    def maybe_extract_lines(self) -> list[bytearray] | None:
        self._own()
        return super().maybe_extract_lines()


def h11_connection(
    role: type[h11.CLIENT] | type[h11.SERVER],
    max_incomplete_event_size: int = 16 * 1024,  # (h11's own default)
) -> h11.Connection:
    """An h11 connection that hands body bytes over as they were read when
    they are all its buffer holds (h11 itself copies them in once and out
    twice: a bulk upload spent a sixth of the sandbox side's CPU in those
    copies)."""
    conn = h11.Connection(role, max_incomplete_event_size=max_incomplete_event_size)
    conn._receive_buffer = _BodyPassingBuffer()
    return conn


BRIDGE_ERROR_HEADER = b"x-bridge-error"
MAX_CHUNK_SIZE = 1 << 63
VIA = (b"via", b"1.1 bridgeproto")

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"expect",  # the sandbox side answers 100-continue itself
    }
)
# Framing is never hop-by-hop: ``Connection: content-length`` must not strip
# the header that says where the body ends.
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
# Headers upstreams behind proxies trust to say who is asking, for which
# host, path or method; an agent must not choose them
# (``Upstream.pass_routing_headers`` allows). docs/adapters.md lists them.
ROUTING_HEADERS = frozenset({
    b"forwarded", b"x-real-ip", b"x-original-url", b"x-rewrite-url", b"x-host",
    b"x-original-host", b"true-client-ip", b"x-client-ip", b"cf-connecting-ip",
    b"fastly-client-ip", b"x-cluster-client-ip", b"x-http-method-override",
    b"x-http-method", b"x-method-override",
})  # fmt: skip
ROUTING_PREFIXES = (b"x-forwarded-", b"x-envoy-")
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})?")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
# A path with nothing for an upstream to decode or normalise: no '%', no
# backslash, and no segment that starts with a dot (so no dot segments).
_SIMPLE_PATH = re.compile(rb"(?:/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)*/?")
_DIGITS = re.compile(rb"[0-9]{1,18}\Z")  # a Content-Length written as it came
# A request head AgentConnection reads without h11: an HTTP/1.1 request line
# and header lines in h11's own grammar (a token, a colon, a value of
# visible bytes with inner blanks, optional blanks around it), each ended
# by CRLF; a folded line, a bare LF or anything else is h11's to read.
_VALUE_CHARS = rb"[^\x00\s]+(?:[ \t]+[^\x00\s]+)*"  # visible bytes, blanks inside only
_PLAIN_LINE = re.compile(rb"(" + TOKEN_CHARS + rb") ([\x21-\x7e]+) HTTP/1\.1\r\n")
_PLAIN_FIELD = rb"(" + TOKEN_CHARS + rb"):[ \t]*(" + _VALUE_CHARS + rb"|)[ \t]*\r\n"
_PLAIN_FIELDS = re.compile(rb"(?:" + _PLAIN_FIELD + rb")*")
_PLAIN_FIELD_RE = re.compile(_PLAIN_FIELD)
_FIELD_VALUE = re.compile(rb"(?:" + _VALUE_CHARS + rb")?")  # a value as h11 sends one
# The status line of a response the host side reads without h11.
_PLAIN_STATUS = re.compile(rb"HTTP/1\.1 ([0-9]{3})(?: ((?:[ \t]|[^\x00\s])*))?\r\n")
# Headers that make a request one for h11: a body framed otherwise, an
# interim answer to give, a protocol switch to settle.
_NOT_PLAIN = frozenset({b"transfer-encoding", b"expect", b"upgrade"})


@attrs.frozen
class Refusal:
    """A request the bridge will not carry, and the answer the agent gets.

    ``code`` carries the refusal across the bridge; the agent's status and
    ``X-Bridge-Error`` cause are the code's unless a more exact one is given.
    """

    code: ErrorCode
    message: str
    status: int = attrs.field(
        default=attrs.Factory(lambda self: self.code.http_status, takes_self=True)
    )
    cause: str = attrs.field(default=attrs.Factory(lambda self: self.code.cause, takes_self=True))


def _prefixes(items: Iterable[str | bytes]) -> tuple[bytes, ...]:
    return tuple(i.encode("ascii") if isinstance(i, str) else i for i in items)


@attrs.frozen
class HttpPolicy:
    """What the sandbox side lets through; the host side checks it again.

    ``allowed_prefixes`` are path prefixes the target must start with (a
    prefix matches itself and anything below it: ``/a/b`` allows ``/a/b`` and
    ``/a/b/c`` but not ``/a/bc``).
    """

    allowed_prefixes: tuple[bytes, ...] = attrs.field(default=(b"/",), converter=_prefixes)
    max_header_bytes: int = 64 << 10
    max_body_bytes: int | None = None

    @allowed_prefixes.validator
    def _check(self, _: attrs.Attribute[tuple[bytes, ...]], value: tuple[bytes, ...]) -> None:
        for prefix in value:
            if not prefix.startswith(b"/"):
                raise ValueError(f"allowed prefix {prefix!r} must start with '/'")


def check_target(method: bytes, target: bytes, policy: HttpPolicy) -> Refusal | None:
    """Whether the bridge may carry a request for ``target``; None means yes."""
    if method == b"CONNECT":
        return Refusal(
            ErrorCode.BAD_REQUEST,
            "CONNECT is refused: the bridge only forwards requests to its configured upstream",
            status=405,
            cause="connect-refused",
        )
    if target == b"*" and method == b"OPTIONS":
        target = b"/"
    if not target.startswith(b"/"):
        return Refusal(
            ErrorCode.BAD_REQUEST,
            f"the target {target[:100]!r} is not a path:"
            " the bridge forwards only to its configured upstream, so send origin-form"
            " targets such as /v1/models",
            cause="absolute-target-refused",
        )
    path = target.split(b"?", 1)[0]
    problem = _path_problem(target, path)
    if problem:
        return Refusal(
            ErrorCode.BAD_REQUEST,
            f"the path {path[:100]!r} {problem}; send a plain, normalised path",
            cause="unsafe-path",
        )
    for prefix in policy.allowed_prefixes:
        base = prefix.rstrip(b"/")
        if path == base or path.startswith(base + b"/"):
            return None
    allowed = ", ".join(p.decode("ascii", "replace") for p in policy.allowed_prefixes)
    return Refusal(
        ErrorCode.FORBIDDEN,
        f"the path {path[:100].decode('ascii', 'replace')} is"
        f" outside what this bridge allows ({allowed})",
        cause="path-not-allowed",
    )


def _path_problem(target: bytes, path: bytes) -> str | None:
    """Why a path could mean something else to the upstream than to the
    allowlist, or None. Anything an upstream might decode or normalise into
    another path (a second round of percent-decoding, ``%u`` escapes, overlong
    UTF-8, ``..;`` segments, backslashes) is refused rather than guessed at.
    """
    if b"#" in target:
        return "has a fragment ('#' is not allowed in a request target)"
    if _SIMPLE_PATH.fullmatch(path):
        return None  # (the common case, and nothing below could object to it)
    if b"\\" in path:
        return "has a backslash"
    decoded = bytearray()
    position = 0
    for match in _PERCENT.finditer(path) if b"%" in path else ():
        if match.group(1) is None:
            return "has a '%' that is not followed by two hex digits (%u escapes included)"
        decoded += path[position : match.start()] + bytes([int(match.group(1), 16)])
        position = match.end()
    decoded += path[position:]
    if _CONTROL.search(decoded):
        return "has control characters"
    if b"%" in decoded:
        return "is percent-encoded twice (%25)"
    if b"\\" in decoded:
        return "has an encoded backslash"
    if len(decoded.split(b"/")) != len(path.split(b"/")):
        return "has an encoded '/'"
    try:
        decoded.decode("utf-8")
    except UnicodeDecodeError:
        return "is not valid UTF-8 once decoded (overlong forms included)"
    for segment in bytes(decoded).split(b"/"):
        if segment.split(b";", 1)[0] in (b".", b".."):
            return "has dot segments"
    return None


ROUTES_PREFIX = b"/_routes"
_ROUTE_PATH = re.compile(rb"/_routes/([1-9][0-9]{0,9})(?=[/?]|\Z)")


def split_route(target: bytes) -> tuple[int, bytes] | Refusal:
    """The outward route a target names, and the target the route's upstream gets.

    ``/_routes/N/rest`` is route N with target ``/rest`` (``/_routes/N`` alone
    is ``/``); any other target is route 0, unchanged. A target under
    ``/_routes`` that names no valid route number is refused.
    """
    if target != ROUTES_PREFIX and not target.startswith(
        (ROUTES_PREFIX + b"/", ROUTES_PREFIX + b"?")
    ):
        return 0, target
    match = _ROUTE_PATH.match(target)
    route = int(match.group(1)) if match else 0
    if match is None or route > 2**32 - 1:
        return Refusal(
            ErrorCode.BAD_REQUEST,
            f"the target {target[:100]!r} names no route: paths under /_routes/ are"
            " /_routes/N/... with N a route number this bridge gave out",
            cause="route-unknown",
        )
    rest = target[match.end() :]
    return route, rest if rest.startswith(b"/") else b"/" + rest


def clean_headers(
    headers: Iterable[tuple[bytes, bytes]], *, upgrade: bool = False
) -> list[tuple[bytes, bytes]]:
    """Drop hop-by-hop headers (and those ``Connection`` names); keep framing.

    Names come out lower-case. Content-Length is kept; a chunked
    Transfer-Encoding becomes the marker ``transfer-encoding: chunked``.
    With ``upgrade``, a protocol switch the headers ask for (or accept) is
    kept, as ``connection: upgrade`` and the ``upgrade`` header.
    """
    items = [(name.lower(), value) for name, value in headers]
    named = _connection_tokens(items) - _FRAMING
    out: list[tuple[bytes, bytes]] = []
    chunked = False
    for name, value in items:
        if name == b"transfer-encoding":
            chunked = chunked or b"chunked" in value.lower()
        elif name not in _HOP_BY_HOP and name not in named:
            out.append((name, value))
    if chunked:
        out = [(n, v) for n, v in out if n != b"content-length"]
        out.append((b"transfer-encoding", b"chunked"))
    token = upgrade_token(items) if upgrade else None
    if token is not None:
        out += [(b"connection", b"upgrade"), (b"upgrade", token)]
    return out


def _connection_tokens(items: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    return {
        token.strip().lower()
        for name, value in items
        if name.lower() == b"connection"
        for token in value.split(b",")
    }


def upgrade_token(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The protocol a request asks to switch to (or a 101 switches to), or None."""
    items = list(headers)
    if b"upgrade" not in _connection_tokens(items):
        return None
    for name, value in items:
        if name.lower() == b"upgrade" and value.strip():
            return value.strip()
    return None


def _upgrade_with_body(headers: Iterable[tuple[bytes, bytes]]) -> Refusal | None:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return Refusal(
                ErrorCode.BAD_REQUEST,
                "a request to switch protocols (Upgrade) cannot have a body across the bridge;"
                " send the Upgrade request without one",
            )
    return None


def error_response(
    status: int, cause: str, message: str
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and JSON body of an answer the bridge itself gives the agent.

    The body follows the OpenAI error shape, which most agent SDKs read.
    """
    body = json.dumps(
        {"error": {"message": message, "type": "bridge_error", "code": cause}}
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (BRIDGE_ERROR_HEADER, cause.encode()),
        VIA,
    ]
    return headers, body


# ---------------------------------------------------------------- sandbox side


@attrs.frozen
class AgentRequest:
    """A request head the bridge should carry; ``interim`` goes to the agent first."""

    method: bytes
    target: bytes
    headers: Headers
    interim: bytes  # a 100 Continue to write when the agent waits for one
    upgrade: bool = False  # it asks to switch protocols (it then has no body)


@attrs.frozen
class AgentBody:
    data: bytes


@attrs.frozen
class AgentEnd:
    pass


@attrs.frozen
class AgentRefused:
    """Write ``reply`` to the agent, then close the connection.

    ``reply`` is None when a response had already started: then the
    connection must be aborted instead.
    """

    refusal: Refusal
    reply: bytes | None


@attrs.frozen
class AgentClosed:
    """The agent closed its side of the connection."""


AgentEvent = AgentRequest | AgentBody | AgentEnd | AgentRefused | AgentClosed


class AgentConnection:
    """One agent connection on the sandbox side, as h11 sees it.

    Feed the agent's bytes to ``receive_data`` and pull ``next_event`` until it
    returns None (more bytes needed, or the current request is complete and
    its response not yet sent). Render the answer with the ``respond_*``
    methods, then ``next_cycle`` for keep-alive.

    Once a 101 has gone out (``switched``), the connection carries the new
    protocol: ``respond_data`` passes bytes through as they are, and
    ``upgraded_data`` gives what the agent sent after its request.

    The common request and the common answer skip h11's state machine
    (reading and writing through it took about a quarter of the sandbox
    side's CPU a request). A request whose whole head has arrived, in
    h11's grammar, HTTP/1.1, with one Host, at most one Content-Length of
    digits, no Transfer-Encoding, Expect or Upgrade, and not HEAD or
    CONNECT, is read here (``_read_plain_head``), through the same checks;
    anything else is given to h11 whole, for this request. An answer that is
    a final head with one Content-Length to a request that keeps the
    connection is written here (``_plain_length``): its head comes from the
    host, which read it in h11's grammar, so it needs no second check; its
    body is counted against its length as h11 would. Any other answer to a
    request read here is h11's to write, once h11 has been told of a request
    of the same method and keep-alive (``_tell_h11``). Each request starts
    afresh, with what the agent sent ahead.
    """

    def __init__(self, policy: HttpPolicy) -> None:
        self.policy = policy
        self._h11 = self._new_h11()
        self._h11_reads = False  # this request's bytes are h11's to read
        self._ahead: bytes | bytearray = b""  # the agent's bytes, not yet read or h11's
        self._agent_closed = False  # (and it closed its side after them)
        self._body_left: int | None = None  # of a request read here; None: no head yet
        self._request_read = False  # all of a request read here, its end given
        self._body_bytes = 0
        self._method = b""
        self._keep_alive = False  # the request lets the connection carry another
        self._plain: int | None = None  # body bytes left of an answer written here
        self._plain_ended = False
        self.response_started = False
        self.switched = False

    def _new_h11(self) -> h11.Connection:
        return h11_connection(h11.SERVER, max_incomplete_event_size=self.policy.max_header_bytes)

    def receive_data(self, data: bytes) -> None:
        """Bytes from the agent; ``b""`` when it closed its side."""
        if self._h11_reads:
            self._h11.receive_data(data)
        elif not data:
            self._agent_closed = True
        elif not self._ahead:
            self._ahead = data  # (kept as it came: a body that is all of it is not copied)
        else:
            if type(self._ahead) is bytes:
                self._ahead = bytearray(self._ahead)
            self._ahead += data

    def next_event(self) -> AgentEvent | None:
        if self._h11_reads:
            return self._h11_event()
        if self._body_left is not None:
            return self._plain_body()
        if not self._ahead and not self._agent_closed:
            return None
        head = _read_plain_head(self._ahead)
        if head is None:  # h11's to read (or to refuse), as it all came
            self._h11_reads = True
            if self._ahead:
                self._h11.receive_data(bytes(self._ahead))
                self._ahead = b""
            if self._agent_closed:
                self._h11.receive_data(b"")
            return self._h11_event()
        method, target, raw, lowered, size = head
        self._ahead = self._ahead[size:]
        self._body_left = _content_length(lowered) or 0  # (a head read: before any refusal)
        return self._request(method, target, b"1.1", raw, lowered, waiting_for_100=False)

    def _plain_body(self) -> AgentEvent | None:
        """The next part of the body of a request read here."""
        left = self._body_left
        if self._request_read:
            return None
        if not left:
            self._request_read = True
            return AgentEnd()
        data = self._ahead
        if not data:
            if not self._agent_closed:
                return None
            message = (
                f"malformed HTTP request: the connection closed {left} bytes before the end"
                " of the body its Content-Length declares"
            )
            return self._refuse(Refusal(ErrorCode.BAD_REQUEST, message))
        if len(data) > left:
            data, self._ahead = data[:left], data[left:]
        else:
            self._ahead = b""
        self._body_left = left - len(data)
        return AgentBody(bytes(data))

    def _h11_event(self) -> AgentEvent | None:
        try:
            event = self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            code = ErrorCode.HEADERS_TOO_LARGE if status == 431 else ErrorCode.BAD_REQUEST
            return self._refuse(Refusal(code, f"malformed HTTP request: {exc}", status=status))
        refusal = self._chunk_refusal()
        if refusal is not None:
            return self._refuse(refusal)
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return None
        if isinstance(event, h11.Request):
            waiting = self._h11.they_are_waiting_for_100_continue
            raw = event.headers.raw_items()
            return self._request(
                event.method, event.target, event.http_version, raw, event.headers, waiting
            )
        if isinstance(event, h11.Data):
            self._body_bytes += len(event.data)
            limit = self.policy.max_body_bytes
            if limit is not None and self._body_bytes > limit:
                return self._refuse(_body_too_large(limit))
            return AgentBody(bytes(event.data))
        if isinstance(event, h11.EndOfMessage):
            return AgentEnd()
        assert isinstance(event, h11.ConnectionClosed)
        return AgentClosed()

    def _chunk_refusal(self) -> Refusal | None:
        """A chunk size no body could have (h11 takes up to 20 hex digits,
        and would wait forever for 2**64 bytes), or one past the body limit.
        The size is h11's private state: ``check_h11`` made sure it is there."""
        reader = self._h11._reader
        declared = reader._bytes_in_chunk if isinstance(reader, _ChunkedReader) else 0
        limit = self.policy.max_body_bytes
        if limit is not None and self._body_bytes + declared > limit:
            return _body_too_large(limit)
        if declared >= MAX_CHUNK_SIZE:
            return Refusal(
                ErrorCode.BAD_REQUEST,
                f"malformed HTTP request: a chunk of {declared} bytes (the largest accepted is"
                f" {MAX_CHUNK_SIZE - 1})",
            )
        return None

    def _request(
        self,
        method: bytes,
        target: bytes,
        version: bytes,
        raw: list[tuple[bytes, bytes]],
        headers: Sequence[tuple[bytes, bytes]],
        waiting_for_100: bool,
    ) -> AgentEvent:
        """A request head's checks and event, wherever it was read: ``raw``
        its headers as sent, ``headers`` the same with names lower-cased."""
        self._method = method
        self._body_bytes = 0
        if version not in (b"1.0", b"1.1"):
            return self._refuse(
                Refusal(
                    ErrorCode.BAD_REQUEST,
                    f"HTTP/{version.decode()} is not supported: the bridge speaks HTTP/1.1",
                    status=505,
                )
            )
        refusal = check_target(method, target, self.policy)
        names = {name for name, _ in headers}
        if refusal is None and {b"content-length", b"transfer-encoding"} <= names:
            refusal = Refusal(
                ErrorCode.BAD_REQUEST,
                "the request has both Content-Length and Transfer-Encoding (a way to smuggle"
                " requests); send one of them",
            )
        tokens = _connection_tokens(raw)  # (read once for the upgrade and the keep-alive)
        upgrade = b"upgrade" in tokens and upgrade_token(raw) is not None
        # (h11 settles a proposal to switch protocols when it writes the answer)
        self._keep_alive = not upgrade and version == b"1.1" and b"close" not in tokens
        if refusal is None and upgrade:
            refusal = _upgrade_with_body(headers)
        # h11 bounds only heads that arrive in pieces; a whole one is checked here.
        size = request_head_size(method, target, headers)
        if refusal is None and size > self.policy.max_header_bytes:
            refusal = Refusal(
                ErrorCode.HEADERS_TOO_LARGE,
                f"the request head is {size} bytes; the limit is {self.policy.max_header_bytes}",
            )
        length = _content_length(headers)
        limit = self.policy.max_body_bytes
        if refusal is None and limit is not None and length is not None and length > limit:
            refusal = _body_too_large(limit)
        if refusal is not None:
            return self._refuse(refusal)
        interim = b""
        if waiting_for_100:
            interim = self._h11.send(h11.InformationalResponse(status_code=100, headers=[]))
        cleaned = tuple(clean_headers(raw, upgrade=True))
        return AgentRequest(method, target, cleaned, interim, upgrade)

    def _refuse(self, refusal: Refusal) -> AgentRefused:
        return AgentRefused(
            refusal, self.answer_error(refusal.status, refusal.cause, refusal.message)
        )

    def respond_head(self, head: ResponseHead) -> bytes:
        """The head's bytes for the agent. A 101 to a request that asked for
        no upgrade raises ``h11.LocalProtocolError``."""
        headers = [*clean_headers(head.headers, upgrade=head.status == 101), VIA]
        if head.status < 200:
            self._tell_h11()
            out = self._h11.send(
                h11.InformationalResponse(
                    status_code=head.status, headers=headers, reason=head.reason
                )
            )
            self.switched = head.status == 101
            self.response_started = self.switched
            return out
        self.response_started = True
        self._plain = self._plain_length(head.status, headers)
        if self._plain is not None:
            return _head_bytes(b"HTTP/1.1 %d %s\r\n" % (head.status, head.reason), headers)
        self._tell_h11()
        return self._h11.send(
            h11.Response(status_code=head.status, headers=headers, reason=head.reason)
        )

    def _tell_h11(self) -> None:
        """h11 writes an answer for the request it read: before it writes
        one to a request read here, it reads a stand-in of the same method
        and keep-alive, with no body. Nothing else such a request may have
        changes how h11 writes its answer."""
        if self._h11_reads or self._body_left is None or self._h11.their_state is not h11.IDLE:
            return
        close = b"" if self._keep_alive else b"connection: close\r\n"
        self._h11.receive_data(b"%s / HTTP/1.1\r\nhost: -\r\n%s\r\n" % (self._method, close))
        request, end = self._h11.next_event(), self._h11.next_event()
        assert type(request) is h11.Request and type(end) is h11.EndOfMessage

    def _plain_length(self, status: int, headers: list[tuple[bytes, bytes]]) -> int | None:
        """The body length of an answer that can be written without h11, as
        h11 would write it: a final status with a body, one Content-Length of
        digits, to a request that keeps the connection (h11 would add nothing
        to such a head). None: h11 writes it. (``clean_headers`` drops a
        Content-Length beside a chunked Transfer-Encoding.)"""
        if not self._keep_alive or self._method == b"HEAD" or status in (204, 304):
            return None
        lengths = [value for name, value in headers if name == b"content-length"]
        if len(lengths) != 1 or not _DIGITS.match(lengths[0]):
            return None
        return int(lengths[0])

    def respond_data(self, data: bytes) -> bytes:
        if self.switched:
            return data
        if self._plain is not None:
            if len(data) > self._plain:  # (h11's own words for it)
                raise h11.LocalProtocolError("Too much data for declared Content-Length")
            self._plain -= len(data)
            return data
        return self._h11.send(h11.Data(data=data)) or b""

    def respond_end(self) -> bytes:
        """The end of the body; after a switch, nothing (the caller half-closes)."""
        if self.switched:
            return b""
        if self._plain is not None:
            if self._plain:
                raise h11.LocalProtocolError("Too little data for declared Content-Length")
            self._plain_ended = True
            return b""
        return self._h11.send(h11.EndOfMessage()) or b""

    def upgraded_data(self) -> bytes:
        """What the agent sent after its upgrade request, read ahead (take it once)."""
        return bytes(self._h11.trailing_data[0])

    def reply_error(self, status: int, cause: str, message: str) -> bytes:
        """A complete error response; the connection closes after it."""
        headers, body = error_response(status, cause, message)
        headers.append((b"connection", b"close"))
        self.response_started = True
        self._tell_h11()
        out = self._h11.send(h11.Response(status_code=status, headers=headers))
        if self._method != b"HEAD":
            out += self._h11.send(h11.Data(data=body)) or b""
        return out + (self._h11.send(h11.EndOfMessage()) or b"")

    @property
    def missing_body_bytes(self) -> int:
        """Body bytes of a request read here that have not arrived yet; 0
        once all have, once it has been answered (refused, say), and for a
        request h11 reads (it gives its body as it comes)."""
        left = self._body_left
        if left is None or self._request_read or self._h11_reads or self.response_started:
            return 0
        return max(0, left - len(self._ahead))

    @property
    def request_started(self) -> bool:
        """Whether any byte of the next request has arrived."""
        if not self._h11_reads:
            return bool(self._ahead) or self._body_left is not None
        return bool(self._h11.trailing_data[0]) or self._h11.their_state is not h11.IDLE

    def respond_failure(self, code: ErrorCode, reason: str) -> bytes | None:
        """The answer for an exchange the bridge could not complete.

        Before the response head went out this is a JSON error response; after
        it, None: the caller must abort the connection so the agent sees an
        error rather than a body that looks complete.
        """
        return self.answer_error(code.http_status, code.cause, reason)

    def answer_error(self, status: int, cause: str, message: str) -> bytes | None:
        """An error answer, or None (abort) once a response has started."""
        if self.response_started:
            self._h11.send_failed()
            return None
        return self.reply_error(status, cause, message)

    def next_cycle(self) -> bool:
        """Get ready for the next request; False when the connection must close."""
        conn = self._h11
        answered = self._plain_ended or conn.our_state is h11.DONE
        if self._h11_reads:
            if not (answered and conn.their_state is h11.DONE):
                return False
            self._ahead, self._agent_closed = conn.trailing_data
            self._h11_reads = False
        elif not (self._request_read and answered):
            return False
        if conn.their_state is not h11.IDLE:
            self._h11 = self._new_h11()
        self._method = b""  # (an error answer before the next head has a body)
        self._body_left = None
        self._request_read = False
        self._plain = None
        self._plain_ended = self.response_started = False
        return True


def _body_too_large(limit: int) -> Refusal:
    return Refusal(ErrorCode.BODY_TOO_LARGE, f"the request body is larger than {limit} bytes")


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value)
    return None


def _read_plain_head(
    data: bytes | bytearray,
) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], int] | None:
    """A whole request head at the start of ``data`` that AgentConnection
    reads itself (its docstring says which): the method, the target, the
    headers as sent and lower-cased, and the head's size. None: h11's."""
    head = _plain_head(data, _PLAIN_LINE)
    if head is None:
        return None
    line, raw, size = head
    method = line.group(1)
    if method == b"HEAD" or method == b"CONNECT":
        return None  # (an answer to HEAD has no body; CONNECT asks for a tunnel)
    lowered = [(name.lower(), value) for name, value in raw]
    names = [name for name, _ in lowered]
    if names.count(b"host") != 1 or not _NOT_PLAIN.isdisjoint(names):
        return None
    lengths = [value for name, value in lowered if name == b"content-length"]
    if len(lengths) > 1 or (lengths and not _DIGITS.match(lengths[0])):
        return None
    return method, line.group(2), raw, lowered, size


def _plain_head(
    data: bytes | bytearray, first_line: re.Pattern[bytes]
) -> tuple[re.Match[bytes], list[tuple[bytes, bytes]], int] | None:
    """A whole head at the start of ``data`` in h11's grammar, its first
    line matching ``first_line``: that line's match, the header lines as
    sent, and the head's size. None: not whole, or not in that grammar."""
    end = data.find(b"\r\n\r\n")
    line = first_line.match(data)
    if end < 0 or line is None or line.end() > end + 2:
        return None
    if not _PLAIN_FIELDS.fullmatch(data, line.end(), end + 2):
        return None
    return line, _PLAIN_FIELD_RE.findall(data, line.end(), end + 2), end + 4


def _head_bytes(first_line: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A head as h11 writes it: its first line, each header, a blank line."""
    return b"".join((first_line, *(b"%s: %s\r\n" % header for header in headers), b"\r\n"))


# ---------------------------------------------------------------- host side


@attrs.frozen
class Upstream:
    """Where the host side forwards, and what it adds on the way.

    ``added_headers`` (credentials, typically) replace any header of the same
    name the agent sent; the sandbox never needs the real values.
    """

    host: str
    port: int
    policy: HttpPolicy = attrs.field(factory=HttpPolicy)
    added_headers: tuple[tuple[bytes, bytes], ...] = ()
    # Forwarded, X-Forwarded-*, X-Real-IP, X-Original-URL and X-Rewrite-URL
    # from the agent are dropped unless this is set.
    pass_routing_headers: bool = False

    @property
    def host_header(self) -> bytes:
        return f"{self.host}:{self.port}".encode("idna")


def _is_routing(name: bytes) -> bool:
    return name in ROUTING_HEADERS or name.startswith(ROUTING_PREFIXES)


@attrs.frozen
class PlainResponse:
    """A response head ``read_plain_response`` read: its body is ``length``
    bytes, and ``size`` bytes of the input were the head."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]  # as sent
    length: int
    size: int


def read_plain_response(data: bytes | bytearray, method: bytes) -> PlainResponse | None:
    """A whole response head at the start of ``data``, to a request of
    ``method``, that the host side reads without h11: HTTP/1.1, a final
    status with a body (not 204 or 304, and not to HEAD or CONNECT), in
    h11's grammar, one Content-Length of digits, no Transfer-Encoding, and
    no ``Connection: close``. None: h11's to read, as it came."""
    head = _plain_head(data, _PLAIN_STATUS)
    if head is None or method in (b"HEAD", b"CONNECT"):
        return None
    line, raw, size = head
    status = int(line.group(1))
    if status < 200 or status in (204, 304):
        return None
    lengths = []
    for name, value in raw:
        name = name.lower()
        if name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            return None
    if len(lengths) != 1 or not _DIGITS.match(lengths[0]) or b"close" in _connection_tokens(raw):
        return None
    return PlainResponse(status, line.group(2) or b"", raw, int(lengths[0]), size)


def _upstream_headers(head: RequestHead, upstream: Upstream) -> list[tuple[bytes, bytes]]:
    """The head's headers cleaned, with the upstream's Host and its own."""
    replaced = {name.lower() for name, _ in upstream.added_headers}
    headers = [
        (n, v)
        for n, v in clean_headers(head.headers, upgrade=True)
        if n not in replaced and (upstream.pass_routing_headers or not _is_routing(n))
    ]
    return [(b"host", upstream.host_header), *headers, *upstream.added_headers, VIA]


def upstream_request(head: RequestHead, upstream: Upstream) -> h11.Request | Refusal:
    """The h11 request for a head the sandbox sent, or why it is refused."""
    refusal = check_target(head.method, head.target, upstream.policy)
    if refusal is not None:
        return refusal
    if upgrade_token(head.headers) is not None:
        refusal = _upgrade_with_body(head.headers)
        if refusal is not None:
            return refusal
    try:
        return h11.Request(
            method=head.method, target=head.target, headers=_upstream_headers(head, upstream)
        )
    except h11.LocalProtocolError as exc:
        return Refusal(ErrorCode.BAD_REQUEST, f"the request cannot be sent upstream: {exc}")


@attrs.frozen
class PlainRequest:
    """An upstream request the host side writes without h11
    (``plain_upstream_request``)."""

    method: bytes
    head: bytes  # its request line and headers, byte for byte as h11 writes them
    length: int  # its body's Content-Length (0: it has none)


def plain_upstream_request(head: RequestHead, upstream: Upstream) -> PlainRequest | None:
    """The common upstream request, as h11 would write it, without h11's
    second pass over it: a target the policy allows, not CONNECT, no
    upgrade, no Transfer-Encoding or Connection, at most one Content-Length
    of digits, one Host, and every header as h11 sends one. None:
    ``upstream_request``'s to build (or refuse)."""
    if head.method == b"CONNECT" or check_target(head.method, head.target, upstream.policy):
        return None
    headers = _upstream_headers(head, upstream)
    length = None
    hosts = 0
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-length":
            if length is not None or not _DIGITS.match(value):
                return None
            length = int(value)
        elif lowered == b"host":
            hosts += 1
        elif lowered in _NOT_PLAIN or lowered == b"connection":
            return None  # (only added headers can carry a Connection: h11 heeds it)
        if not TOKEN.match(name) or not _FIELD_VALUE.fullmatch(value):
            return None
    if hosts != 1:
        return None
    request_line = b"%s %s HTTP/1.1\r\n" % (head.method, head.target)
    return PlainRequest(head.method, _head_bytes(request_line, headers), length or 0)
