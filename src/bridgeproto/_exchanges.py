"""The exchange registry: which exchanges are in flight, which ids are whose,
which a new request may open, and which ended recently.

Ids tell their opener: the sandbox side opens odd ones, the host side even
ones, each counting up, so an id below the opener's next one has existed.
An ended exchange is remembered (with the body bytes the application may
still consume on it) in a map of bounded size, oldest forgotten first, so a
late frame for it is dropped quietly rather than taken for a new exchange
or a protocol error; a forgotten id is still known to have existed.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Mapping
from typing import NamedTuple

from ._credit import Credit
from ._errors import ErrorCode, LocalProtocolError
from ._exchange import Exchange
from ._records import (
    MAX_EXCHANGE_ID,
    Data,
    EndOfBody,
    Limits,
    RequestHead,
    Reset,
    ResponseHead,
    Role,
    Window,
)

# Records that name an exchange.
ExchangeRecord = RequestHead | ResponseHead | Data | EndOfBody | Reset | Window


class Admission(enum.Enum):
    """What a record for an id not in flight does, when it is not refused."""

    OPEN = "open"  # a new exchange from the peer
    DROP = "drop"  # late (the exchange ended) or harmless: ignore it


class Refusal(NamedTuple):
    """Answer the record with a reset; ``remember`` the peer's id as ended."""

    code: ErrorCode
    reason: str
    remember: bool


