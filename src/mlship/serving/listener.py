"""The listening socket: its effective backlog, and closing it without resetting connections it took."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from pathlib import Path
from typing import Any

BACKLOG = 2048  # connections the kernel may complete before the server accepts them (capped by somaxconn)
LOW_BACKLOG = 1024
SOMAXCONN = Path("/proc/sys/net/core/somaxconn")


def _tcp_info(sock: socket.socket) -> tuple[int, int] | None:
    """(accept queue length, backlog) of a listening socket: Linux reports them in TCP_INFO as tcpi_unacked and
    tcpi_sacked. None where that cannot be read (another OS, a closed socket)."""
    tcp_info = getattr(socket, "TCP_INFO", None)
    if tcp_info is None or sock.fileno() < 0:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, 32)
        queued, backlog = struct.unpack_from("II", info, 24)
    except (OSError, struct.error):
        return None
    return int(queued), int(backlog)


def accept_queue(sock: socket.socket) -> int:
    """Connections the kernel has completed that nobody accepted yet; 0 where that cannot be read."""
    info = _tcp_info(sock)
    return info[0] if info else 0


def listen_backlog(sock: socket.socket) -> int | None:
    """The backlog the kernel really gives a listening socket: what listen() asked for, capped by
    net.core.somaxconn. None where that cannot be read."""
    info = _tcp_info(sock)
    return info[1] if info else None


def backlog_warning(backlog: int | None) -> str | None:
    """A warning when the kernel caps the listen backlog low: a burst of more new connections than it holds has
    its SYNs dropped, and each client waits for its SYN retry (1 s, then 3 s...) before it is even accepted."""
    if backlog is None or backlog >= LOW_BACKLOG:
        return None
    return (f"the kernel caps the listen backlog at {backlog} (net.core.somaxconn): in a burst of more than {backlog} "
            "new connections, the others wait 1 s or more for their SYN retry before the server sees them. Raise it: "
            "`docker run --sysctl net.core.somaxconn=4096 ...` (per container), or "
            "`sysctl -w net.core.somaxconn=4096` on the host.")


async def stop_listening(servers: list[Any], sockets: list[socket.socket], wait_s: float = 1.0) -> None:
    """Close the listeners without resetting a connection the kernel already accepted for us.

    A listening socket's close resets every connection still in its accept queue, whose clients may have
    sent their request already. So first the backlog shrinks to one (later SYNs wait for the client's retry,
    which then finds the port closed: refused), the event loop accepts what is queued (those requests are
    answered), and only an empty queue is closed. The queue is polled for at most ``wait_s``.
    """
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.listen(0)
    deadline = time.monotonic() + wait_s
    while any(accept_queue(sock) for sock in sockets) and time.monotonic() < deadline:
        await asyncio.sleep(0.002)
    for server in servers:
        server.close()
    for sock in sockets:
        sock.close()
