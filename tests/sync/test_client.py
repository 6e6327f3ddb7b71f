"""How the EHR client reads an EHR's Retry-After."""

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from adapter.sync.client import _retry_after


@pytest.mark.parametrize(
    ("value", "expected"), [("7", 7.0), (" 120 ", 120.0), ("", None), (None, None)]
)
def test_retry_after_in_seconds(value: str | None, expected: float | None) -> None:
    assert _retry_after(value) == expected


@pytest.mark.parametrize("value", ["\u00b2", "soon", "-3", "1.5"])
def test_a_retry_after_that_is_not_seconds_or_a_date_is_ignored(value: str) -> None:
    assert _retry_after(value) is None


def test_retry_after_as_an_http_date() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)

    waited = _retry_after(later)

    assert waited is not None and 80 <= waited <= 91
