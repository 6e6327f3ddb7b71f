"""Reads run once more when the store dropped their connection, and no more."""

import pytest

from adapter.errors import StoreUnavailable
from adapter.store import raw


class Dropped(Exception):
    pass


def test_a_read_whose_connection_was_dropped_answers_the_second_time() -> None:
    calls: list[int] = []

    def read() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise Dropped
        return "row"

    assert raw.again_once(read, Dropped) == "row"
    assert len(calls) == 2


def test_a_store_that_still_does_not_answer_is_unavailable_after_two_tries() -> None:
    calls: list[int] = []

    def read() -> str:
        calls.append(1)
        raise Dropped

    with pytest.raises(StoreUnavailable, match="did not answer"):
        raw.again_once(read, Dropped)
    assert len(calls) == 2


def test_other_failures_are_not_read_again() -> None:
    calls: list[int] = []

    def read() -> str:
        calls.append(1)
        raise KeyError("not a dropped connection")

    with pytest.raises(KeyError):
        raw.again_once(read, Dropped)
    assert len(calls) == 1
