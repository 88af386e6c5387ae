"""The sandbox side of the live-stream transport (see ``live.py``): the
private socket channel processes hand their stdin and stdout to. The daemon
imports this half only.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.abc

from ..errors import STREAM_ERRORS
from ..sandbox_calls import channel_socket
from ..streams import FdStream
from . import Acceptor


class PassedChannel(FdStream):
    """The stdin and stdout a channel process handed over; closing it closes
    them, and lets the channel process exit."""

    def __init__(self, read_fd: int, write_fd: int, handle: anyio.abc.UNIXSocketStream) -> None:
        super().__init__(read_fd, write_fd, owned=True)
        self.handle = handle

    async def aclose(self) -> None:
        await super().aclose()
        await self.handle.aclose()


async def serve_channels(
    acceptor: Acceptor,
    session_id: bytes,
    options: Mapping[str, Any],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """The live-stream transport's sandbox end (see ``registry.STREAM``)."""
    await accept_channels(acceptor, channel_socket(session_id), task_status=task_status)


async def accept_channels(
    acceptor: Acceptor,
    path: str,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``path``; each channel process's stdin and stdout become the
    session's next channel."""
    listener = await anyio.create_unix_listener(path)
    os.chmod(path, 0o600)
    async with listener:
        task_status.started()
        while True:
            handle = await listener.accept()
            assert isinstance(handle, anyio.abc.UNIXSocketStream)
            try:
                _, fds = await handle.receive_fds(16, 2)
            except (*STREAM_ERRORS, ValueError):
                fds = []
            if len(fds) != 2 or not _is_channel(*fds):  # whoever it is, goodbye
                for fd in fds:
                    os.close(fd)
                await handle.aclose()
                continue
            await acceptor.offer(PassedChannel(fds[0], fds[1], handle))


def _is_channel(read_fd: int, write_fd: int) -> bool:
    """Whether two handed-over descriptors can be a channel: pipes or sockets
    open for reading and for writing. Code inside can connect to the socket
    too; a file or device there (``/dev/zero`` reads forever) would take the
    place of the host's channel and spin on it."""
    for fd, mode in ((read_fd, os.O_RDONLY), (write_fd, os.O_WRONLY)):
        try:
            kind = os.fstat(fd).st_mode
            access = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
        except OSError:
            return False
        if not (stat.S_ISFIFO(kind) or stat.S_ISSOCK(kind)) or access not in (mode, os.O_RDWR):
            return False
    return True
