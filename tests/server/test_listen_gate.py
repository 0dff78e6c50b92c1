"""The listener gate used by the SIGTERM drain: once the gate is shut, the kernel
completes no new connection, while connections it had already queued are still
accepted and served, and the accept-queue length tells when closing resets no one."""

from __future__ import annotations

import socket
import sys

import pytest

from server.listen_gate import accept_queue_length, refuse_new_connections

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="socket filters and TCP_INFO are Linux features")


def test_queued_connections_survive_the_gate_and_new_ones_are_not_completed():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        address = listener.getsockname()
        queued = [socket.create_connection(address, timeout=2) for _ in range(3)]
        assert accept_queue_length(listener) == 3

        assert refuse_new_connections(listener)
        with socket.socket() as late:
            late.settimeout(0.5)
            with pytest.raises(TimeoutError):  # its SYN is ignored: no connection, no reset
                late.connect(address)

        for client in queued:  # each queued client sent a request before the gate shut
            client.sendall(b"ping")
        served = []
        for _ in queued:
            conn, _ = listener.accept()
            with conn:
                served.append(conn.recv(16))
                conn.sendall(b"pong")
        assert served == [b"ping"] * 3
        assert [client.recv(16) for client in queued] == [b"pong"] * 3
        assert accept_queue_length(listener) == 0
        for client in queued:
            client.close()

    with socket.socket() as refused:  # once the listener is closed: connection refused
        refused.settimeout(2)
        with pytest.raises(ConnectionRefusedError):
            refused.connect(address)


def test_a_handshake_answered_before_the_gate_completes_after_it():
    # A client whose SYN the kernel answered just before the gate shut is connected on its
    # side and sends its request; the server side completes only on that next segment.
    # TCP_DEFER_ACCEPT holds the server side half-open until data arrives, which makes
    # that race deterministic.
    with socket.socket() as listener:
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        address = listener.getsockname()
        with socket.create_connection(address, timeout=2) as client:
            assert accept_queue_length(listener) == 0  # not completed on the server side yet
            assert refuse_new_connections(listener)
            client.sendall(b"ping")
            listener.settimeout(2)
            conn, _ = listener.accept()
            with conn:
                assert conn.recv(16) == b"ping"
                conn.sendall(b"pong")
            assert client.recv(16) == b"pong"
