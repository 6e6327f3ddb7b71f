"""docker-compose.yml cannot run here (no Docker engine), so its shape is checked instead: a
production service by default, development (and the sandbox EHR) only by the explicit
override docker-compose.dev.yml."""

import re
from typing import Any

import yaml

from adapter.settings import DEVELOPMENT_SECRET, Settings
from tests.conftest import ROOT


def _compose(name: str = "docker-compose.yml") -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / name).read_text())
    return loaded


def _services() -> dict[str, Any]:
    """The production file with the development override laid over it, as compose merges."""
    merged = _compose()["services"]
    for name, service in _compose("docker-compose.dev.yml")["services"].items():
        base = merged.setdefault(name, {})
        for key, value in service.items():
            if isinstance(value, dict):
                base[key] = {**base.get(key, {}), **value}
            else:
                base[key] = value
    return merged


def test_every_dependency_names_a_service_with_a_healthcheck() -> None:
    for services in (_compose()["services"], _services()):
        for name, service in services.items():
            for dependency, rule in service.get("depends_on", {}).items():
                assert dependency in services, f"{name} depends on unknown service {dependency}"
                assert rule == {"condition": "service_healthy"}
                assert "healthcheck" in services[dependency]


def test_every_adapter_variable_is_a_real_setting() -> None:
    settings = {f"ADAPTER_{name.upper()}" for name in Settings.model_fields}

    for services in (_compose()["services"], _services()):
        environment = services["adapter"]["environment"]
        assert set(environment) <= settings, set(environment) - settings
        assert environment["ADAPTER_DATABASE_URL"].startswith("postgresql://")
    assert (ROOT / "Dockerfile").exists()


def test_the_default_is_production_with_secrets_from_the_env_file() -> None:
    services = _compose()["services"]
    environment = services["adapter"]["environment"]

    assert environment["ADAPTER_ENV"] == "production"
    for name in ("ADAPTER_SECRET_KEY", "ADAPTER_PUBLIC_URL"):
        assert re.fullmatch(r"\$\{" + name + r":\?.+\}", environment[name]), environment[name]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(
        "${POSTGRES_PASSWORD:?"
    )
    assert DEVELOPMENT_SECRET not in (ROOT / "docker-compose.yml").read_text()
    assert "hapi" not in services
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert published and all(port.startswith("127.0.0.1:") for port in published)


def test_development_and_the_sandbox_ehr_come_only_with_the_override() -> None:
    services = _services()

    base = services["adapter"]["environment"]["ADAPTER_EHR_BASE_URL"]
    host = base.split("//", 1)[1].split(":", 1)[0]

    assert services["adapter"]["environment"]["ADAPTER_ENV"] == "development"
    assert host in services and services[host]["image"].startswith("hapiproject/hapi")
    for mount in services["hapi-sandbox"]["volumes"]:
        assert (ROOT / mount.split(":", 1)[0]).exists(), mount
    assert all(port.startswith("127.0.0.1:") for port in services["hapi"]["ports"])
