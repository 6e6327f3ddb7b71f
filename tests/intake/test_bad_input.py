"""Each kind of bad input is refused with its field and reason, and stores nothing."""

import gzip
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from adapter.app import create_app
from adapter.settings import Settings
from tests.conftest import adverse_event, fasting, ndjson, session, sign_in, vitals

NDJSON = {"content-type": "application/x-ndjson"}

REFUSED: list[tuple[str, dict[str, Any], str, str]] = [
    ("unknown record type", vitals(record_type="medication"), "record_type", "unknown value"),
    ("missing field", vitals(taken_at=None), "taken_at", "field required"),
    ("missing patient mrn", vitals(patient={"family": "Doe"}), "patient.mrn", "field required"),
    ("mistyped field", vitals(heart_rate="84"), "heart_rate", "valid number"),
    ("mistyped revision", vitals(revision="1"), "revision", "valid integer"),
    ("revision zero", vitals(revision=0), "revision", "greater than or equal to 1"),
    ("boolean as number", vitals(spo2=True), "spo2", "valid number"),
    ("id with forbidden characters", vitals(id="VIT 1;DROP"), "id", "letters, digits"),
    ("id too long", vitals(id="V" * 65), "id", "1 to 64 characters"),
    ("session id with slash", vitals(session_id="SES/1"), "session_id", "letters, digits"),
    (
        "timestamp without offset",
        vitals(taken_at="2026-11-20T09:20:00"),
        "taken_at",
        "no UTC offset",
    ),
    ("not a timestamp", vitals(taken_at="yesterday"), "taken_at", "not an ISO 8601"),
    # Digits alone would be read as seconds (or milliseconds) since 1970, a date in 1970.
    ("digits for a date", vitals(taken_at="20261120"), "taken_at", "not an ISO 8601"),
    ("a blank MRN", vitals(patient={"mrn": "   "}), "patient.mrn", "mrn is blank"),
    ("a padded MRN", vitals(patient={"mrn": " 100234 "}), "patient.mrn", "spaces before"),
    ("digits for a year", vitals(taken_at="2026"), "taken_at", "not an ISO 8601"),
    ("milliseconds", vitals(taken_at="1763650200000"), "taken_at", "not an ISO 8601"),
    ("a date alone", vitals(taken_at="2026-11-20"), "taken_at", "not an ISO 8601"),
    ("a leap second", vitals(taken_at="2026-06-30T23:59:60Z"), "taken_at", "leap second (:60)"),
    ("61 seconds", vitals(taken_at="2026-11-20T09:20:61Z"), "taken_at", "out of range"),
    (
        "an offset of 99 hours",
        vitals(taken_at="2026-11-20T09:20:00+99:00"),
        "taken_at",
        "out of range",
    ),
    (
        "an offset no place has",
        vitals(taken_at="2026-11-20T09:30:00+23:59"),
        "taken_at",
        "beyond +14:00",
    ),
    ("unknown phase", vitals(phase="during"), "phase", "'baseline', 'intra'"),
    ("systolic without diastolic", vitals(diastolic=None), "diastolic", "come together"),
    ("diastolic without systolic", vitals(systolic=None), "systolic", "come together"),
    ("systolic below diastolic", vitals(systolic=80, diastolic=90), "systolic", "higher than"),
    ("heart rate 0", vitals(heart_rate=0), "heart_rate", "not a plausible value"),
    ("heart rate 400", vitals(heart_rate=400), "heart_rate", "not a plausible value"),
    ("SpO2 over 100", vitals(spo2=101), "spo2", "not a plausible value"),
    ("pain 11", vitals(pain=11), "pain", "less than or equal to 10"),
    ("pain as decimal", vitals(pain=4.5), "pain", "valid integer"),
    ("RASS +7", vitals(sedation_rass=7), "sedation_rass", "less than or equal to 4"),
    ("RASS -6", vitals(sedation_rass=-6), "sedation_rass", "greater than or equal to -5"),
    (
        "temperature 60 C",
        vitals(temperature={"value": 60, "unit": "C"}),
        "temperature.value",
        "not a plausible value",
    ),
    (
        "temperature unit K",
        vitals(temperature={"value": 310, "unit": "K"}),
        "temperature.unit",
        "'C' or 'F'",
    ),
    (
        "no measure at all",
        vitals(heart_rate=None, systolic=None, diastolic=None, spo2=None),
        "(record)",
        "no measure present",
    ),
    (
        "session ends before it starts",
        session(infusion_end="2026-11-20T08:00:00-05:00"),
        "infusion_end",
        "before infusion_start",
    ),
    (
        "discharged before the infusion ended",
        session(discharged_at="2026-11-20T12:00:00-05:00"),
        "discharged_at",
        "before infusion_end",
    ),
    (
        "rate change after the infusion ended",
        session(rate_changes=[{"at": "2026-11-20T14:00:00-05:00", "rate_mg_per_kg_per_hr": 0.3}]),
        "rate_changes[0].at",
        "after infusion_end",
    ),
    (
        "rate change before the infusion started",
        session(rate_changes=[{"at": "2026-11-20T09:00:00-05:00", "rate_mg_per_kg_per_hr": 0.3}]),
        "rate_changes[0].at",
        "before infusion_start",
    ),
    (
        "completed without start",
        session(infusion_start=None, infusion_end=None),
        "infusion_start",
        "required when status is completed",
    ),
    ("dose weight 0.5 kg", session(dose={"weight_kg": 0.5}), "dose.weight_kg", "not a plausible"),
    ("unknown session status", session(status="done"), "status", "'scheduled'"),
]


