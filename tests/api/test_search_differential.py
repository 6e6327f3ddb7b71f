"""Search differential: the adapter's answers against Medplum's in-memory search (the search code
behind FhirRouter, tests/fhir-clients/differential.mjs) over the same resources, for every
search parameter the endpoint supports, with values drawn from the example day."""

import json
import subprocess
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from adapter.fhir.indexing import EXACT_SYSTEM, REFERENCE_SYSTEM, STRING_SYSTEM, index
from adapter.fhir.search_params import SEARCH_PARAMS
from tests.conftest import EXAMPLE_DAY

DIFFERENTIAL = Path(__file__).parents[1] / "fhir-clients" / "differential.mjs"
NDJSON = {"content-type": "application/x-ndjson"}
VALUES_PER_PARAM = 3

DEVIATIONS = {
    ("DetectedIssue", "date"): "an alias of `identified` for clients that search every type by "
    "date; R4 defines no `date` parameter on DetectedIssue",
}
"""Parameters that are not R4's, so have no answer to compare with."""


def _medplum_form(search: str, holders: dict[tuple[str, str], str]) -> str:
    """The search as Medplum is asked it. Its in-memory search has no `:identifier` modifier
    on references (it matches nothing), so a reference by identifier is asked as the literal
    reference of the resource that holds that identifier: the same set, by R4's definitions."""
    resource_type, query = search.split("?", 1)
    name, value = query.split("=", 1)
    if name.endswith(":identifier"):
        base = name.removesuffix(":identifier")
        target = SEARCH_PARAMS[resource_type][base].target or "Patient"
        return f"{resource_type}?{base}={target}/{holders[(target, value)]}"
    return search


def _everything(client: TestClient) -> list[dict[str, Any]]:
    found = []
    for resource_type in SEARCH_PARAMS:
        bundle = client.get(f"/fhir/{resource_type}", params={"_count": "1000"}).json()
        found += [e["resource"] for e in bundle.get("entry", [])]
    return found


def _values(resource_type: str, name: str, resources: list[dict[str, Any]]) -> list[str]:
    """Query strings of the parameter, with values that resources of the day hold."""
    param = SEARCH_PARAMS[resource_type][name]
    queries: list[str] = []
    for resource in resources:
        if resource["resourceType"] != resource_type:
            continue
        indexed = index(resource)
        if param.type == "date":
            if indexed.date_start is not None:
                day = indexed.date_start.date().isoformat()
                queries += [f"{name}={day}", f"{name}=ge{day}", f"{name}=lt{day}"]
            continue
        for token_param, system, code in indexed.tokens:
            if param.type == "reference" and token_param == name and system == REFERENCE_SYSTEM:
                queries.append(f"{name}={code}")
            elif param.type == "reference" and token_param == f"{name}:identifier":
                queries.append(f"{name}:identifier={system}|{code}")
            elif param.type == "token" and token_param == name:
                queries += [f"{name}={system}|{code}" if system else f"{name}={code}"]
            elif param.type == "string" and token_param == name and system == STRING_SYSTEM:
                queries.append(f"{name}={code[:3]}")
            elif param.type == "string" and token_param == name and system == EXACT_SYSTEM:
                queries.append(f"{name}:exact={code}")
    distinct = list(dict.fromkeys(queries))
    return distinct[: VALUES_PER_PARAM * 3]


def _searches(resources: list[dict[str, Any]]) -> list[str]:
    searches = []
    for resource_type, params in SEARCH_PARAMS.items():
        for name in params:
            if (resource_type, name) in DEVIATIONS:
                continue
            searches += [
                f"{resource_type}?{query}" for query in _values(resource_type, name, resources)
            ]
    return searches


def _medplum(
    resources: list[dict[str, Any]], searches: list[str], tmp_path: Path
) -> dict[str, Any]:
    job = tmp_path / "differential.json"
    job.write_text(json.dumps({"resources": resources, "searches": searches}))
    finished = subprocess.run(
        ["node", str(DIFFERENTIAL), str(job)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    return {a["search"]: a for a in json.loads(finished.stdout)["answers"]}


def _open_ended_only(
    search: str, theirs: list[str], ours: list[str], resources: list[dict[str, Any]]
) -> bool:
    """Whether Medplum's answer differs only by resources whose period has no end, for a date
    searched without a prefix. R4 (search.html#date): `eq` matches when the search's range
    fully contains the resource's, and a Period without an end runs on (a series still going);
    Medplum matches such a period by its start."""
    resource_type, query = search.split("?", 1)
    name, value = query.split("=", 1)
    is_date = SEARCH_PARAMS[resource_type][name.split(":")[0]].type == "date"
    if not is_date or value[:2].isalpha() or not set(ours) <= set(theirs):
        return False
    extra = set(theirs) - set(ours)
    periods = {r["id"]: r.get("period") for r in resources}
    return bool(extra) and all(
        isinstance(periods.get(i), dict) and "end" not in periods[i] for i in extra
    )


def test_every_parameter_answers_as_medplum_does(
    client: TestClient, tmp_path: Path, settings_mappings: Path
) -> None:
    # The site's Organization and Location too, which the shipped site.yaml leaves out.
    site = settings_mappings / "site.yaml"
    site.write_text(
        site.read_text()
        + "organization: {name: Ketamine Clinic}\n"
        + "location: {name: Ketamine Clinic infusion suite}\n"
    )
    client.post("/api/v1/records", content=EXAMPLE_DAY.read_bytes(), headers=NDJSON)
    client.post("/api/v1/mapping/reload")
    resources = _everything(client)
    searches = _searches(resources)
    holders = {
        (r["resourceType"], f"{i.get('system')}|{i.get('value')}"): r["id"]
        for r in resources
        for i in (r["identifier"] if isinstance(r.get("identifier"), list) else [])
    }
    asked = {search: _medplum_form(search, holders) for search in searches}
    theirs = _medplum(resources, sorted(set(asked.values())), tmp_path)

    differences = []
    covered = set()
    for search in searches:
        resource_type, query = search.split("?", 1)
        name, value = query.split("=", 1)
        ours = client.get(f"/fhir/{resource_type}", params={name: value, "_count": "1000"})
        assert ours.status_code == 200, (search, ours.text)
        our_ids = sorted(e["resource"]["id"] for e in ours.json().get("entry", []))
        answer = theirs[asked[search]]
        if "error" not in answer and _open_ended_only(search, answer["ids"], our_ids, resources):
            continue
        if "error" in answer or answer["ids"] != our_ids:
            differences.append((search, len(our_ids), answer.get("error", len(answer["ids"]))))
        covered.add((resource_type, name.split(":")[0]))

    assert differences == [], "\n".join(map(str, differences))
    expected = {
        (t, n) for t, params in SEARCH_PARAMS.items() for n in params if (t, n) not in DEVIATIONS
    }
    assert expected - covered == set(), "parameters the example day holds no value for"
