"""Request dependencies, as Annotated aliases."""

from typing import Annotated

from fastapi import Depends, Request

from adapter.intake.service import Intake
from adapter.settings import Settings
from adapter.store.records import RecordStore


def _intake(request: Request) -> Intake:
    intake: Intake = request.app.state.intake
    return intake


def _store(request: Request) -> RecordStore:
    store: RecordStore = request.app.state.store
    return store


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


IntakeDep = Annotated[Intake, Depends(_intake)]
StoreDep = Annotated[RecordStore, Depends(_store)]
SettingsDep = Annotated[Settings, Depends(_settings)]