@pytest.mark.parametrize(
    ("case", "record", "field", "reason"), REFUSED, ids=[c[0] for c in REFUSED]
)
def test_bad_record_is_refused_with_field_and_reason(
    client: TestClient, case: str, record: dict[str, Any], field: str, reason: str
) -> None:
    response = client.post("/api/v1/records", json=record)

    assert response.status_code == 422, case
    result = response.json()["results"][0]
    assert result["outcome"] == "rejected"
    assert any(e["field"] == field and reason in e["reason"] for e in result["errors"]), result
    for record_type in ("vitals", "infusion_session"):
        for source_id in ("VIT-1", "SES-1"):
            assert client.get(f"/api/v1/records/{record_type}/{source_id}").status_code == 404


NUMBERS_NOT_HELD = [
    ("1.0e-400", "etco2", "too small for a number to hold"),
    ("-1E-400", "etco2", "too small for a number to hold"),
    ("0." + "0" * 400 + "1", "etco2", "too small for a number to hold"),
    ("1e400", "etco2", "too large for a number to hold"),
]


def _with_etco2(written: str, **fields: Any) -> bytes:
    return orjson.dumps(vitals(**fields)).replace(b'"spo2":', f'"etco2":{written},"spo2":'.encode())


@pytest.mark.parametrize(("written", "field", "reason"), NUMBERS_NOT_HELD)
def test_a_number_a_float_reads_as_0_or_infinity_is_refused(
    client: TestClient, written: str, field: str, reason: str
) -> None:
    """An ETCO2 of 1.0e-400 would be kept as 0, and flagged as no breathing."""
    response = client.post("/api/v1/records", content=_with_etco2(written), headers=NDJSON)

    assert response.status_code == 422
    errors = response.json()["results"][0]["errors"]
    assert any(e["field"] == field and reason in e["reason"] for e in errors), errors
    assert client.get("/api/v1/records/vitals/VIT-1").status_code == 404


HELD = [
    ("4.5e1", 45.0),
    ("4.50E+1", 45.0),
    ("0.30000000000000004", 0.30000000000000004),
    ("36.600000000000001", 36.6),  # 17 digits, as C's %.17g writes a double
    ("45.0000000000000000001", 45.0),  # more digits than a float keeps: the nearest float
    ("4.9e-324", 5e-324),  # the smallest float, as Java writes it
]


