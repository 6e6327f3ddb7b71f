"""Request dependencies, as Annotated aliases."""

from typing import Annotated

from fastapi import Depends, Request

from adapter.intake.service import Intake
from adapter.runtime import Runtime
from adapter.settings import Settings
from adapter.store.records import RecordStore


async def _intake(request: Request) -> Intake:
    intake: Intake = request.app.state.intake
    return intake


async def _store(request: Request) -> RecordStore:
    store: RecordStore = request.app.state.store
    return store


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


IntakeDep = Annotated[Intake, Depends(_intake)]
StoreDep = Annotated[RecordStore, Depends(_store)]
SettingsDep = Annotated[Settings, Depends(_settings)]


async def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def wake_worker(request: Request) -> None:
    """Ask the background worker to map soon (when the service runs one)."""
    worker = request.app.state.worker
    if worker is not None:
        worker.wake()


RuntimeDep = Annotated[Runtime, Depends(_runtime)]


def public_base(request: Request) -> str:
    """The adapter's base URL as its clients reach it: the setting, else the request's."""
    configured: str | None = request.app.state.settings.public_url
    return (configured or str(request.base_url)).rstrip("/")
