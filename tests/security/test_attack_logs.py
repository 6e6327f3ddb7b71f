"""A 500 on the running service, on SQLite and PostgreSQL, logs no exception text (finding 9):
uvicorn's own "Exception in ASGI application" quoted it, and with it what a caller sent."""

import logging
from collections.abc import Iterator

import pytest

from tests.security.conftest import RunningService, is_outcome

QUOTED = "Invalid isoformat string: 'Rivera 100234'"


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def lines() -> Iterator[Lines]:
    """Every line logged, the server's own loggers (which do not propagate) included."""
    handler = Lines()
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    loggers = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.error")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


def test_an_unexpected_error_logs_its_type_never_its_text(
    running: RunningService, lines: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise ValueError(QUOTED)

    monkeypatch.setattr(running.runtime.fhir_reads, "versions", broken)
    with running.signed_in() as client:
        answer = client.get("/fhir/Observation/_history")
    running.settled()  # a server logs an error after the answer is sent

    assert answer.status_code == 500 and is_outcome(answer)
    assert "Rivera" not in answer.text
    assert any("unexpected error: ValueError" in line for line in lines.lines)
    assert not [line for line in lines.lines if "Rivera" in line or "100234" in line]
    assert not [line for line in lines.lines if "Exception in ASGI application" in line]