@pytest.mark.parametrize(("written", "read"), HELD)
def test_a_number_a_float_holds_in_any_form_is_accepted(
    client: TestClient, written: str, read: float
) -> None:
    response = client.post("/api/v1/records", content=_with_etco2(written), headers=NDJSON)

    assert response.status_code == 200, response.json()
    stored = client.get("/api/v1/records/vitals/VIT-1").json()
    assert stored["record"]["etco2"] == read


def test_a_number_out_of_reach_in_a_field_outside_the_format_is_kept_as_sent(
    client: TestClient,
) -> None:
    body = _with_etco2("38", vendor_gain=[1, 2]).replace(b"[1,2]", b"[1,1e-400]")

    response = client.post("/api/v1/records", content=body, headers=NDJSON)

    assert response.status_code == 200, response.json()
    assert response.json()["results"][0]["warnings"] == [
        "vendor_gain: not in the record format; kept in the stored record, not mapped"
    ]


@pytest.mark.parametrize(
    ("written", "reason"),
    [("1e400", "too large"), ("123456789012345678901234567890", "beyond 64 bits")],
)
def test_a_number_beyond_reach_outside_the_format_is_refused_as_it_could_not_be_read_back(
    client: TestClient, written: str, reason: str
) -> None:
    body = _with_etco2("38", vendor={"gain": [1, 2]}).replace(b"[1,2]", f"[1,{written}]".encode())

    response = client.post("/api/v1/records", content=body, headers=NDJSON)

    assert response.status_code == 422
    result = response.json()["results"][0]
    assert (result["record_type"], result["id"]) == ("vitals", "VIT-1")
    assert any(e["field"] == "vendor.gain[1]" and reason in e["reason"] for e in result["errors"])


LONG_INTEGER = "1" * 5000
"""Longer than the interpreter makes an int of (4,300 digits): the schema's parser fails on it
naming no field."""


@pytest.mark.parametrize("sign", ["", "-"])
def test_an_integer_of_thousands_of_digits_is_refused_naming_its_record_and_field(
    client: TestClient, sign: str
) -> None:
    in_format = _with_etco2(sign + LONG_INTEGER)
    outside = _with_etco2("38", id="VIT-2", vendor={"gain": [1, 2]}).replace(
        b"[1,2]", f"[1,{sign}{LONG_INTEGER}]".encode()
    )

    response = client.post("/api/v1/records", content=in_format + b"\n" + outside, headers=NDJSON)

    assert response.status_code == 422
    first, second = response.json()["results"]
    assert (first["id"], first["errors"][0]["field"]) == ("VIT-1", "etco2")
    assert (second["id"], second["errors"][0]["field"]) == ("VIT-2", "vendor.gain[1]")
    for result in (first, second):
        assert [e["reason"] for e in result["errors"]] == ["too large for a number to hold"]


@pytest.mark.parametrize("written", ["1e400", LONG_INTEGER])
def test_in_a_json_array_a_number_beyond_reach_refuses_its_record_alone(
    client: TestClient, written: str
) -> None:
    """orjson refuses 1e400, and any integer beyond 64 bits, outright; the body is read again,
    and the record answers for it."""
    beyond = _with_etco2(written, id="VIT-2")
    body = b"[" + orjson.dumps(vitals()) + b"," + beyond + b"]"

    response = client.post(
        "/api/v1/records", content=body, headers={"content-type": "application/json"}
    )

    assert response.status_code == 207, response.json()
    first, second = response.json()["results"]
    assert first["outcome"] == "created"
    assert (second["outcome"], second["id"]) == ("rejected", "VIT-2")
    assert second["errors"][0]["field"] == "etco2"


