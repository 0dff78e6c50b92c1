"""CorkedTransport (server/http_protocol.py) over a real TCP connection on loopback, read
by a blocking socket in another thread, as a client process on the same host would."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

from server.http_protocol import CorkedTransport


class ThreadedReceiver:
    """Accepts one connection and records each ``recv`` as it happens."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.chunks: list[bytes] = []
        self.closed = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            while data := conn.recv(65536):
                self.chunks.append(data)
        self.closed.set()


async def _connected() -> tuple[CorkedTransport, ThreadedReceiver]:
    receiver = ThreadedReceiver()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", receiver.port)
    return CorkedTransport(transport, loop), receiver


async def _until(predicate, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_writes_of_one_loop_step_leave_as_one_send_and_in_order():
    corked, receiver = await _connected()
    try:
        corked.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        # Blocking on purpose, inside one loop step: the reader is awake meanwhile, and a
        # plain transport would show two reads.
        time.sleep(0.05)  # noqa: ASYNC251
        corked.write(bytearray(b"{}"))
        corked.write(b"")
        await _until(lambda: receiver.chunks)
        await asyncio.sleep(0.05)
        assert receiver.chunks == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]

        corked.write(b"next")  # a later step: its own send
        await _until(lambda: len(receiver.chunks) == 2)
        assert receiver.chunks[1] == b"next"
    finally:
        corked.close()


async def test_closing_sends_what_is_pending_first():
    corked, receiver = await _connected()
    corked.write(b"last words")
    corked.close()
    await _until(receiver.closed.is_set)
    assert b"".join(receiver.chunks) == b"last words"
    assert corked.is_closing()  # everything else is the real transport's
    corked.write(b"after close")  # dropped, as the transport itself would
    await asyncio.sleep(0.05)
    assert b"".join(receiver.chunks) == b"last words"
