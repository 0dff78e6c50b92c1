"""Bad input, by hand: huge bodies, deep nesting, invalid UTF-8, absurd n and max_tokens,
and slowloris-style slow clients, against the gateway process. Each gets a clear
OpenAI-format 4xx (never a 5xx or a hang) and the gateway keeps serving others."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from harness import MODEL, GatewayProcess, StandinWorker, assert_openai_error, chat_body

CHAT = "/v1/chat/completions"
MAX_BODY = 1024 * 1024
BODY_TIMEOUT_S = 2.0
HEADER_TIMEOUT_S = 3.0
MAX_HEADER = 32 * 1024


@pytest.fixture(scope="module")
def gw(tmp_path_factory) -> Iterator[GatewayProcess]:
    worker = StandinWorker(token_delay_s=0.0).start()
    gateway = GatewayProcess(tmp_path_factory.mktemp("hand"), [worker.url],
                             max_body_bytes=MAX_BODY, body_read_timeout_s=BODY_TIMEOUT_S,
                             header_timeout_s=HEADER_TIMEOUT_S, max_header_bytes=MAX_HEADER,
                             max_n=16).start()
    yield gateway
    gateway.stop()
    worker.kill()


def post_raw(gw: GatewayProcess, body: bytes,
             headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(gw.url + CHAT, content=body, timeout=30,
                      headers={"content-type": "application/json", **(headers or {})})


def test_huge_body_with_length_gets_413(gw):
    body = json.dumps(chat_body("x" * (4 * MAX_BODY))).encode()
    err = assert_openai_error(post_raw(gw, body), 413)
    assert err["code"] == "request_too_large"


def test_huge_chunked_body_without_length_gets_413(gw):
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "standin", "messages": [{"role": "user", "content": "'
        for _ in range(3 * MAX_BODY // 65536):
            yield b"y" * 65536
        yield b'"}]}'

    resp = httpx.post(gw.url + CHAT, content=chunks(), timeout=30)
    err = assert_openai_error(resp, 413)
    assert err["code"] == "request_too_large"


def test_lying_content_length_gets_413_before_any_body(gw):
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(f"POST {CHAT} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     f"content-length: {10**12}\r\n\r\n{{}}".encode())
        data = b""
        while b"}}" not in data:
            more = sock.recv(65536)
            if not more:
                break
            data += more
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), data[:300]
    assert json.loads(body)["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("shape", ["arrays", "objects", "messages"])
def test_deeply_nested_json_gets_400(gw, shape):
    depth = 100_000
    if shape == "arrays":
        nested = "[" * depth + "]" * depth
    elif shape == "objects":
        nested = '{"a":' * depth + "1" + "}" * depth
    else:
        nested = '[{"role": "user", "content": ' + '[{"a":' * 5000 + "1" + "}]" * 5000 + "}]"
    body = f'{{"model": "{MODEL}", "messages": {nested}}}'.encode()
    assert len(body) < MAX_BODY
    resp = post_raw(gw, body)
    assert resp.status_code == 400, resp.text[:300]
    assert_openai_error(resp, 400)


@pytest.mark.parametrize("raw", [
    b'{"model": "standin", "messages": [{"role": "user", "content": "\xff\xfe bad"}]}',
    b'{"model": "standin", "messages": [{"role": "user", "content": "\xc0\xaf overlong"}]}',
    b'{"model": "standin", "messages": [{"role": "user", "content": "\xed\xa0\x80 surrogate"}]}',
    b"\xef\xbb\xbf" + b'{"model": "standin"}',  # a UTF-8 byte-order mark, which JSON forbids
])
def test_invalid_utf8_gets_400(gw, raw):
    assert_openai_error(post_raw(gw, raw), 400)


def test_lone_surrogate_escapes_and_nan_get_400(gw):
    paired = b'{"model": "standin", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    assert post_raw(gw, paired).status_code == 200
    start = b'{"model": "standin", "messages": [{"role": "user", "content": "x"}], '
    for raw in (b'{"model": "standin", "messages": [{"role": "user", "content": "\\ud800 x"}]}',
                start + b'"user": "\\udfff"}',
                start + b'"unknown_field": NaN}',
                start + b'"temperature": NaN}',
                start + b'"max_tokens": Infinity}'):
        assert_openai_error(post_raw(gw, raw), 400)


def test_n_of_ten_thousand_gets_400(gw):
    for path, body in [(CHAT, chat_body(n=10_000)),
                       ("/v1/completions", {"model": MODEL, "prompt": "hi", "n": 10_000})]:
        err = assert_openai_error(httpx.post(gw.url + path, json=body, timeout=10), 400)
        assert err["param"] == "n"


@pytest.mark.parametrize("max_tokens", [10**9, 10**30])
@pytest.mark.parametrize("stream", [False, True])
def test_absurd_max_tokens_gets_400_quickly(gw, max_tokens, stream):
    # The worker refuses a length beyond its context window (vLLM's 400), and the gateway
    # relays that error; nothing waits for a billion tokens.
    start = time.monotonic()
    resp = httpx.post(gw.url + CHAT, json=chat_body(max_tokens=max_tokens, stream=stream),
                      timeout=30)
    assert_openai_error(resp, 400)
    assert time.monotonic() - start < 10


def _slow_body_client(port: int, declared: int, sent_every_s: float) -> tuple[int | None, float]:
    """Send headers, then trickle the body a byte at a time. Returns (status, seconds)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            f"POST {CHAT} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {declared}\r\n\r\n".encode()
        )
        sock.settimeout(sent_every_s)
        data = b""
        for _ in range(declared):
            try:
                sock.sendall(b" ")
            except OSError:
                break
            try:
                data += sock.recv(65536)
                if data:
                    break
            except TimeoutError:
                continue
        sock.settimeout(10)
        try:
            while b"\r\n\r\n" not in data:
                more = sock.recv(65536)
                if not more:
                    break
                data += more
        except OSError:
            pass
    elapsed = time.monotonic() - start
    if not data.startswith(b"HTTP/1.1 "):
        return None, elapsed
    status = int(data.split(b" ")[1])
    _, _, rest = data.partition(b"\r\n\r\n")
    if status == 400:
        assert b'"type": "invalid_request_error"' in rest or b"body_timeout" in rest or not rest
    return status, elapsed


