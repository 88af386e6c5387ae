"""The mailbox transport's options (see ``mailbox.py``): a record light
enough for the registry and the settings to hold."""

from __future__ import annotations

import attrs


@attrs.frozen
class MailboxOptions:
    """How the host side uses the control plane.

    ``wait``: seconds a call may wait in the sandbox for output (an idle
    bridge costs one call per ``wait``). ``batch_bytes``: the most bytes one
    call brings back; keep its armored size (4/3 of it) under the provider's
    output limit. ``input_bytes``: the most one call takes in (uploads are
    not cut as output is). ``max_calls``: calls in flight at once, at least
    2 (one waits for output while another carries input or waits beside
    it), and uploads in flight at once.
    ``upload_input``: while a call waits in the sandbox, upload input that
    cannot wait to the sandbox side's spool instead of making another call
    (it lands sooner: an upload starts no process); off, all input rides in
    calls, which costs fewer operations per request and more latency.
    ``inline_bytes``: input up to this size rides in a call itself;
    larger input is uploaded as a file first (one more operation).
    ``linger``: when a request came back, how long to hold the next call
    for its answer (a fast upstream's answer then costs no operation of its
    own); done when input rides in calls, and while operations fail (more
    than one in twenty lately), at the price of that call's start on the
    answer's way.
    """

    wait: float = 15.0
    batch_bytes: int = 1 << 20
    input_bytes: int = 8 << 20
    max_calls: int = 2
    upload_input: bool = True
    inline_bytes: int = 48 << 10
    linger: float = 0.02  # after output came back, how long input may take to join the next call
    call_timeout: float = 30.0  # on top of ``wait``

    def __attrs_post_init__(self) -> None:
        if (
            not self.wait > 0
            or self.max_calls < 2
            or min(self.batch_bytes, self.input_bytes) < 1024
        ):
            raise ValueError(
                "MailboxOptions needs wait > 0, max_calls >= 2 (one call waits for output"
                " while another carries input), and batch_bytes and input_bytes >= 1024"
            )


@attrs.define
class MailboxStats:
    """Control-plane calls the transport made, for accounting and the benchmark."""

    calls: int = 0
    uploads: int = 0  # input uploaded, to the spool or for a call
    failed: int = 0  # calls and uploads that failed, or came back cut or damaged
    epochs: int = 0
    cut: int = 0  # answers that came back cut short
    batch_bytes: int = 0  # the output batch now
    smallest_batch_bytes: int = 0  # the smallest the output batch has been
    last_failure: str = ""  # what the last failed call or upload said
