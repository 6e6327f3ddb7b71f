"""Records name their clinic site; a credential bound to a site writes for it alone."""

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from adapter.app import create_app
from adapter.cli import main
from adapter.runtime import Runtime, open_runtime
from adapter.settings import Settings
from tests.conftest import ndjson, session
from tests.sites import NORTH, SOUTH, add_sites

SITE_FIELD = "clinic_site"


def _errors(body: dict) -> list[tuple[str, str]]:
    return [(e["field"], e["reason"]) for r in body["results"] for e in r.get("errors", [])]


@pytest.fixture
def group_settings(settings: Settings) -> Settings:
    add_sites(settings.mappings_dir)
    return settings


@pytest.fixture
def group(group_settings: Settings) -> Iterator[Runtime]:
    opened = open_runtime(group_settings)
    yield opened
    opened.close()


def test_a_group_refuses_a_record_without_its_site(group: Runtime) -> None:
    [outcome] = group.intake.submit([(0, ndjson(session()))])

    assert outcome.outcome == "rejected"
    assert [e.field for e in outcome.errors] == [SITE_FIELD]


def test_a_group_refuses_a_site_it_does_not_have(group: Runtime) -> None:
    outcomes = group.intake.submit(
        [(0, ndjson(session(clinic_site="west"))), (1, ndjson(session(clinic_site="West!")))]
    )

    assert [(o.outcome, o.errors[0].field) for o in outcomes] == [
        ("rejected", SITE_FIELD),
        ("rejected", SITE_FIELD),
    ]
    assert "not a site of this deployment" in outcomes[0].errors[0].reason


def test_the_default_site_takes_records_that_name_none(group_settings: Settings) -> None:
    runtime = open_runtime(group_settings.model_copy(update={"default_site": SOUTH}))
    try:
        [outcome] = runtime.intake.submit([(0, ndjson(session()))])
        stored = runtime.store.get("infusion_session", f"{SOUTH}:SES-1")
    finally:
        runtime.close()

    assert outcome.outcome == "created" and outcome.id == "SES-1"
    assert stored is not None


def test_a_single_site_deployment_refuses_a_record_naming_a_site(runtime: Runtime) -> None:
    [outcome] = runtime.intake.submit([(0, ndjson(session(clinic_site=NORTH)))])

    assert outcome.outcome == "rejected"
    assert outcome.errors[0].field == SITE_FIELD


def test_a_single_site_deployment_stores_records_under_their_own_ids(runtime: Runtime) -> None:
    runtime.intake.submit([(0, ndjson(session()))])

    assert runtime.store.get("infusion_session", "SES-1") is not None


def test_a_key_bound_to_a_site_writes_for_that_site_alone(group_settings: Settings) -> None:
    app = create_app(group_settings, background=False)
    with TestClient(app) as client:
        runtime: Runtime = app.state.runtime
        _, key = runtime.clients.add_key_client(
            "north intake", "intake", datetime.now(UTC), sites=[NORTH]
        )
        headers = {"Authorization": f"Bearer {key}"}
        other = client.post("/api/v1/records", json=session(clinic_site=SOUTH), headers=headers)
        absent = client.post("/api/v1/records", json=session(clinic_site="east"), headers=headers)
        unnamed = client.post("/api/v1/records", json=session(id="SES-2"), headers=headers)
        named = client.post(
            "/api/v1/records", json=session(id="SES-3", clinic_site=NORTH), headers=headers
        )

        assert other.status_code == 422
        # Another site and one the group does not have are refused in the same words.
        assert _errors(other.json()) == [(SITE_FIELD, "not a site this credential writes for")]
        assert absent.status_code == 422 and _errors(absent.json()) == _errors(other.json())
        assert unnamed.status_code == 200 and named.status_code == 200
        assert runtime.store.get("infusion_session", f"{NORTH}:SES-2") is not None
        assert runtime.store.get("infusion_session", f"{NORTH}:SES-3") is not None
        assert runtime.store.get("infusion_session", f"{SOUTH}:SES-1") is None


