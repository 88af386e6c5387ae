"""Inward routes: route number -> port inside the sandbox.

The host side declares them (``declare_route``) and the sandbox side learns
them from ROUTE records; the sandbox side answers requests only on routes it
has learned. Within a session a route number never changes its port: a
second declaration must repeat it, or it is refused.
"""

from __future__ import annotations

from ._errors import ErrorCode, LocalProtocolError, PeerFault


class Routes(dict[int, int]):
    """The routes one side knows, as a plain mapping with two guarded ways in."""

    def declare(self, route: int, port: int) -> bool:
        """This side declares a route; True if it is new (and must be sent)."""
        known = self.get(route)
        if known == port:
            return False
        if known is not None:
            raise LocalProtocolError(
                f"route {route} already leads to port {known}; declare port {port}"
                " under a new route number"
            )
        self[route] = port
        return True

    def learn(self, route: int, port: int) -> None:
        """The peer declared a route."""
        known = self.get(route)
        if known is not None and known != port:
            raise PeerFault(
                ErrorCode.PROTOCOL_ERROR,
                f"route {route} was declared for port {known} and again for {port}",
            )
        self[route] = port
