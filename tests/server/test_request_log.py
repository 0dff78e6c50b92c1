"""The request log: it rotates by size, and a reader loses no record silently."""

from __future__ import annotations

import httpx
import pytest
from harness import chat_body, wait_until

from server.request_log import read_request_log

CHAT = "/v1/chat/completions"


def _log_files(path) -> list:
    return sorted(path.parent.glob(path.name + "*"))


def test_the_request_log_rotates_by_size_and_keeps_its_backups(
    standin_factory, gateway_factory, tmp_path
):
    worker = standin_factory(token_delay_s=0.0)
    path = tmp_path / "requests.jsonl"
    gw = gateway_factory([worker.url], request_log_path=path, request_log_max_bytes=4096,
                         request_log_backups=2)
    with httpx.Client(timeout=10) as client:
        for i in range(40):  # about 700 bytes a record: some 7 files' worth
            assert client.post(gw.url + CHAT, json=chat_body(f"r{i}")).status_code == 200
    assert wait_until(lambda: [p.name for p in _log_files(path)] == [
        "requests.jsonl", "requests.jsonl.1", "requests.jsonl.2"])
    rotated = [read_request_log(p) for p in (path.with_name("requests.jsonl.2"),
                                             path.with_name("requests.jsonl.1"))]
    for records in rotated:
        assert records and sum(len(str(r)) for r in records) >= 3000
    # Newest last, oldest in the highest-numbered file; nothing out of order.
    ids = [r["request_id"] for records in (*rotated, read_request_log(path)) for r in records]
    assert len(ids) == len(set(ids))
    assert all(path.with_name(f"requests.jsonl.{i}").stat().st_size <= 4096 + 1024
               for i in (1, 2))


def test_reading_skips_only_a_torn_last_line(tmp_path):
    # (``MalformedRequestLog``, a ``ValueError``, names the file and line.)
    path = tmp_path / "log.jsonl"
    path.write_text('{"request_id": "a"}\n{"request_id": "b"}\n{"request_')
    assert [r["request_id"] for r in read_request_log(path)] == ["a", "b"]
    path.write_text('{"request_id": "a"}\n{"request_\n{"request_id": "c"}\n')
    with pytest.raises(ValueError, match=r"log.jsonl:2"):
        read_request_log(path)
    path.write_text('{"request_id": "a"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"log.jsonl:2"):
        read_request_log(path)
    # A complete last line that is not JSON is damage, not a torn write.
    path.write_text('{"request_id": "a"}\nnot json\n')
    with pytest.raises(ValueError):
        read_request_log(path)


def test_a_gateway_restarted_after_a_torn_write_starts_its_records_on_a_line_of_their_own(
    standin_factory, gateway_factory, tmp_path
):
    worker = standin_factory(token_delay_s=0.0)
    path = tmp_path / "requests.jsonl"
    gw = gateway_factory([worker.url], request_log_path=path)
    assert httpx.post(gw.url + CHAT, json=chat_body("before"), timeout=10).status_code == 200
    assert wait_until(lambda: len(read_request_log(path)) == 1)
    gw.stop()
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"request_id":"torn","arri')  # the crash cut this record short
    gw = gateway_factory([worker.url], request_log_path=path)
    assert httpx.post(gw.url + CHAT, json=chat_body("after"), timeout=10).status_code == 200
    assert wait_until(lambda: len(read_request_log(path)) == 2)
    records = read_request_log(path)
    assert "torn" not in [r["request_id"] for r in records]
    assert path.read_text(encoding="utf-8").count("\n") == 2