def test_import_takes_the_site_of_its_file(
    group_settings: Settings, cli_environment: Settings, tmp_path: Path
) -> None:
    source = tmp_path / "south.ndjson"
    source.write_bytes(ndjson(session(), session(id="SES-2", clinic_site=NORTH)))

    result = CliRunner().invoke(main, ["import", str(source), "--quiet", "--site", SOUTH])
    unknown = CliRunner().invoke(main, ["import", str(source), "--quiet", "--site", "west"])

    assert "created 1" in result.output and "rejected 1" in result.output
    assert unknown.exit_code == 2 and "--site" in unknown.output
    runtime = open_runtime(group_settings)
    try:
        assert runtime.store.get("infusion_session", f"{SOUTH}:SES-1") is not None
        assert runtime.store.get("infusion_session", f"{NORTH}:SES-2") is None
    finally:
        runtime.close()


def test_clients_cli_binds_a_key_to_known_sites(
    group_settings: Settings, cli_environment: Settings
) -> None:
    bound = CliRunner().invoke(
        main, ["clients", "add-key", "north", "--role", "intake", "--site", NORTH]
    )
    unknown = CliRunner().invoke(
        main, ["clients", "add-key", "west", "--role", "intake", "--site", "west"]
    )
    listed = CliRunner().invoke(main, ["clients", "list"])

    assert bound.exit_code == 0
    assert unknown.exit_code == 2 and "not a site of this deployment: west" in unknown.output
    assert f"sites {NORTH}" in listed.output


def test_a_record_is_read_by_its_site_and_a_key_bound_to_a_site_reads_its_own_alone(
    group_settings: Settings,
) -> None:
    app = create_app(group_settings, background=False)
    with TestClient(app) as client:
        runtime: Runtime = app.state.runtime
        now = datetime.now(UTC)
        runtime.intake.submit(
            [(i, ndjson(session(clinic_site=site))) for i, site in enumerate((NORTH, SOUTH))]
        )
        _, admin = runtime.clients.add_key_client("admin", "admin", now)
        _, north_key = runtime.clients.add_key_client("north", "intake", now, sites=[NORTH])
        every = {"Authorization": f"Bearer {admin}"}
        north = {"Authorization": f"Bearer {north_key}"}
        path = "/api/v1/records/infusion_session/SES-1"

        by_query = client.get(path, params={"site": SOUTH}, headers=every)
        by_key = client.get(f"/api/v1/records/infusion_session/{SOUTH}:SES-1", headers=every)
        unnamed = client.get(path, headers=every)
        unknown = client.get(path, params={"site": "east"}, headers=every)
        clashing = client.get(
            f"/api/v1/records/infusion_session/{NORTH}:SES-1", params={"site": SOUTH}, headers=every
        )
        own = client.get(path, headers=north)
        other = client.get(path, params={"site": SOUTH}, headers=north)
        other_key = client.get(f"/api/v1/records/infusion_session/{SOUTH}:SES-1", headers=north)
        other_revision = client.get(f"{path}/revisions/1", params={"site": SOUTH}, headers=north)
        own_revision = client.get(f"{path}/revisions/1", headers=north)
        absent = client.get("/api/v1/records/infusion_session/SES-9", headers=north)
        no_such_site = client.get(path, params={"site": "east"}, headers=north)

    assert by_query.status_code == 200 and by_query.json()["record"]["clinic_site"] == SOUTH
    assert by_key.json() == by_query.json() and by_key.json()["id"] == f"{SOUTH}:SES-1"
    for refused, status in ((unnamed, 400), (unknown, 404), (clashing, 400)):
        assert refused.status_code == status
        assert refused.json()["issue"][0]["diagnostics"].startswith("site: ")
    assert own.status_code == 200 and own.json()["record"]["clinic_site"] == NORTH
    assert own_revision.status_code == 200 and own_revision.json()["id"] == f"{NORTH}:SES-1"
    # Another site's record, or a site the group does not have, reads as a record never
    # received: the same status and words, so a bound key learns nothing of other sites.
    for hidden in (other, other_key, other_revision, no_such_site):
        assert hidden.status_code == 404
        assert hidden.json()["issue"] == absent.json()["issue"]
    assert absent.status_code == 404


def test_a_single_site_deployment_refuses_a_site_in_a_record_read(client: TestClient) -> None:
    client.post("/api/v1/records", json=session())

    plain = client.get("/api/v1/records/infusion_session/SES-1")
    named = client.get("/api/v1/records/infusion_session/SES-1", params={"site": NORTH})

    assert plain.status_code == 200
    assert named.status_code == 404 and "not a clinic group" in named.text
