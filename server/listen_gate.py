"""Closing a listening TCP socket without resetting the clients queued on it.

Closing a listening socket makes the kernel reset every connection that has
completed its handshake but is still waiting in the accept queue. Those clients
have already sent their request, so they see a reset *after* sending it and
cannot tell whether the server acted on it. ``refuse_new_connections`` avoids
that on Linux: a socket filter on the listener makes the kernel ignore new SYNs
(the client retransmits, and once the listener is closed it gets "connection
refused", which it knows was never accepted), while connections already queued
are untouched and can still be accepted and answered. The filter drops only
segments that open a connection (SYN without ACK): a handshake the kernel had
answered before the gate shut still completes on the client's ACK, which the
listener's filter also sees. Dropping every segment left such a connection
half-open: its client, already connected, sent its request, and got a reset
when the listener closed.
``accept_queue_length`` tells when that queue is empty, i.e. when closing the
listener resets no one.

Elsewhere (no socket filters) both functions report that they could do nothing,
and the caller falls back to closing the listener at once.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys

# <linux/filter.h> and <asm-generic/socket.h>; Python's socket module has neither.
_SO_ATTACH_FILTER = 26
# Classic BPF opcodes. A TCP listener's filter sees the segment from its TCP header on,
# so byte 13 holds the flags.
_BPF_LD_B_ABS = 0x30
_BPF_AND_K = 0x54
_BPF_JEQ_K = 0x15
_BPF_RET_K = 0x06  # accept this many bytes of the packet; 0 drops it
_TCP_FLAGS_OFFSET = 13
_SYN, _ACK = 0x02, 0x10
_DROP_CONNECTION_OPENINGS = (
    (_BPF_LD_B_ABS, 0, 0, _TCP_FLAGS_OFFSET),
    (_BPF_AND_K, 0, 0, _SYN | _ACK),
    (_BPF_JEQ_K, 0, 1, _SYN),  # a SYN without ACK: fall through to drop; else skip to keep
    (_BPF_RET_K, 0, 0, 0),
    (_BPF_RET_K, 0, 0, 0xFFFFFFFF),
)
# struct tcp_info: 8 one-byte fields, then u32 rto, ato, snd_mss, rcv_mss, unacked.
# For a listening socket the kernel reports its accept-queue length in tcpi_unacked.
_TCPI_UNACKED_OFFSET = 24
_TCP_INFO_SIZE = 104


def _dup(listener: socket.socket) -> socket.socket:
    # uvloop hands out socket-like objects without setsockopt for options like this one;
    # a duplicate descriptor refers to the same kernel socket.
    return socket.fromfd(listener.fileno(), listener.family, listener.type)


def refuse_new_connections(listener: socket.socket) -> bool:
    """Make the kernel drop new connection attempts to ``listener``; True if it could."""
    if not sys.platform.startswith("linux"):
        return False
    code = b"".join(struct.pack("HBBI", *insn) for insn in _DROP_CONNECTION_OPENINGS)
    program = (ctypes.c_ubyte * len(code)).from_buffer_copy(code)
    # struct sock_fprog {len, filter*}; the kernel copies the program during setsockopt.
    prog = struct.pack("HP", len(_DROP_CONNECTION_OPENINGS), ctypes.addressof(program))
    try:
        with _dup(listener) as sock:
            sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, prog)
    except OSError:
        return False
    return True


def accept_queue_length(listener: socket.socket) -> int | None:
    """Connections the kernel has completed but the server not yet accepted (None: unknown)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with _dup(listener) as sock:
            if sock.type != socket.SOCK_STREAM:
                return None
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return None
    if len(info) < _TCPI_UNACKED_OFFSET + 4:
        return None
    return int(struct.unpack_from("I", info, _TCPI_UNACKED_OFFSET)[0])
