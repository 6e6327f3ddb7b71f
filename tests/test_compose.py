"""docker-compose.yml cannot run here (no Docker engine), so its shape is checked instead."""

from typing import Any

import yaml

from adapter.settings import Settings
from tests.conftest import ROOT


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_every_dependency_names_a_service_with_a_healthcheck() -> None:
    services = _compose()["services"]

    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert rule == {"condition": "service_healthy"}
            assert "healthcheck" in services[dependency]


def test_every_adapter_variable_is_a_real_setting() -> None:
    settings = {f"ADAPTER_{name.upper()}" for name in Settings.model_fields}

    environment = _compose()["services"]["adapter"]["environment"]

    assert environment
    assert set(environment) <= settings, set(environment) - settings
    assert environment["ADAPTER_DATABASE_URL"].startswith("postgresql://")
    assert (ROOT / "Dockerfile").exists()


def test_the_adapter_syncs_to_the_sandbox_ehr_service() -> None:
    services = _compose()["services"]

    base = services["adapter"]["environment"]["ADAPTER_EHR_BASE_URL"]
    host = base.split("//", 1)[1].split(":", 1)[0]

    assert host in services and services[host]["image"].startswith("hapiproject/hapi")
    for mount in services["hapi-sandbox"]["volumes"]:
        assert (ROOT / mount.split(":", 1)[0]).exists(), mount
