"""Service-wide behaviour: health, errors as OperationOutcome, the ASGI entry point."""

import gc
import importlib
import weakref
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from adapter.app import create_app, included_routes
from adapter.security.access import open_access
from adapter.settings import Settings, get_settings
from tests.conftest import sign_in


def test_health_reports_the_store(client: TestClient) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "store": "ok"}


def test_unknown_route_is_404_operation_outcome(client: TestClient) -> None:
    response = client.get("/api/v1/nothing-here")

    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"
    assert response.json()["issue"][0]["code"] == "not-found"


def test_wrong_method_is_405_operation_outcome(client: TestClient) -> None:
    response = client.delete("/api/v1/records")

    assert response.status_code == 405
    assert response.json()["resourceType"] == "OperationOutcome"


def test_unknown_record_type_is_404(client: TestClient) -> None:
    response = client.get("/api/v1/records/medication/X-1")

    assert response.status_code == 404
    assert "unknown record type" in response.json()["issue"][0]["diagnostics"]


def test_id_with_forbidden_characters_in_the_path_is_400(client: TestClient) -> None:
    response = client.get("/api/v1/records/vitals/VIT%20'1")

    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["source_id"]


def test_unknown_record_is_404(client: TestClient) -> None:
    response = client.get("/api/v1/records/vitals/VIT-404")

    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


def test_unknown_revision_is_404(client: TestClient) -> None:
    client.post(
        "/api/v1/records",
        json={
            "record_type": "vitals",
            "id": "VIT-1",
            "revision": 1,
            "session_id": "S-1",
            "patient": {"mrn": "1"},
            "taken_at": "2026-11-20T09:00:00Z",
            "phase": "intra",
            "heart_rate": 70,
        },
    )

    assert client.get("/api/v1/records/vitals/VIT-1/revisions/2").status_code == 404
    assert client.get("/api/v1/records/vitals/VIT-1/revisions/0").status_code == 400


def test_asgi_app_is_importable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mappings_dir: Path
) -> None:
    monkeypatch.setenv("ADAPTER_DATABASE_URL", f"sqlite:///{tmp_path / 'asgi.db'}")
    monkeypatch.setenv("ADAPTER_MAPPINGS_DIR", str(mappings_dir))
    get_settings.cache_clear()

    module = importlib.import_module("adapter.main")
    module = importlib.reload(module)
    get_settings.cache_clear()

    with TestClient(module.app) as client:
        assert client.get("/healthz").status_code == 200


def test_apps_share_their_routes_and_an_override_fails_rather_than_being_ignored(
    settings: Settings,
) -> None:
    first = create_app(settings, background=False)
    second = create_app(settings, background=False)
    try:
        shared = {id(route) for route in first.routes} & {id(route) for route in second.routes}
        assert {id(route) for route in included_routes()} <= shared
        with pytest.raises(TypeError):
            second.dependency_overrides[open_access] = lambda: None  # type: ignore[index]
        with TestClient(second) as client:
            assert client.get("/healthz").status_code == 200
    finally:
        first.state.runtime.close()
        second.state.runtime.close()


def test_an_app_shut_down_is_freed_with_its_runtime(settings: Settings) -> None:
    """Nothing process-wide keeps an app that has shut down, nor its runtime (its store's
    connections among it): a process that makes apps, as tools and tests do, does not gather
    them."""
    app = create_app(settings, background=False)
    with TestClient(app) as test_client:
        sign_in(test_client)
        assert test_client.get("/openapi.json").status_code == 200
        assert test_client.get("/fhir/Observation").status_code == 200
    freed_app, freed_runtime = weakref.ref(app), weakref.ref(app.state.runtime)
    del app, test_client
    gc.collect()
    assert freed_app() is None
    assert freed_runtime() is None
