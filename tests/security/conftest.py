"""Fixtures of the security tests: the service in-process, with no credentials of its own;
and the service running under uvicorn on each store, for the attack suite (test_attack_*)."""

import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from adapter.app import create_app
from adapter.runtime import Runtime
from adapter.security.audit import AuditEntry
from adapter.serving import server_config
from adapter.settings import Settings
from tests.conftest import POSTGRES_URL, ROOT, CredentialAuth, Credentials, grant


@pytest.fixture
def bare(settings: Settings) -> Iterator[TestClient]:
    """The service, its callers left to say who they are."""
    with TestClient(create_app(settings, background=False)) as test_client:
        yield test_client


@pytest.fixture
def service_runtime(bare: TestClient) -> Runtime:
    runtime: Runtime = bare.app.state.runtime  # type: ignore[attr-defined]
    return runtime


PROXY = "127.0.0.2"
"""The reverse proxy the running service trusts: requests sent from this loopback address may
name their caller in X-Forwarded-For; from 127.0.0.1 the header proves nothing."""


@dataclass
class RunningService:
    """The service under `infusion-adapter serve`'s uvicorn configuration, on loopback."""

    url: str
    app: FastAPI
    runtime: Runtime
    credentials: Credentials
    store: str
    server: uvicorn.Server

    def settled(self) -> None:
        """Wait until the server has finished every request it took (its last log line too)."""
        deadline = time.monotonic() + 10
        while self.server.server_state.tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def client(self, forwarded_for: str | None = None, **options: Any) -> httpx.Client:
        """A client from 127.0.0.1; with `forwarded_for`, from the trusted proxy in its name."""
        address = PROXY if forwarded_for else "127.0.0.1"
        # Plain HTTP on loopback: no CA store to load for each client.
        transport = httpx.HTTPTransport(local_address=address, trust_env=False, verify=False)
        headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
        return httpx.Client(
            base_url=self.url,
            transport=transport,
            headers=headers,
            timeout=30,
            trust_env=False,
            **options,
        )

    def signed_in(self, forwarded_for: str | None = None) -> httpx.Client:
        client = self.client(forwarded_for)
        client.auth = CredentialAuth(self.credentials)
        return client

    def audit(self) -> list[AuditEntry]:
        self.app.state.audit_writer.flush()
        return self.runtime.audit.query(limit=1000)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def running(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    """One running service per store and test module, as an attacker on the network meets it:
    a public URL, a trusted proxy, and short header and body timeouts (one second)."""
    folder = tmp_path_factory.mktemp("running")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        database_url = f"sqlite:///{folder / 'adapter.db'}"
    else:
        with create_engine(POSTGRES_URL).begin() as connection:
            connection.execute(text(f"CREATE SCHEMA {schema}"))
        database_url = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mappings = folder / "mappings"
    shutil.copytree(ROOT / "mappings", mappings)
    settings = Settings(
        database_url=database_url,
        mappings_dir=mappings,
        export_dir=folder / "exports",
        public_url=f"http://127.0.0.1:{port}",
        trusted_proxies=PROXY,
        header_timeout_seconds=1.0,
        body_timeout_seconds=1.0,
    )
    app = create_app(settings, background=False)
    server = uvicorn.Server(server_config(app, settings, "127.0.0.1", port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            pytest.fail("the service did not start on loopback")
        time.sleep(0.02)
    runtime: Runtime = app.state.runtime
    try:
        yield RunningService(
            f"http://127.0.0.1:{port}", app, runtime, grant(runtime), request.param, server
        )
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        if request.param == "postgresql":
            with create_engine(POSTGRES_URL).begin() as connection:
                connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))


def is_outcome(answer: httpx.Response) -> bool:
    """The answer is an OperationOutcome, OAuth's error object at the token endpoint, or the
    intake's report of records rejected one by one."""
    body = answer.json()
    return body.get("resourceType") == "OperationOutcome" or "error" in body or "results" in body