async def test_slowloris_clients_are_cut_off_and_do_not_starve_others(gw):
    # 40 clients trickle their bodies; 150 more open connections and never finish headers.
    idle: list[socket.socket] = []
    opened = time.monotonic()
    try:
        for _ in range(150):
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-slow: ")
            idle.append(s)
        slow = [asyncio.to_thread(_slow_body_client, gw.port, 500, 0.25) for _ in range(40)]
        slow_task = asyncio.gather(*slow)
        await asyncio.sleep(0.5)
        # Meanwhile ordinary clients are served.
        async with httpx.AsyncClient(timeout=10) as client:
            normal = await asyncio.gather(*(
                client.post(gw.url + CHAT, json=chat_body("LEN=3")) for _ in range(20)))
        assert [r.status_code for r in normal] == [200] * 20
        results = await slow_task
        # The connections that never finished their headers are cut off too.
        await asyncio.sleep(max(0.0, HEADER_TIMEOUT_S + 1.0 - (time.monotonic() - opened)))
        answers = await asyncio.gather(*(asyncio.to_thread(_read_all, s) for s in idle))
        assert all(a.startswith(b"HTTP/1.1 400") and b"invalid_http" in a for a in answers), (
            Counter(a[:40] for a in answers))
    finally:
        for s in idle:
            s.close()
    for status, elapsed in results:
        # Cut off with a 400 once the body deadline passes, well before the body would end.
        assert status == 400, results
        assert BODY_TIMEOUT_S - 0.5 <= elapsed <= BODY_TIMEOUT_S + 8, results
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(gw.url + "/health")).status_code == 200


def _read_all(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while True:
        try:
            more = sock.recv(65536)
        except OSError:
            break
        if not more:
            break
        data += more
    return data


def test_huge_header_section_gets_400_and_is_not_buffered(gw):
    rss_before = gw.rss_bytes()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: ")
        sent = 0
        try:
            while sent < 64 * 2**20:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            pass  # the gateway closed the connection, as it should
        answer = _read_all(sock)
    assert sent < 8 * 2**20, sent  # cut off long before 64 MiB
    assert answer.startswith(b"HTTP/1.1 400") and b"invalid_http" in answer, answer[:200]
    assert gw.rss_bytes() - rss_before < 16 * 2**20


def _raw_exchange(port: int, request: bytes) -> tuple[bytes, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = _read_all(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


@pytest.mark.parametrize("request_bytes", [
    b"GET /health HTTP/1.1\r\nhost: x\r\nno colon here\r\n\r\n",
    (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
     b"zz\r\n{}\r\n0\r\n\r\n"),
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n",  # a TLS hello
])
def test_malformed_http_gets_an_openai_format_400(gw, request_bytes):
    head, body = _raw_exchange(gw.port, request_bytes)
    assert head.startswith(b"HTTP/1.1 400"), head
    err = json.loads(body)["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "invalid_http"
    assert httpx.get(gw.url + "/health", timeout=5).status_code == 200
