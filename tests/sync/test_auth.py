"""The sync proves itself to the EHR: SMART Backend Services with an RS384 or ES384 assertion,
or a static bearer token."""

from pathlib import Path

import pytest
from joserfc.jwk import ECKey, RSAKey
from pydantic import SecretStr

from adapter.runtime import Runtime
from adapter.settings import Settings
from adapter.sync.engine import Sync, sync_once
from tests.sync.expected import expected_in_ehr
from tests.sync.sandbox import SandboxEhr
from tests.sync.test_delivery import load_example_day

CLIENT_ID = "infusion-adapter"


def sync_with(runtime: Runtime, settings: Settings, **update: object) -> Sync:
    return Sync(
        settings.model_copy(update=update),
        runtime.store.engine,
        runtime.store,
        lambda: runtime.mapping.mapper.mappings.site,
        sleep=lambda _: None,
    )


def registered_key(ehr: SandboxEhr, tmp_path: Path, algorithm: str) -> Path:
    """A key pair made here: the EHR gets the public key in a JWKS, the adapter a PEM file."""
    key = RSAKey.generate_key(2048) if algorithm == "RS384" else ECKey.generate_key("P-384")
    public = {**key.as_dict(private=False), "kid": "adapter-1", "alg": algorithm}
    ehr.configure(smartClients={CLIENT_ID: {"keys": [public]}})
    path = tmp_path / "adapter-key.pem"
    path.write_bytes(key.as_pem(private=True))
    return path


@pytest.mark.parametrize("algorithm", ["RS384", "ES384"])
def test_smart_backend_services_token_is_obtained_once_and_renewed_on_401(
    runtime: Runtime, settings: Settings, ehr: SandboxEhr, tmp_path: Path, algorithm: str
) -> None:
    key_file = registered_key(ehr, tmp_path, algorithm)
    sync = sync_with(
        runtime,
        settings,
        ehr_auth="smart",
        ehr_client_id=CLIENT_ID,
        ehr_private_key_file=key_file,
        ehr_key_id="adapter-1",
        ehr_signing_algorithm=algorithm,
    )
    load_example_day(runtime)

    first = sync_once(sync, trigger="test")

    assert first.status == "completed", first.error
    assert runtime.outbox.counts()["delivered"] == sum(expected_in_ehr(runtime).values())
    assert ehr.stats()["token issued"] == 1
    ehr.control("DELETE", "/tokens")
    runtime.outbox.requeue(sync.clock(), ["delivered"])

    second = sync_once(sync, trigger="test")

    assert second.status == "completed", second.error
    assert ehr.stats()["token issued"] == 2
    assert ehr.stats().get("POST 401", 0) + ehr.stats().get("GET 401", 0) >= 1


def test_an_assertion_signed_by_an_unregistered_key_fails_the_run_and_loses_nothing(
    runtime: Runtime, settings: Settings, ehr: SandboxEhr, tmp_path: Path
) -> None:
    registered_key(ehr, tmp_path, "RS384")
    other = RSAKey.generate_key(2048)
    wrong = tmp_path / "other.pem"
    wrong.write_bytes(other.as_pem(private=True))
    sync = sync_with(
        runtime, settings, ehr_auth="smart", ehr_client_id=CLIENT_ID, ehr_private_key_file=wrong
    )
    load_example_day(runtime)

    report = sync_once(sync, trigger="test")

    assert report.status == "failed"
    assert report.error and "token endpoint refused the client assertion of" in report.error
    counts = runtime.outbox.counts()
    assert counts["dead"] == 0 and counts["delivered"] == 0
    # Every resource queued for the EHR (Patients never are: the EHR owns its patients).
    assert counts["pending"] == sum(
        1 for r in runtime.resources.all_current() if r.resource_type != "Patient"
    )


def test_a_static_bearer_token(runtime: Runtime, settings: Settings, ehr: SandboxEhr) -> None:
    ehr.configure(bearer="sandbox-token")
    load_example_day(runtime)

    refused = sync_once(
        sync_with(runtime, settings, ehr_auth="bearer", ehr_bearer_token=SecretStr("wrong"))
    )
    accepted = sync_once(
        sync_with(runtime, settings, ehr_auth="bearer", ehr_bearer_token=SecretStr("sandbox-token"))
    )

    assert refused.status == "failed" and runtime.outbox.counts()["dead"] == 0
    assert accepted.status == "completed", accepted.error
    assert runtime.outbox.counts()["delivered"] == sum(expected_in_ehr(runtime).values())
