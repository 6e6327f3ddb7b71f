"""Fixtures of the security tests: the service in-process, with no credentials of its own."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from adapter.app import create_app
from adapter.runtime import Runtime
from adapter.settings import Settings


@pytest.fixture
def bare(settings: Settings) -> Iterator[TestClient]:
    """The service, its callers left to say who they are."""
    with TestClient(create_app(settings, background=False)) as test_client:
        yield test_client


@pytest.fixture
def service_runtime(bare: TestClient) -> Runtime:
    runtime: Runtime = bare.app.state.runtime  # type: ignore[attr-defined]
    return runtime
