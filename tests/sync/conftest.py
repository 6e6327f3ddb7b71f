"""Fixtures of the sync tests: the sandbox EHR, and a Sync pointed at it."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from adapter.runtime import Runtime
from adapter.settings import Settings
from adapter.sync.engine import Sync
from tests.sync.sandbox import SandboxEhr


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxEhr]:
    server = SandboxEhr()
    yield server
    server.stop()


@pytest.fixture
def ehr(sandbox_server: SandboxEhr) -> SandboxEhr:
    """The sandbox EHR, emptied, as a generic FHIR server, with the example patients."""
    sandbox_server.reset()
    return sandbox_server


@pytest.fixture(scope="session")
def second_sandbox_server() -> Iterator[SandboxEhr]:
    server = SandboxEhr()
    yield server
    server.stop()


@pytest.fixture
def second_ehr(second_sandbox_server: SandboxEhr) -> SandboxEhr:
    """Another sandbox EHR, emptied as `ehr` is: a second site's of a clinic group."""
    second_sandbox_server.reset()
    return second_sandbox_server


@pytest.fixture
def settings(database_url: str, mappings_dir: Path, sandbox_server: SandboxEhr) -> Settings:
    return Settings(
        database_url=database_url,
        mappings_dir=mappings_dir,
        ehr_base_url=sandbox_server.base,
    )


@pytest.fixture
def sync(runtime: Runtime, settings: Settings) -> Sync:
    return Sync(
        settings,
        runtime.store.engine,
        runtime.store,
        lambda: runtime.mapping.mapper.mappings.site,
        sleep=lambda _: None,
    )