def _from_now(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat()


IN_THE_FUTURE = [
    ("vitals", lambda: vitals(taken_at=_from_now(days=2)), "taken_at"),
    ("a mistyped year", lambda: vitals(taken_at="2062-11-20T09:20:00-05:00"), "taken_at"),
    ("adverse event", lambda: adverse_event(onset_at=_from_now(days=3)), "onset_at"),
    (
        "infusion end",
        lambda: session(infusion_end=_from_now(days=2), scheduled_start=_from_now(hours=-2)),
        "infusion_end",
    ),
    ("attestation", lambda: fasting(attested_at=_from_now(days=400)), "attested_at"),
]


@pytest.mark.parametrize(
    ("record", "field"), [c[1:] for c in IN_THE_FUTURE], ids=[c[0] for c in IN_THE_FUTURE]
)
def test_a_moment_more_than_a_day_ahead_of_the_clock_is_refused(
    client: TestClient, record: Any, field: str
) -> None:
    """A year mistyped would chart a vital sign in 2062: nothing charted has happened yet."""
    response = client.post("/api/v1/records", json=record())

    assert response.status_code == 422
    errors = response.json()["results"][0]["errors"]
    assert any(e["field"] == field and "in the future" in e["reason"] for e in errors), errors


def test_how_far_ahead_a_moment_may_lie_is_the_limits_files(settings: Settings) -> None:
    limits = settings.mappings_dir / "limits.yaml"
    limits.write_text(limits.read_text().replace("ahead_hours: 24", "ahead_hours: 72"))
    with TestClient(create_app(settings, background=False)) as service:
        sign_in(service)
        two_days = service.post("/api/v1/records", json=vitals(taken_at=_from_now(days=2)))
        four_days = service.post(
            "/api/v1/records", json=vitals(id="VIT-4", taken_at=_from_now(days=4))
        )

    assert two_days.json()["results"][0]["outcome"] == "created", two_days.json()
    errors = four_days.json()["results"][0]["errors"]
    assert errors == [
        {
            "field": "taken_at",
            "reason": "is in the future: more than 72 hours past the adapter's clock",
        }
    ], errors


@pytest.mark.parametrize(
    "record",
    [
        lambda born: vitals(patient={"mrn": "900001", "birth_date": born}, taken_at=_from_now()),
        lambda born: session(
            status="scheduled",
            scheduled_start=_from_now(days=3),
            patient={"mrn": "900001", "birth_date": born},
        ),
    ],
)
def test_a_patient_born_after_today_is_refused(client: TestClient, record: Any) -> None:
    """A birth date of 2090 is a year mistyped, as a vital sign charted in 2062 is."""
    later = (datetime.now(UTC) + timedelta(days=3)).date().isoformat()
    today = datetime.now(UTC).date().isoformat()

    refused = client.post("/api/v1/records", json=record(later))
    born_today = vitals(
        id="TODAY-1", patient={"mrn": "9", "birth_date": today}, taken_at=_from_now()
    )
    accepted = client.post("/api/v1/records", json=born_today)

    assert refused.status_code == 422
    errors = refused.json()["results"][0]["errors"]
    assert errors == [{"field": "patient.birth_date", "reason": "is after today"}], errors
    assert accepted.status_code == 200, accepted.json()


@pytest.mark.parametrize(
    ("record", "field", "reason"),
    [
        (vitals(taken_at="0026-11-20T09:20:00-05:00"), "taken_at", "is before 1900"),
        (
            vitals(
                taken_at="1985-11-20T09:20:00-05:00",
                patient={"mrn": "9", "birth_date": "1990-05-01"},
            ),
            "taken_at",
            "is before the patient's birth date",
        ),
        (
            session(
                rate_changes=[{"at": "1026-11-20T09:30:00-05:00", "rate_mg_per_kg_per_hr": 0.3}]
            ),
            "rate_changes[0].at",
            "is before 1900",
        ),
        (session(scheduled_start="0026-11-20T09:00:00-05:00"), "scheduled_start", "is before 1900"),
        (
            session(status="scheduled", scheduled_start="1850-11-20T09:00:00-05:00"),
            "scheduled_start",
            "is before 1900",
        ),
        (
            vitals(patient={"mrn": "9", "birth_date": "0001-01-01"}),
            "patient.birth_date",
            "is before 1900",
        ),
    ],
)
def test_a_moment_before_1900_or_before_the_patients_birth_is_refused(
    client: TestClient, record: dict[str, Any], field: str, reason: str
) -> None:
    response = client.post("/api/v1/records", json=record)

    assert response.status_code == 422
    errors = response.json()["results"][0]["errors"]
    assert {"field": field, "reason": reason} in errors, errors


def test_a_record_dated_before_1900_can_be_withdrawn(client: TestClient) -> None:
    withdrawal = vitals(taken_at="0026-11-20T09:20:00-05:00", status="entered_in_error")

    response = client.post("/api/v1/records", json=withdrawal)

    assert response.status_code == 200, response.json()


def test_a_moment_ahead_and_an_impossible_value_are_both_named(client: TestClient) -> None:
    response = client.post("/api/v1/records", json=vitals(taken_at=_from_now(days=2), spo2=101))

    fields = {e["field"] for e in response.json()["results"][0]["errors"]}
    assert fields == {"taken_at", "spo2"}


def test_a_record_dated_ahead_can_be_withdrawn(client: TestClient) -> None:
    """Stored before intake refused it, a record dated in the future is taken back the way any
    record is: the same record, a higher revision, entered in error."""
    ahead = vitals(taken_at=_from_now(days=30))
    withdrawn = {**ahead, "revision": 2, "status": "entered_in_error"}

    response = client.post("/api/v1/records", json=withdrawn)

    assert response.status_code == 200, response.json()


def test_a_clock_hours_ahead_and_a_session_planned_next_week_are_accepted(
    client: TestClient,
) -> None:
    planned = session(
        status="scheduled",
        scheduled_start=_from_now(days=7),
        infusion_start=_from_now(days=7, minutes=5),
        infusion_end=None,
        dose=None,
    )
    ahead = vitals(taken_at=_from_now(hours=20))

    response = client.post("/api/v1/records", content=ndjson(planned, ahead), headers=NDJSON)

    assert response.status_code == 200, response.json()
    assert [r["outcome"] for r in response.json()["results"]] == ["created", "created"]


@pytest.mark.parametrize(("offset", "utc"), [("+05", "04:20"), ("-03", "12:20")])
def test_an_offset_of_hours_alone_is_read_as_whole_hours(
    client: TestClient, offset: str, utc: str
) -> None:
    written = vitals(taken_at=f"2026-11-20T09:20:00{offset}")

    response = client.post("/api/v1/records", content=ndjson(written), headers=NDJSON)

    assert response.status_code == 200, response.json()
    stored = client.get("/api/v1/records/vitals/VIT-1").json()["record"]
    moment = datetime.fromisoformat(stored["taken_at"])
    assert moment.astimezone(UTC).strftime("%H:%M") == utc


def test_abnormal_but_possible_values_are_accepted(client: TestClient) -> None:
    record = vitals(
        systolic=190,
        diastolic=110,
        heart_rate=135,
        spo2=88,
        temperature={"value": 103.1, "unit": "F"},
    )

    response = client.post("/api/v1/records", json=record)

    assert response.status_code == 200
    assert response.json()["results"][0]["outcome"] == "created"


def test_unknown_local_codes_are_not_the_senders_fault(client: TestClient) -> None:
    record = session(indication="WHIPLASH", site="NECK", drug="ESKETAMINE")

    response = client.post("/api/v1/records", json=record)

    assert response.status_code == 200
    assert response.json()["results"][0]["outcome"] == "created"


def test_fields_outside_the_format_are_kept_and_reported(client: TestClient) -> None:
    record = vitals(cuff_size="adult-large", patient={"mrn": "900001", "sex": "F"})

    response = client.post("/api/v1/records", json=record)

    assert response.status_code == 200
    warnings = response.json()["results"][0]["warnings"]
    assert any(w.startswith("cuff_size:") for w in warnings)
    assert any(w.startswith("patient.sex:") for w in warnings)
    stored = client.get("/api/v1/records/vitals/VIT-1/revisions/1").json()
    assert stored["received"]["cuff_size"] == "adult-large"
    assert stored["parsed"]["patient"]["sex"] == "F"


def test_malformed_json_is_400_and_stores_nothing(client: TestClient) -> None:
    response = client.post(
        "/api/v1/records",
        content=b'[{"record_type": "vitals",',
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 400
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "not valid JSON" in outcome["issue"][0]["diagnostics"]


def test_malformed_ndjson_line_is_refused_alone(client: TestClient) -> None:
    body = ndjson(vitals(id="VIT-1")) + b"{not json\n" + ndjson(vitals(id="VIT-3"))

    response = client.post("/api/v1/records", content=body, headers=NDJSON)

    assert response.status_code == 207
    results = response.json()["results"]
    assert [(r["line"], r["outcome"]) for r in results] == [
        (1, "created"),
        (2, "rejected"),
        (3, "created"),
    ]
    assert "malformed JSON" in results[1]["errors"][0]["reason"]


def test_body_over_the_limit_is_413(client: TestClient) -> None:
    limit = client.app.state.settings.max_body_bytes  # type: ignore[attr-defined]
    body = ndjson(*(vitals(id=f"VIT-{n}") for n in range(limit // 200 + 10)))
    assert len(body) > limit

    response = client.post("/api/v1/records", content=body, headers=NDJSON)

    assert response.status_code == 413
    assert response.json()["issue"][0]["code"] == "too-long"
    assert client.get("/api/v1/records/vitals/VIT-1").status_code == 404


def test_unsupported_media_type_is_415(client: TestClient) -> None:
    response = client.post(
        "/api/v1/records", content=b"id,revision\n", headers={"content-type": "text/csv"}
    )

    assert response.status_code == 415
    assert "application/x-ndjson" in response.json()["issue"][0]["diagnostics"]


def _two_gzip_members(body: bytes) -> bytes:
    return gzip.compress(body[:40]) + gzip.compress(body[40:])


@pytest.mark.parametrize(
    ("coding", "compress"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("GZIP", _two_gzip_members),
        ("deflate", zlib.compress),
    ],
)
def test_a_compressed_body_is_read_as_it_was_before_its_coding(
    client: TestClient, coding: str, compress: Callable[[bytes], bytes]
) -> None:
    body = compress(ndjson(vitals(), vitals(id="VIT-2")))

    response = client.post(
        "/api/v1/records", content=body, headers={**NDJSON, "content-encoding": coding}
    )

    assert response.status_code == 200, response.text
    assert response.json()["summary"]["created"] == 2
    assert client.get("/api/v1/records/vitals/VIT-2").status_code == 200


def test_a_body_that_decodes_past_the_limit_is_413(client: TestClient) -> None:
    """A few kilobytes of gzip may decode to gigabytes: decoding stops at the limit."""
    limit = client.app.state.settings.max_body_bytes  # type: ignore[attr-defined]
    body = gzip.compress(ndjson(vitals()) + b" " * limit)
    assert len(body) < limit // 100

    response = client.post(
        "/api/v1/records", content=body, headers={**NDJSON, "content-encoding": "gzip"}
    )

    assert response.status_code == 413
    assert "decoded from gzip" in response.json()["issue"][0]["diagnostics"]
    assert client.get("/api/v1/records/vitals/VIT-1").status_code == 404


@pytest.mark.parametrize(
    ("coding", "body", "said"),
    [
        ("gzip", ndjson(vitals()), "not gzip as its Content-Encoding says"),
        ("gzip", gzip.compress(ndjson(vitals()))[:-8], "ends early"),
        ("deflate", zlib.compress(ndjson(vitals())) + b"{}", "goes on past its end"),
        ("gzip", gzip.compress(ndjson(vitals())) + b"{}", "not gzip"),
    ],
)
def test_a_body_that_is_not_what_its_coding_says_is_400(
    client: TestClient, coding: str, body: bytes, said: str
) -> None:
    response = client.post(
        "/api/v1/records", content=body, headers={**NDJSON, "content-encoding": coding}
    )

    assert response.status_code == 400
    assert said in response.json()["issue"][0]["diagnostics"]
    assert client.get("/api/v1/records/vitals/VIT-1").status_code == 404


def test_a_body_of_more_than_16_gzip_members_is_400(client: TestClient) -> None:
    """Each member is decoded apart: thousands of tiny ones would take minutes."""
    member = gzip.compress(b" ")
    body = gzip.compress(ndjson(vitals())) + member * 16

    response = client.post(
        "/api/v1/records", content=body, headers={**NDJSON, "content-encoding": "gzip"}
    )

    assert response.status_code == 400
    assert "more than 16 gzip members" in response.json()["issue"][0]["diagnostics"]


def test_content_encoding_given_on_two_lines_is_read_as_one_list(client: TestClient) -> None:
    body = gzip.compress(gzip.compress(ndjson(vitals())))
    headers = [("content-type", "application/x-ndjson")] + [("content-encoding", "gzip")] * 2

    response = client.post("/api/v1/records", content=body, headers=headers)

    assert response.status_code == 415


def test_an_empty_body_is_empty_whatever_its_coding(client: TestClient) -> None:
    response = client.post(
        "/api/v1/records", content=b"", headers={**NDJSON, "content-encoding": "gzip"}
    )

    assert response.status_code == 400
    assert response.json()["issue"][0]["diagnostics"] == "body holds no record"


@pytest.mark.parametrize("coding", ["br", "zstd", "gzip, gzip", "compress"])
def test_a_content_coding_not_taken_is_415_naming_those_that_are(
    client: TestClient, coding: str
) -> None:
    response = client.post(
        "/api/v1/records", content=ndjson(vitals()), headers={**NDJSON, "content-encoding": coding}
    )

    assert response.status_code == 415
    assert response.headers["accept-encoding"] == "gzip, deflate, identity"
    assert "Content-Encoding" in response.json()["issue"][0]["diagnostics"]
    assert client.get("/api/v1/records/vitals/VIT-1").status_code == 404


@pytest.mark.parametrize("body", [b"", b"[]", b"\n\n"])
def test_a_body_without_records_is_400(client: TestClient, body: bytes) -> None:
    content_type = "application/x-ndjson" if body.startswith(b"\n") else "application/json"
    response = client.post("/api/v1/records", content=body, headers={"content-type": content_type})

    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


def test_a_json_scalar_body_is_400(client: TestClient) -> None:
    response = client.post(
        "/api/v1/records", content=b'"vitals"', headers={"content-type": "application/json"}
    )

    assert response.status_code == 400


def test_array_elements_that_are_not_objects_are_refused_alone(client: TestClient) -> None:
    response = client.post(
        "/api/v1/records",
        content=orjson.dumps([vitals(), 42]),
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 207
    assert [r["outcome"] for r in response.json()["results"]] == ["created", "rejected"]


def test_errors_do_not_echo_patient_identifiers(client: TestClient) -> None:
    record = vitals(
        patient={"mrn": "MRN-SECRET-4711", "family": "Zebulon", "birth_date": "not a date"},
        spo2=140,
    )

    response = client.post("/api/v1/records", json=record)

    assert response.status_code == 422
    assert "MRN-SECRET-4711" not in response.text
    assert "Zebulon" not in response.text
    assert "not a date" not in response.text
