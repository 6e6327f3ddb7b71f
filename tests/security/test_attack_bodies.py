"""Attacks with request bodies on the running service, on SQLite and PostgreSQL: the depth check
that froze the event loop (finding 1), intake amplification (5), slow connections, repeated
keys and NUL characters, and refused bodies audited with their client (11)."""

import socket
import threading
import time
from datetime import UTC, datetime

import orjson
import pytest

from adapter.intake.records import MOST_RATE_CHANGES
from adapter.security.json_depth import json_depth
from tests.conftest import session, vitals
from tests.security.conftest import RunningService, is_outcome

ESCAPED_QUOTES = b'"' + b'\\"' * 24_000
"""48 KB: a quote, then escaped quotes and no closing one. The old depth check's pattern read
the rest of the body again from each of them (~24 s, with every other request waiting)."""


def _raw(service: RunningService, request: bytes, wait: float = 5.0) -> bytes:
    """Send bytes as they are on one connection; what comes back before it closes or `wait`."""
    host, port = service.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as connection:
        connection.sendall(request)
        answer = b""
        try:
            while chunk := connection.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and _complete(answer):
                    break
        except TimeoutError:
            pass
    return answer


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def test_the_depth_check_takes_linear_time() -> None:
    timings = []
    for size in (100_000, 1_000_000):
        body = b'"' + b'\\"' * size
        began = time.perf_counter()
        assert json_depth(body) == 0
        timings.append(time.perf_counter() - began)

    assert timings[1] < 0.5, timings  # the old check: ~1.6 s at 12,000 escaped quotes
    assert json_depth(b'{"a": "\\"[[[", "b": [[1]]}') == 3


def test_an_unauthenticated_body_is_never_read(running: RunningService) -> None:
    with running.client() as client:
        began = time.perf_counter()
        answer = client.post(
            "/api/v1/records",
            content=ESCAPED_QUOTES,
            headers={"content-type": "application/json"},
        )
        took = time.perf_counter() - began

    # Headers that promise 5 MB and no body at all: the answer comes without waiting for it.
    promised = _raw(
        running,
        b"POST /api/v1/records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5000000\r\n\r\n",
        wait=3.0,
    )

    assert answer.status_code == 401 and is_outcome(answer) and took < 1.0
    assert promised.startswith(b"HTTP/1.1 401")


def test_a_hostile_body_holds_no_other_request(running: RunningService) -> None:
    hostile = b'"' + b'\\"' * 2_000_000  # 4 MB, within the body limit
    answers: dict[str, int] = {}

    def send() -> None:
        with running.signed_in() as client:
            answers["hostile"] = client.post(
                "/api/v1/records", content=hostile, headers={"content-type": "application/json"}
            ).status_code

    sender = threading.Thread(target=send)
    with running.client() as client:
        began = time.perf_counter()
        sender.start()
        health = []
        while sender.is_alive() and time.perf_counter() - began < 20:
            asked = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            health.append(time.perf_counter() - asked)
        sender.join()
        with running.signed_in() as signed_in:
            small = signed_in.post(
                "/api/v1/records",
                content=ESCAPED_QUOTES,
                headers={"content-type": "application/json"},
            )

    assert answers["hostile"] == 400
    assert max(health) < 0.5, max(health)
    assert small.status_code == 400 and small.elapsed.total_seconds() < 1.0


def test_one_session_cannot_become_a_hundred_thousand_resources(running: RunningService) -> None:
    change = {"at": "2026-11-20T10:00:00-05:00", "rate_mg_per_kg_per_hr": 0.5}
    flood = session(id="SES-FLOOD", rate_changes=[change] * 100_000)
    most = session(id="SES-MOST", rate_changes=[change] * MOST_RATE_CHANGES)

    with running.signed_in() as client:
        refused = client.post(
            "/api/v1/records",
            content=orjson.dumps(flood),
            headers={"content-type": "application/json"},
        )
        accepted = client.post("/api/v1/records", json=most)

    error = refused.json()["results"][0]["errors"][0]
    assert refused.status_code == 422 and error["field"] == "rate_changes"
    assert str(MOST_RATE_CHANGES) in error["reason"]
    assert running.runtime.store.get("infusion_session", "SES-FLOOD") is None
    assert accepted.status_code == 200


