"""Revision rules: repeat, amendment, stale, conflict, withdrawal, and out-of-order arrival."""

from fastapi.testclient import TestClient

from adapter.runtime import Runtime
from tests.conftest import ndjson, session, vitals

NDJSON = {"content-type": "application/x-ndjson"}


def _outcomes(client: TestClient, *records: dict) -> list[str]:  # type: ignore[type-arg]
    response = client.post("/api/v1/records", content=ndjson(*records), headers=NDJSON)
    return [result["outcome"] for result in response.json()["results"]]


def test_first_revision_is_created_and_readable(client: TestClient) -> None:
    assert _outcomes(client, vitals()) == ["created"]

    record = client.get("/api/v1/records/vitals/VIT-1").json()

    assert record["revision"] == 1
    assert record["status"] == "active"
    assert record["record"]["heart_rate"] == 84
    assert record["record"]["taken_at"] == "2026-11-20T09:20:00-05:00"


def test_same_id_and_revision_is_a_repeat(client: TestClient) -> None:
    assert _outcomes(client, vitals()) == ["created"]
    assert _outcomes(client, vitals()) == ["unchanged"]
    assert [
        r["revision"] for r in client.get("/api/v1/records/vitals/VIT-1").json()["revisions"]
    ] == [1]


def test_higher_revision_amends(client: TestClient) -> None:
    _outcomes(client, vitals())

    assert _outcomes(client, vitals(revision=2, heart_rate=90)) == ["amended"]

    record = client.get("/api/v1/records/vitals/VIT-1").json()
    assert (record["revision"], record["record"]["heart_rate"]) == (2, 90)
    assert [(r["revision"], r["current"]) for r in record["revisions"]] == [(1, False), (2, True)]
    first = client.get("/api/v1/records/vitals/VIT-1/revisions/1").json()
    assert first["received"]["heart_rate"] == 84


def test_lower_revision_is_stale_kept_in_history_and_not_applied(client: TestClient) -> None:
    _outcomes(client, vitals(revision=3, heart_rate=95))

    assert _outcomes(client, vitals(revision=2, heart_rate=90)) == ["stale"]
    assert _outcomes(client, vitals(revision=2, heart_rate=90)) == ["stale"]

    record = client.get("/api/v1/records/vitals/VIT-1").json()
    assert (record["revision"], record["record"]["heart_rate"]) == (3, 95)
    assert [r["revision"] for r in record["revisions"]] == [2, 3]


def test_same_revision_with_other_content_is_refused(client: TestClient) -> None:
    _outcomes(client, vitals())

    response = client.post("/api/v1/records", json=vitals(heart_rate=99))

    assert response.status_code == 422
    assert response.json()["results"][0]["errors"][0]["field"] == "revision"
    assert client.get("/api/v1/records/vitals/VIT-1").json()["record"]["heart_rate"] == 84


def test_entered_in_error_withdraws_and_keeps_the_record(client: TestClient) -> None:
    _outcomes(client, vitals())

    response = client.post("/api/v1/records", json=vitals(revision=2, status="entered_in_error"))

    assert response.json()["results"][0]["outcome"] == "amended"
    assert response.json()["results"][0]["status"] == "entered_in_error"
    record = client.get("/api/v1/records/vitals/VIT-1").json()
    assert record["status"] == "entered_in_error"
    assert [r["status"] for r in record["revisions"]] == ["active", "entered_in_error"]


def test_a_withdrawn_record_is_checked_for_plausibility_too(client: TestClient) -> None:
    """What a withdrawn record says is stored and mapped (entered-in-error), so an impossible
    value is refused there as anywhere: a withdrawn heart rate of 9999 is no heart rate."""
    implausible = vitals(revision=2, status="entered_in_error", heart_rate=9999)
    plausible = vitals(revision=2, status="entered_in_error")

    answer = client.post("/api/v1/records", json=implausible).json()
    assert answer["results"][0]["errors"][0]["field"] == "heart_rate"
    assert client.get("/api/v1/records/vitals/VIT-1").status_code == 404
    assert _outcomes(client, plausible) == ["created"]
    assert client.get("/api/v1/records/vitals/VIT-1").json()["status"] == "entered_in_error"


def test_session_status_entered_in_error_withdraws_a_session(client: TestClient) -> None:
    _outcomes(client, session())

    assert _outcomes(client, session(revision=2, status="entered_in_error")) == ["amended"]
    assert (
        client.get("/api/v1/records/infusion_session/SES-1").json()["status"] == "entered_in_error"
    )


def test_several_revisions_in_one_batch_apply_in_order(client: TestClient) -> None:
    outcomes = _outcomes(
        client,
        vitals(revision=1),
        vitals(revision=3, heart_rate=101),
        vitals(revision=2, heart_rate=99),
        vitals(revision=3, heart_rate=101),
    )

    assert outcomes == ["created", "amended", "stale", "unchanged"]
    record = client.get("/api/v1/records/vitals/VIT-1").json()
    assert (record["revision"], record["record"]["heart_rate"]) == (3, 101)
    assert [r["revision"] for r in record["revisions"]] == [1, 2, 3]


def test_records_before_their_session_are_accepted_and_linked_when_it_arrives(
    client: TestClient,
) -> None:
    assert _outcomes(client, vitals(id="VIT-1"), vitals(id="VIT-2")) == ["created", "created"]
    before = client.get("/api/v1/records/vitals/VIT-1").json()["links"]
    assert before == {"session": {"id": "SES-1", "received": False}}

    assert _outcomes(client, session()) == ["created"]

    assert client.get("/api/v1/records/vitals/VIT-1").json()["links"]["session"]["received"]
    assert client.get("/api/v1/records/infusion_session/SES-1").json()["links"] == {
        "records": {"vitals": 2}
    }


def test_a_rejected_record_beside_accepted_ones_changes_nothing(runtime: Runtime) -> None:
    outcomes = runtime.intake.submit(
        [(1, ndjson(vitals(id="VIT-1"))), (2, ndjson(vitals(id="VIT-2", spo2=150)))]
    )

    assert [o.outcome for o in outcomes] == ["created", "rejected"]
    assert runtime.store.exists("vitals", "VIT-1")
    assert not runtime.store.exists("vitals", "VIT-2")
    assert runtime.store.counts() == {"vitals": 1}
