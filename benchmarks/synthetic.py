"""Synthetic clinic records in the export format, with a realistic mix per infusion session."""

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

EVENTS = ["DIZZINESS", "NAUSEA", "DISORIENTATION", "HALLUCINATIONS", "HYPERTENSION", "PANIC_ATTACK"]
INDICATIONS = [
    "CRPS_UPPER",
    "CRPS_LOWER",
    "NEUROPATHY",
    "FIBROMYALGIA",
    "PELVIC_PAIN",
    "DEPRESSION",
]
NURSE = {"staff_id": "RN-1", "name": "Test Nurse", "role": "RN"}
DAYS = 299
"""Forty sessions a day from 2026-01-05 to 2026-10-30, then again from the first day: intake
refuses what has not happened yet. A slot's sessions are 11,960 numbers apart, whose patients
differ (the same patient comes back to the same slot 75 turns later, 897,000 numbers on)."""


def _ts(moment: datetime) -> str:
    return moment.isoformat()


def session_records(number: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """One session's records: 2 attestations, the session, ~30 vitals, sometimes an event."""
    session_id = f"SES-{number:08d}"
    patient = {"mrn": f"{100000 + number % 3000}"}
    start = datetime(2026, 1, 5, 9, tzinfo=UTC) + timedelta(
        days=number // 40 % DAYS, minutes=(number % 40) * 12
    )
    yield {
        "record_type": "attestation",
        "id": f"ATT-{number:08d}-F",
        "revision": 1,
        "session_id": session_id,
        "patient": patient,
        "kind": "fasting",
        "attested_at": _ts(start - timedelta(minutes=20)),
        "last_solid_food_at": _ts(start - timedelta(hours=rng.uniform(6, 14))),
        "verified_by": NURSE,
        "recorded_by": NURSE,
    }
    yield {
        "record_type": "attestation",
        "id": f"ATT-{number:08d}-T",
        "revision": 1,
        "session_id": session_id,
        "patient": patient,
        "kind": "transport",
        "attested_at": _ts(start - timedelta(minutes=19)),
        "mode": "escort_private_vehicle",
        "escort": {"name": "Escort Person", "relationship": "spouse"},
        "patient_will_not_drive": True,
        "verified_by": NURSE,
        "recorded_by": NURSE,
    }
    end = start + timedelta(hours=4)
    yield {
        "record_type": "infusion_session",
        "id": session_id,
        "revision": 1,
        "patient": patient,
        "series_id": f"SER-{number // 5:07d}",
        "session_number": number % 5 + 1,
        "sessions_planned": 5,
        "indication": rng.choice(INDICATIONS),
        "status": "completed",
        "scheduled_start": _ts(start),
        "infusion_start": _ts(start),
        "infusion_end": _ts(end),
        "discharged_at": _ts(end + timedelta(hours=2)),
        "drug": "KETAMINE",
        "route": "IV",
        "site": "L_ARM",
        "dose": {"weight_kg": 70.0, "rate_mg_per_kg_per_hr": 0.5, "total_mg": 140.0},
        "rate_changes": [],
        "performer": NURSE,
        "pain_before": 7,
        "pain_after": 3,
        "recorded_by": NURSE,
    }
    for index in range(30):
        vitals: dict[str, Any] = {
            "record_type": "vitals",
            "id": f"VIT-{number:08d}-{index:02d}",
            "revision": 1,
            "session_id": session_id,
            "patient": patient,
            "taken_at": _ts(start + timedelta(minutes=index * 12 - 20)),
            "phase": "baseline" if index == 0 else ("intra" if index < 21 else "recovery"),
            "heart_rate": rng.randint(60, 110),
            "systolic": rng.randint(110, 185),
            "diastolic": rng.randint(65, 100),
            "spo2": rng.randint(94, 100),
            "resp_rate": rng.randint(11, 20),
            "pain": rng.randint(0, 9),
            "sedation_rass": rng.randint(-2, 1),
            "recorded_by": NURSE,
        }
        if index % 10 == 0:
            vitals["temperature"] = {"value": round(rng.uniform(97.5, 99.3), 1), "unit": "F"}
        yield vitals
    if rng.random() < 0.3:
        yield {
            "record_type": "adverse_event",
            "id": f"AE-{number:08d}",
            "revision": 1,
            "session_id": session_id,
            "patient": patient,
            "event": rng.choice(EVENTS),
            "onset_at": _ts(start + timedelta(minutes=50)),
            "resolved_at": _ts(start + timedelta(minutes=80)),
            "severity": "mild",
            "serious": False,
            "actions": ["RATE_REDUCED"],
            "medications_given": [],
            "outcome": "resolved",
            "recorded_by": NURSE,
        }


def records(count: int, seed: int = 7) -> Iterator[bytes]:
    """Exactly `count` records as NDJSON lines."""
    rng = random.Random(seed)
    produced, number = 0, 0
    while True:
        for record in session_records(number, rng):
            if produced == count:
                return
            yield orjson.dumps(record) + b"\n"
            produced += 1
        number += 1