def test_records_per_request_and_the_error_report_are_bounded(running: RunningService) -> None:
    limit = running.runtime.settings.intake_max_records
    with running.signed_in() as client:
        too_many = client.post(
            "/api/v1/records",
            content=b"[" + b",".join([b"{}"] * (limit + 1)) + b"]",
            headers={"content-type": "application/json"},
        )
        began = time.perf_counter()
        rejected = client.post(
            "/api/v1/records",
            content=b"[" + b",".join([b"{}"] * limit) + b"]",
            headers={"content-type": "application/json"},
        )
        took = time.perf_counter() - began

    body = rejected.json()
    shown = sum(len(result.get("errors", [])) for result in body["results"])
    assert too_many.status_code == 413 and is_outcome(too_many)
    assert str(limit) in too_many.json()["issue"][0]["diagnostics"]
    assert rejected.status_code == 422 and body["summary"]["rejected"] == limit
    assert shown == 100 and body["errors_not_shown"] > 0
    assert len(rejected.content) < 2_000_000 and took < 10, (len(rejected.content), took)


def test_repeated_keys_and_nul_characters_are_refused_per_record(running: RunningService) -> None:
    twice = orjson.dumps(vitals(id="VIT-TWICE"))[:-1] + b', "heart_rate": 9999}'
    nul = vitals(id="VIT-NUL", device="monitor\u00002")
    body = b"[" + twice + b"," + orjson.dumps(nul) + b"," + orjson.dumps(vitals(id="VIT-OK")) + b"]"

    with running.signed_in() as client:
        answer = client.post(
            "/api/v1/records", content=body, headers={"content-type": "application/json"}
        )

    results = answer.json()["results"]
    assert answer.status_code == 207
    assert results[0]["errors"] == [
        {"field": "heart_rate", "reason": "given more than once in the same object"}
    ]
    assert results[1]["errors"][0]["field"] == "device"
    assert "NUL" in results[1]["errors"][0]["reason"]
    assert results[2]["outcome"] == "created"


def test_refused_bodies_are_audited_with_their_client(running: RunningService) -> None:
    too_deep = b'{"a":' * 40 + b"1" + b"}" * 40
    too_big = b"x" * (running.runtime.settings.max_body_bytes + 1)
    began = datetime.now(UTC)
    with running.signed_in() as client:
        deep = client.post(
            "/api/v1/records", content=too_deep, headers={"content-type": "application/json"}
        )
        big = client.post(
            "/api/v1/records", content=too_big, headers={"content-type": "application/json"}
        )

    entries = [e for e in running.audit() if e.recorded_at >= began and e.method == "POST"]
    assert deep.status_code == 400 and big.status_code == 413
    key_client = running.runtime.clients.by_key(running.credentials.api_key)
    assert key_client is not None
    assert sorted((e.outcome, e.client_id, e.interaction) for e in entries) == [
        (400, key_client.id, "intake"),
        (413, key_client.id, "intake"),
    ]


def test_slow_headers_and_slow_bodies_do_not_keep_a_connection(running: RunningService) -> None:
    began = time.perf_counter()
    headers_only = _raw(running, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", wait=5.0)
    headers_took = time.perf_counter() - began
    key = running.credentials.api_key.encode()
    began = time.perf_counter()
    part_of_body = _raw(
        running,
        b"POST /api/v1/records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + key + b"\r\nContent-Length: 1000\r\n\r\n[{",
        wait=5.0,
    )
    body_took = time.perf_counter() - began

    assert headers_only.startswith(b"HTTP/1.1 408") and headers_took < 3
    assert part_of_body.startswith(b"HTTP/1.1 408") and body_took < 3


def _trickled(service: RunningService, head: bytes, seconds: float) -> tuple[bytes, bool]:
    """A request's head with a huge declared body, then a byte of it every 0.2 s: the answer,
    and whether the server closed the connection within `seconds` of it."""
    host, port = service.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=seconds) as connection:
        connection.sendall(head + b"Content-Length: 100000000\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or not _complete(answer):
            answer += connection.recv(65536)
        connection.settimeout(0.2)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                connection.sendall(b" ")
                if connection.recv(1) == b"":
                    return answer, True
            except TimeoutError:
                continue
            except OSError:  # reset: closed all the same
                return answer, True
        return answer, False


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"POST /api/v1/records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n", 401),
        (
            b"POST /api/v1/records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer {key}\r\n",
            413,
        ),
    ],
)
def test_a_refused_sender_trickling_its_body_is_not_kept_connected(
    running: RunningService, head: bytes, status: int
) -> None:
    """Answered without its body read (no credentials, a body over the limit), a sender that
    keeps sending a byte now and then would hold its connection for ever, and thousands of
    them every descriptor the service has: the connection is closed after the answer."""
    head = head.replace(b"{key}", running.credentials.api_key.encode())

    answer, closed = _trickled(running, head, seconds=3.0)

    assert answer.startswith(b"HTTP/1.1 %d" % status), answer[:100]
    assert b"connection: close" in answer.lower()
    assert closed
