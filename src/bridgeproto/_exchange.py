"""One exchange in flight: its two halves, its body counts and its credit.

The rules here concern one exchange alone, as h2's stream does for a
stream: which record may go out or come in on it now (the half table in
``_state``), how much body each way may still move (credit and the body
limit), and what consuming received bytes gives back. A rule broken by this
side raises ``LocalProtocolError``; one broken by the peer raises
``PeerFault``, which resets this exchange only.
"""

from __future__ import annotations

from ._credit import Credit
from ._errors import ErrorCode, LocalProtocolError, PeerFault
from ._records import Data, Record, RequestHead, ResponseHead
from ._state import Half, HalfInput, both_halves_done, half_after, half_input


class Exchange:
    """Book-keeping for one exchange in flight."""

    __slots__ = (
        "credit",
        "deadline",
        "exchange_id",
        "last_activity",
        "ours",
        "received_body",
        "recv_half",
        "send_half",
        "sent_body",
        "serial",
        "unconsumed",
    )

    def __init__(
        self,
        exchange_id: int,
        *,
        serial: int,
        ours: bool,
        now: float,
        credit: Credit,
        deadline: float | None,
    ) -> None:
        self.exchange_id = exchange_id
        self.serial = serial  # the order it opened in, by either side
        self.ours = ours  # opened by this side
        self.send_half = Half.IDLE
        self.recv_half = Half.IDLE
        self.credit = credit
        self.unconsumed = 0  # delivered to the application, not yet consumed
        self.received_body = 0
        self.sent_body = 0
        self.last_activity = now
        self.deadline = deadline

    @property
    def done(self) -> bool:
        return both_halves_done(self.send_half, self.recv_half)

    # ------------------------------------------------------------ sending

    def sending(self, record: Record) -> None:
        """A head, data or end goes out: move the send half."""
        self.send_half = self._advance(self.send_half, half_input(record), sending=True)

    def take_body_to_send(self, size: int, session: Credit, max_body_bytes: int | None) -> None:
        """Check and spend what ``size`` body bytes about to go out need."""
        credit = min(self.credit.can_send, session.can_send)
        if size > credit:
            raise LocalProtocolError(
                f"sending {size} bytes on exchange {self.exchange_id} exceeds the"
                f" {credit} bytes of credit the peer granted; wait for CreditAvailable"
            )
        self._advance(self.send_half, HalfInput.DATA, sending=True)
        if max_body_bytes is not None and self.sent_body + size > max_body_bytes:
            raise LocalProtocolError(
                f"the body on exchange {self.exchange_id} would exceed max_body_bytes"
                f" ({max_body_bytes})",
                code=ErrorCode.BODY_TOO_LARGE,
            )
        self.sent_body += size
        self.credit.spend(size)
        session.spend(size)

    # ------------------------------------------------------------ receiving

    def receiving(self, record: Record, max_header_bytes: int, max_body_bytes: int | None) -> None:
        """A head, data or end came from the peer: check it and move the
        receive half (session credit was taken already)."""
        expected_head = ResponseHead if self.ours else RequestHead
        if isinstance(record, (RequestHead, ResponseHead)) and not isinstance(
            record, expected_head
        ):
            opener = "this side" if self.ours else "the peer"
            raise PeerFault(
                ErrorCode.PROTOCOL_ERROR,
                f"{type(record).__name__} on exchange {self.exchange_id}, which {opener} started",
            )
        if isinstance(record, ResponseHead) and record.head_size > max_header_bytes:
            raise PeerFault(
                ErrorCode.HEADERS_TOO_LARGE,
                f"response head is {record.head_size} bytes; the limit is {max_header_bytes}",
            )
        self.recv_half = self._advance(self.recv_half, half_input(record), sending=False)
        if isinstance(record, Data):
            size = len(record.data)
            if not self.credit.take(size):
                raise PeerFault(
                    ErrorCode.FLOW_CONTROL_ERROR,
                    f"{size} body bytes arrived with only {self.credit.can_receive}"
                    " bytes of credit",
                )
            self.unconsumed += size
            self.received_body += size
            if max_body_bytes is not None and self.received_body > max_body_bytes:
                raise PeerFault(
                    ErrorCode.BODY_TOO_LARGE,
                    f"body is larger than the limit of {max_body_bytes} bytes",
                )

    def consumed(self, nbytes: int) -> int:
        """The application passed ``nbytes`` on: the credit to announce now (0: none yet)."""
        if nbytes > self.unconsumed:
            raise LocalProtocolError(
                f"consume({nbytes}) on exchange {self.exchange_id}, which has only"
                f" {self.unconsumed} unconsumed bytes"
            )
        self.unconsumed -= nbytes
        self.credit.release(nbytes)
        if self.recv_half is not Half.OPEN:
            return 0  # a finished body needs no more credit
        return self.credit.due()

    def _advance(self, half: Half, what: HalfInput, *, sending: bool) -> Half:
        new = half_after(half, what)
        if new is None:
            direction = "send" if sending else "receive"
            message = (
                f"exchange {self.exchange_id}: cannot {direction} {what.value} while its"
                f" {direction} half is {half.value}"
            )
            if sending:
                raise LocalProtocolError(message)
            raise PeerFault(ErrorCode.PROTOCOL_ERROR, message)
        return new
