"""docker-compose.yml cannot run here (no Docker engine), so its shape is checked instead: a
production service by default, two replicas of it behind a reverse proxy, development (and the
sandbox EHRs of two sites) only by the explicit override docker-compose.dev.yml."""

import re
import shutil
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import yaml

from adapter.mapping.sites import load_group
from adapter.settings import DEVELOPMENT_SECRET, Settings
from tests.conftest import ROOT

REPLICAS = ("adapter-1", "adapter-2")


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
        for replica in REPLICAS:
            environment = services[replica]["environment"]
            assert set(environment) <= settings, set(environment) - settings
            assert environment["ADAPTER_DATABASE_URL"].startswith("postgresql://")
    assert (ROOT / "Dockerfile").exists()


def test_the_default_is_production_with_secrets_from_the_env_file() -> None:
    services = _compose()["services"]
    environment = services["adapter-1"]["environment"]

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

    for replica in REPLICAS:
        assert services[replica]["environment"]["ADAPTER_ENV"] == "development"
    for seeder in ("hapi-sandbox", "hapi-sandbox-site-b"):
        for mount in services[seeder]["volumes"]:
            assert (ROOT / mount.split(":", 1)[0]).exists(), mount
    assert all(port.startswith("127.0.0.1:") for port in services["hapi"]["ports"])


def test_the_development_override_has_a_sandbox_ehr_for_each_of_two_sites() -> None:
    services = _services()
    ehrs = {
        name
        for name, service in services.items()
        if str(service.get("image", "")).startswith("hapiproject/hapi")
    }
    seeded = {
        service["command"][2].split("//", 1)[1].split(":", 1)[0]
        for name, service in services.items()
        if name.startswith("hapi-sandbox")
    }
    ports = [port for name in ehrs for port in services[name]["ports"]]

    assert ehrs == {"hapi", "hapi-site-b"} and seeded == ehrs
    assert len(set(ports)) == 2 and all(port.startswith("127.0.0.1:") for port in ports)
    for replica in REPLICAS:
        assert {"hapi-sandbox", "hapi-sandbox-site-b"} <= set(services[replica]["depends_on"])


def test_the_development_group_delivers_each_site_to_its_own_sandbox_ehr(tmp_path: Path) -> None:
    """The override lays deploy/group/sites over the mapping files; loaded as the service loads
    them, each site names a sandbox EHR of its own, and records without a site have one."""
    services = _services()
    environment = services["adapter-1"]["environment"]
    target = f"{environment['ADAPTER_MAPPINGS_DIR']}/sites"
    sources = [
        mount.split(":")[0]
        for mount in services["adapter-1"]["volumes"]
        if mount.split(":")[1] == target
    ]
    assert services["adapter-2"]["volumes"] == services["adapter-1"]["volumes"]
    assert len(sources) == 1 and sources[0].startswith("./deploy/")
    mappings = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mappings)
    shutil.copytree(ROOT / sources[0], mappings / "sites")

    _, sites = load_group(mappings)

    hosts = {}
    for site_id, site in sites.items():
        assert site.ehr.connection is not None, site_id
        hosts[site_id] = site.ehr.connection.base_url.split("//", 1)[1].split(":", 1)[0]
    assert sorted(hosts.values()) == ["hapi", "hapi-site-b"]
    assert environment["ADAPTER_DEFAULT_SITE"] in sites


def test_two_replicas_alike_behind_the_proxy_and_only_the_proxy_is_published() -> None:
    services = _compose()["services"]
    first, second = (services[name] for name in REPLICAS)
    proxy = services["proxy"]

    assert first == second  # one definition: the same image, store, secret and settings
    assert "build" in first and "ports" not in first
    assert first["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert set(proxy["depends_on"]) == set(REPLICAS)
    assert proxy["image"].startswith("nginx:")
    assert proxy["ports"] == ["127.0.0.1:8080:8080"]
    adapters = [name for name, s in services.items() if s.get("build")]
    assert sorted(adapters) == sorted(REPLICAS)


def test_the_replicas_share_their_mapping_files_and_export_files() -> None:
    """A row saved through one replica's console, and an export written by one replica and
    downloaded through the other, need the same folders in both."""
    compose = _compose()
    environment = compose["services"]["adapter-1"]["environment"]
    mounts = dict(
        reversed(mount.split(":", 1)) for mount in compose["services"]["adapter-1"]["volumes"]
    )

    for setting in ("ADAPTER_MAPPINGS_DIR", "ADAPTER_EXPORT_DIR"):
        volume = mounts[environment[setting]]
        assert volume in compose["volumes"], setting
    assert (
        compose["services"]["adapter-2"]["volumes"] == compose["services"]["adapter-1"]["volumes"]
    )


def test_the_proxy_balances_over_every_replica_and_is_the_trusted_proxy() -> None:
    services = _compose()["services"]
    proxy = services["proxy"]
    mount = proxy["volumes"][0].split(":")
    config = (ROOT / mount[0]).read_text()
    upstream = re.search(r"upstream adapter \{(.*?)\}", config, re.S)
    assert upstream is not None
    servers = re.findall(r"^\s*server ([\w-]+):(\d+)", upstream.group(1), re.M)
    port = services["adapter-1"]["environment"]["ADAPTER_PORT"]
    trusted = services["adapter-1"]["environment"]["ADAPTER_TRUSTED_PROXIES"]
    default = re.fullmatch(r"\$\{ADAPTER_TRUSTED_PROXIES:-(.+)\}", trusted)
    address = proxy["networks"]["backend"]["ipv4_address"]
    body = re.search(r"client_max_body_size (\d+)m;", config)

    assert mount[1] == "/etc/nginx/conf.d/default.conf"
    assert sorted(servers) == sorted((name, port) for name in REPLICAS)
    assert "proxy_pass http://adapter;" in config
    assert default is not None and ip_address(default.group(1)) == ip_address(address)
    assert Settings(trusted_proxies=default.group(1)).proxy_networks()
    assert body is not None
    assert int(body.group(1)) * 1024 * 1024 > Settings.model_fields["max_body_bytes"].default
    # Request lines carry search parameters, which can name a patient.
    assert "access_log off;" in config and "error_log /dev/stderr crit;" in config
