"""Headers the user gives on the command line or in a file, as the bridge will send them.

Both ``cli`` (``--header``) and ``run`` (``--header-file``) read them, so
they live below both.
"""

from __future__ import annotations

import argparse

import bridgeproto as bp

from .errors import BridgeError

__all__ = ["parse_header", "read_header_file"]


def parse_header(text: str) -> tuple[bytes, bytes]:
    """``Name: value`` as the bridge will send it; ``ArgumentTypeError`` if it cannot be."""
    name, sep, value = text.partition(":")
    try:
        header = bp.RequestHead(1, b"GET", b"/", [(name.strip().encode(), value.strip().encode())])
    except (bp.LocalProtocolError, UnicodeEncodeError):
        header = None
    if not sep or header is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'Name: value'")
    return header.headers[0][0].lower(), header.headers[0][1]


def read_header_file(path: str) -> list[tuple[bytes, bytes]]:
    """``Name: value`` lines (blank lines and ``#`` comments skipped).

    The recommended way to give credentials: they never appear in a command
    line, where any user of the host could read them.
    """
    try:
        with open(path) as file:
            lines = file.read().splitlines()
    except OSError as exc:
        raise BridgeError(f"cannot read the header file {path}: {exc.strerror}") from None
    headers = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            headers.append(parse_header(line))
        except argparse.ArgumentTypeError:
            raise BridgeError(
                f"{path}:{number} is not a 'Name: value' header line"
            ) from None  # the line itself may be a secret: never echo it
    return headers
