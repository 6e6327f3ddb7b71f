"""The US Core 6.1.0 profiles the adapter's resources claim: each claim made where it holds,
and the adapter's own check refusing a resource that claims a profile and lacks what it needs."""

import copy
from collections.abc import Callable
from typing import Any

import pytest

from adapter.fhir import us_core
from adapter.fhir.validation import InvalidResource, ResourceValidator
from tests.conftest import EXAMPLE_DAY, ROOT
from tests.mapping.helpers import map_example_day, mapper

Json = dict[str, Any]
BASE = us_core.BASE


def _day() -> list[Json]:
    mapped = map_example_day(mapper(ROOT / "mappings"), EXAMPLE_DAY)
    return [r for resources in mapped.values() for r in resources]


DAY = _day()


def _first(resource_type: str, code: str | None = None) -> Json:
    for resource in DAY:
        codes = {c.get("code") for c in resource.get("code", {}).get("coding", [])}
        if resource["resourceType"] == resource_type and (code is None or code in codes):
            return copy.deepcopy(resource)
    raise AssertionError(f"no {resource_type} {code or ''} in the example day")


def test_every_resource_of_a_profiled_kind_claims_its_profile() -> None:
    claims: dict[str, set[str]] = {}
    for resource in DAY:
        for profile in resource.get("meta", {}).get("profile", []):
            if profile.startswith(BASE):
                claims.setdefault(resource["resourceType"], set()).add(profile.removeprefix(BASE))

    assert claims == {
        "Patient": {"us-core-patient"},
        "Encounter": {"us-core-encounter"},
        "Procedure": {"us-core-procedure"},
        "CarePlan": {"us-core-careplan"},
        "DocumentReference": {"us-core-documentreference"},
        "Observation": {
            "us-core-vital-signs",
            "us-core-heart-rate",
            "us-core-respiratory-rate",
            "us-core-pulse-oximetry",
            "us-core-blood-pressure",
            "us-core-body-temperature",
            "us-core-body-weight",
        },
    }
    for resource_type in ("Patient", "Encounter", "Procedure", "CarePlan", "DocumentReference"):
        assert all(
            us_core.BY_TYPE[resource_type] in r["meta"]["profile"]
            for r in DAY
            if r["resourceType"] == resource_type
        )
    # Pain, sedation, fasting and transport fit none of US Core's Observation profiles.
    assert not any(
        p.startswith(BASE)
        for r in DAY
        if r["resourceType"] == "Observation"
        and r["category"][0]["coding"][0]["code"] != "vital-signs"
        for p in r.get("meta", {}).get("profile", [])
    )


def _without(*path: str) -> Callable[[Json], None]:
    def change(resource: Json) -> None:
        target = resource
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]

    return change


def _set(value: Any, *path: str) -> Callable[[Json], None]:
    def change(resource: Json) -> None:
        target = resource
        for step in path[:-1]:
            target = target[step] if not isinstance(target, list) else target[int(step)]
        target[path[-1] if not isinstance(target, list) else int(path[-1])] = value

    return change


BREAKS: list[tuple[str, str | None, Callable[[Json], None], str]] = [
    ("Patient", None, _set([{"text": "x"}], "name"), "us-core-6"),
    ("Patient", None, _set([{"value": "1"}], "identifier"), "identifier[0]"),
    ("Encounter", None, _without("type"), "type: mandatory"),
    ("Encounter", None, _set({"identifier": {"value": "1"}}, "subject"), "subject"),
    ("Procedure", None, _without("performedPeriod"), "us-core-7"),
    ("CarePlan", None, _set([{"text": "infusions"}], "category"), "assess-plan"),
    ("CarePlan", None, _without("text"), "text"),
    ("DocumentReference", None, _set([{"text": "note"}], "category"), "clinical-note"),
    (
        "DocumentReference",
        None,
        _set({"contentType": "text/plain"}, "content", "0", "attachment"),
        "us-core-6",
    ),
    (
        "Observation",
        "8867-4",
        _set(
            {
                "value": 80,
                "unit": "bpm",
                "system": "http://unitsofmeasure.org",
                "code": "{beats}/min",
            },
            "valueQuantity",
        ),
        "valueQuantity",
    ),
    (
        "Observation",
        "59408-5",
        _set([{"system": "http://loinc.org", "code": "59408-5"}], "code", "coding"),
        "2708-6",
    ),
    ("Observation", "85354-9", _set([], "component"), "8480-6"),
    ("Observation", "8867-4", _set([{"text": "vitals"}], "category"), "vital-signs"),
]


@pytest.mark.parametrize(
    ("resource_type", "code", "change", "named"),
    BREAKS,
    ids=[f"{b[0]}-{b[3]}" for b in BREAKS],
)
def test_a_claim_that_does_not_hold_is_refused_naming_the_element(
    resource_type: str, code: str | None, change: Callable[[Json], None], named: str
) -> None:
    resource = _first(resource_type, code)
    assert list(us_core.problems(resource)) == []
    change(resource)

    found = list(us_core.problems(resource))
    assert any(named in problem for problem in found), found
    with pytest.raises(InvalidResource):
        ResourceValidator().check(resource)


def test_the_capability_statement_lists_the_profiles(client: Any) -> None:
    statement = client.get("/fhir/metadata").json()
    listed = {r["type"]: r.get("supportedProfile", []) for r in statement["rest"][0]["resource"]}

    assert listed["Patient"] == [f"{BASE}us-core-patient"]
    assert f"{BASE}us-core-blood-pressure" in listed["Observation"]
    assert listed["AdverseEvent"] == []