class Exchanges:
    """The exchanges of one side: in flight, and recently ended."""

    def __init__(self, role: Role, memory: int) -> None:
        self._role = role
        self._memory = memory
        self._open: dict[int, Exchange] = {}
        # Ended ids -> bytes the application may still consume on them.
        self._ended: OrderedDict[int, int] = OrderedDict()
        self._next_local_id = 1 if role is Role.SANDBOX else 2
        self.highest_peer_id = 0
        self._serial = 0

    def __len__(self) -> int:
        return len(self._open)

    def ids(self) -> list[int]:
        return list(self._open)

    def in_flight(self) -> list[Exchange]:
        """A copy, so that the caller may end exchanges while it walks it."""
        return list(self._open.values())

    def get(self, exchange_id: int) -> Exchange | None:
        return self._open.get(exchange_id)

    def find(self, exchange_id: int) -> Exchange:
        """The exchange in flight, or an error saying why there is none."""
        ex = self._open.get(exchange_id)
        if ex is not None:
            return ex
        if exchange_id in self._ended:
            raise LocalProtocolError(f"exchange {exchange_id} has already ended")
        raise LocalProtocolError(f"exchange {exchange_id} does not exist")

    def is_ours(self, exchange_id: int) -> bool:
        """Whether this side opens exchanges with ids of this parity."""
        return exchange_id % 2 == self._next_local_id % 2

    def existed(self, exchange_id: int) -> bool:
        """Whether the id was ever opened, by either side."""
        if self.is_ours(exchange_id):
            return 0 < exchange_id < self._next_local_id
        return 0 < exchange_id <= self.highest_peer_id

    def recently_ended(self, exchange_id: int) -> bool:
        return exchange_id in self._ended

    def ended(self, exchange_id: int) -> bool:
        """Whether the id belongs to an exchange that ended, maybe long ago."""
        return exchange_id in self._ended or (
            exchange_id not in self._open and self.existed(exchange_id)
        )

    # ------------------------------------------------------------ opening

    def next_local_id(self) -> int:
        """The id this side's next exchange takes (not claimed until ``open``)."""
        if self._next_local_id > MAX_EXCHANGE_ID:
            raise LocalProtocolError(
                "exchange ids are exhausted; open a new session", code=ErrorCode.REFUSED
            )
        return self._next_local_id

    def start_refusal(
        self, peer_allows: int, retained_bytes: int, max_retained_bytes: int
    ) -> LocalProtocolError | None:
        """Why this side's next exchange must wait, if it must: the peer's
        exchange limit is reached, or too many sent bytes await its ack."""
        if len(self._open) >= peer_allows:
            return LocalProtocolError(
                f"{len(self._open)} exchanges are in flight and the peer allows"
                f" {peer_allows}; wait for one to end",
                code=ErrorCode.TOO_MANY_EXCHANGES,
            )
        if retained_bytes >= max_retained_bytes:
            return LocalProtocolError(
                f"{retained_bytes} sent bytes await the peer's acknowledgement;"
                " wait for the link to catch up",
                code=ErrorCode.TOO_MANY_EXCHANGES,
            )
        return None

    def open(
        self, exchange_id: int, now: float, credit: Credit, deadline: float | None
    ) -> Exchange:
        if self.is_ours(exchange_id):
            self._next_local_id = exchange_id + 2
        self._serial += 1
        ex = Exchange(
            exchange_id,
            serial=self._serial,
            ours=self.is_ours(exchange_id),
            now=now,
            credit=credit,
            deadline=deadline,
        )
        self._open[exchange_id] = ex
        return ex

    def admission(
        self,
        record: ExchangeRecord,
        *,
        accepting: bool,
        routes: Mapping[int, int],
        limits: Limits,
    ) -> Admission | Refusal:
        """What a record for an id not in flight does: a peer's request head
        may open an exchange; anything else is late, harmless or refused."""
        exchange_id = record.exchange_id
        if self.ended(exchange_id):
            return Admission.DROP  # a late frame for an exchange that has ended
        if isinstance(record, Reset):
            return Admission.DROP  # nothing to reset
        if isinstance(record, Window):  # (credit for no exchange)
            reason = f"WINDOW for exchange {exchange_id}, which was never opened"
            return Refusal(ErrorCode.PROTOCOL_ERROR, reason, False)
        if self.is_ours(exchange_id):
            reason = f"exchange {exchange_id} was never opened"
            return Refusal(ErrorCode.PROTOCOL_ERROR, reason, False)
        if not isinstance(record, RequestHead):
            return Refusal(
                ErrorCode.PROTOCOL_ERROR,
                f"{type(record).__name__} for exchange {exchange_id}, which has no request head",
                True,
            )
        self.highest_peer_id = exchange_id
        if not accepting:
            return Refusal(
                ErrorCode.REFUSED,
                f"the {self._role.name.lower()} side is shutting down;"
                " the request was not processed",
                True,
            )
        if self._role is Role.SANDBOX and record.route not in routes:
            return Refusal(
                ErrorCode.FORBIDDEN,
                f"route {record.route} was never declared: the sandbox side only"
                " answers requests for the ports the host side exposed",
                True,
            )
        if len(self._open) >= limits.max_exchanges:
            return Refusal(
                ErrorCode.TOO_MANY_EXCHANGES,
                f"{limits.max_exchanges} exchanges are already in flight",
                True,
            )
        if record.head_size > limits.max_header_bytes:
            return Refusal(
                ErrorCode.HEADERS_TOO_LARGE,
                f"request head is {record.head_size} bytes; the limit is {limits.max_header_bytes}",
                True,
            )
        return Admission.OPEN

    # ------------------------------------------------------------ ending

    def close(self, ex: Exchange, unconsumed: int) -> int:
        """End an exchange whose application still holds ``unconsumed`` bytes.
        Returns the bytes of forgotten ids, which nobody will consume now."""
        del self._open[ex.exchange_id]
        return self.remember_ended(ex.exchange_id, unconsumed)

    def remember_ended(self, exchange_id: int, unconsumed: int) -> int:
        self._ended[exchange_id] = unconsumed
        forgotten = 0
        while len(self._ended) > self._memory:
            forgotten += self._ended.popitem(last=False)[1]
        return forgotten

    def consume_ended(self, exchange_id: int, nbytes: int) -> int:
        """The application consumed bytes of an ended exchange: how many of
        them still held credit (none once the id is forgotten)."""
        remaining = self._ended.get(exchange_id)
        if remaining is None:
            if not self.existed(exchange_id):
                raise LocalProtocolError(f"exchange {exchange_id} is unknown")
            return 0  # forgotten; its bytes were released when it was
        nbytes = min(nbytes, remaining)
        self._ended[exchange_id] = remaining - nbytes
        return nbytes
