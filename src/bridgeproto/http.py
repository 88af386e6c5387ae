"""HTTP/1.1 on either side of the bridge, translated to and from exchanges.

The sandbox side reads an agent's bytes with ``AgentConnection``; the host
side turns a ``RequestHead`` into an upstream request with
``upstream_request``, and reads the common response head itself with
``read_plain_response``. The policy (``HttpPolicy``, ``Upstream``) is checked on
both sides. This is the only layer of the core that needs h11.
"""

from ._http import (
    BRIDGE_ERROR_HEADER,
    ROUTES_PREFIX,
    AgentBody,
    AgentClosed,
    AgentConnection,
    AgentEnd,
    AgentEvent,
    AgentRefused,
    AgentRequest,
    HttpPolicy,
    PlainRequest,
    PlainResponse,
    Refusal,
    Upstream,
    check_target,
    clean_headers,
    error_response,
    h11_connection,
    plain_upstream_request,
    read_plain_response,
    split_route,
    upgrade_token,
    upstream_request,
)

__all__ = [
    "BRIDGE_ERROR_HEADER",
    "ROUTES_PREFIX",
    "AgentBody",
    "AgentClosed",
    "AgentConnection",
    "AgentEnd",
    "AgentEvent",
    "AgentRefused",
    "AgentRequest",
    "HttpPolicy",
    "PlainRequest",
    "PlainResponse",
    "Refusal",
    "Upstream",
    "check_target",
    "clean_headers",
    "error_response",
    "h11_connection",
    "plain_upstream_request",
    "read_plain_response",
    "split_route",
    "upgrade_token",
    "upstream_request",
]
