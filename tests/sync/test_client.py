"""How the EHR client reads an EHR's Retry-After and Location, and which failed requests it
repeats."""

import socket
import struct
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from adapter.sync import ehr_ids
from adapter.sync.auth import NoAuth
from adapter.sync.client import Breaker, EhrClient, _retry_after
from adapter.sync.errors import TemporaryEhrError


@pytest.mark.parametrize(
    ("value", "expected"), [("7", 7.0), (" 120 ", 120.0), ("", None), (None, None)]
)
def test_retry_after_in_seconds(value: str | None, expected: float | None) -> None:
    assert _retry_after(value) == expected


@pytest.mark.parametrize("value", ["\u00b2", "soon", "-3", "1.5"])
def test_a_retry_after_that_is_not_seconds_or_a_date_is_ignored(value: str) -> None:
    assert _retry_after(value) is None


def test_retry_after_as_an_http_date() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)

    waited = _retry_after(later)

    assert waited is not None and 80 <= waited <= 91


def _client(base_url: str, slept: list[float]) -> EhrClient:
    return EhrClient(
        base_url=base_url,
        auth=NoAuth(),
        timeout=2.0,
        attempts=3,
        max_wait=0.0,
        breaker=Breaker(10),
        sleep=slept.append,
    )


def test_a_create_whose_connection_never_opened_is_repeated() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens once it is closed
    slept: list[float] = []

    with pytest.raises(TemporaryEhrError) as raised:
        _client(f"http://127.0.0.1:{port}/fhir", slept).request(
            "POST", "Observation", body={"resourceType": "Observation"}, idempotent=False
        )

    assert raised.value.sent is False
    assert len(slept) == 2  # three attempts: the EHR surely never saw the create


def test_a_create_cut_off_after_it_was_sent_is_not_repeated() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        received: list[bytes] = []

        def cut_off() -> None:
            connection, _ = listener.accept()
            received.append(connection.recv(65536))
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.close()  # a reset, no answer

        server = threading.Thread(target=cut_off)
        server.start()
        slept: list[float] = []
        with pytest.raises(TemporaryEhrError) as raised:
            _client(f"http://127.0.0.1:{port}/fhir", slept).request(
                "POST", "Observation", body={"resourceType": "Observation"}, idempotent=False
            )
        server.join(5)

    assert received and received[0].startswith(b"POST /fhir/Observation")
    assert raised.value.sent is True
    assert slept == []  # the caller searches the EHR before any second create


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("Observation/pro-2/_history/3", ("pro-2", "3")),
        ("http://ehr.example/fhir/Observation/pro-2/_history/3", ("pro-2", "3")),
        ("http://ehr.example/fhir/Observation/pro-2?_format=json?_format=json", ("pro-2", None)),
        ("Observation/pro-2/_history/3?_format=json", ("pro-2", "3")),
        ("https://ehr.example/fhir/Observation/pro-2/", ("pro-2", None)),
        ("Procedure/pro-2/_history/3", (None, None)),
        ("Observation/not an id/_history/3", (None, None)),
        ("Observation/" + "x" * 65, (None, None)),
        ("", (None, None)),
        (None, (None, None)),
    ],
)
def test_a_location_is_read_as_fhir_defines_it(
    location: str | None, expected: tuple[str | None, str | None]
) -> None:
    assert ehr_ids.location("Observation", location) == expected


def test_an_update_keeps_the_id_it_was_sent_to_whatever_the_answer_says() -> None:
    answer = {"location": None, "etag": 'W/"7"'}

    assert ehr_ids.identity("Observation", None, answer, updated="ehr-1") == ("ehr-1", "7")
    assert ehr_ids.identity("Observation", None, answer) == (None, "7")
    assert ehr_ids.identity(
        "Observation", {"resourceType": "Observation", "id": "a b"}, answer
    ) == (
        None,
        "7",
    )
