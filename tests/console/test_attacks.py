"""The console under attack: markup in a record's free text, codes and names, and in the forms,
is shown escaped on every page; forms that are huge, of another type, not UTF-8, or without a
valid sign-in are refused with a page or a redirect; nothing answers 500."""

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from adapter.app import create_app
from adapter.settings import Settings
from tests.conftest import adverse_event, grant, ndjson, session
from tests.console.test_access import page_csrf, runtime_of, sign_in

MARKUP = re.compile(r"<(script|img|svg|b|i)\b", re.IGNORECASE)
DAY = "2026-11-20"
PATIENT = {"mrn": "555001", "family": "<b>Evil", "given": "<i>Eve", "birth_date": "1980-01-01"}


@pytest.fixture
def attacked(settings: Settings) -> Iterator[TestClient]:
    """A console whose store holds records with markup wherever the clinic may write text."""
    app = create_app(settings, background=False)
    with TestClient(app, follow_redirects=False) as console:
        runtime = runtime_of(console)
        records = ndjson(
            session(
                id="SES-EVIL-1",
                patient=PATIENT,
                drug="KET<script>alert(1)</script>",
                notes="<script>alert('notes')</script>",
            ),
            adverse_event(
                id="AE-EVIL-1",
                session_id="SES-EVIL-1",
                patient=PATIENT,
                event="EV<svg onload=alert(1)>",
                description="<img src=x onerror=alert(1)>",
            ),
        )
        lines = [line for line in records.splitlines() if line.strip()]
        outcomes = runtime.intake.submit(list(enumerate(lines, start=1)))
        assert all(o.outcome == "created" for o in outcomes)
        runtime.mapping.run()
        sign_in(console, grant(runtime).api_key)
        yield console


def test_markup_from_records_is_shown_escaped_on_every_page(attacked: TestClient) -> None:
    paths = [
        f"/console?day={DAY}",
        "/console/sessions/SES-EVIL-1",
        "/console/held",
        "/console/mappings",
        "/console/runs",
        "/console/audit",
        "/console/patients/555001",
        "/console/audit?client_id=%3Cscript%3E&interaction=%3Cimg%3E",
    ]

    pages = {path: attacked.get(path) for path in paths}

    for path, answer in pages.items():
        assert answer.status_code == 200, path
        assert MARKUP.findall(answer.text) == [], path
    assert "KET&lt;script&gt;" in pages["/console/mappings"].text
    assert "EV&lt;svg onload=alert(1)&gt;" in pages["/console/sessions/SES-EVIL-1"].text


def test_a_path_that_turns_its_text_around_is_shown_as_sent_on_the_audit_page(
    attacked: TestClient,
) -> None:
    """A right-to-left override in a request's path would have the audit page show other
    text than was sent (U+202E reverses what follows it): it is written out."""
    attacked.get("/fhir/Patient/\u202egnp.exe")
    attacked.app.state.audit_writer.flush()  # type: ignore[attr-defined]

    shown = attacked.get("/console/audit").text

    assert "\u202e" not in shown
    assert "/fhir/Patient/&lt;U+202E&gt;gnp.exe" in shown


def test_markup_in_a_mapping_form_is_escaped_and_control_characters_refused(
    attacked: TestClient, settings: Settings
) -> None:
    drugs = settings.mappings_dir / "codes" / "drugs.yaml"
    before = drugs.read_text()
    form = {
        "csrf": page_csrf(attacked, "/console/mappings"),
        "table": "drugs",
        "local": "KET<script>alert(1)</script>",
        "text": "<script>alert(2)</script>",
        "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
        "code": "6130",
        "display": "<img src=x onerror=alert(3)>",
        "source": "javascript:alert(4)",
    }

    previewed = attacked.post("/console/mappings/preview", data=form)
    broken = attacked.post("/console/mappings/save", data={**form, "text": "a\n- local: X"})

    assert previewed.status_code == 200 and MARKUP.findall(previewed.text) == []
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in previewed.text
    assert broken.status_code == 422 and "text: one line" in broken.text
    assert drugs.read_text() == before


def test_huge_odd_and_unsigned_forms_are_refused_without_a_500(attacked: TestClient) -> None:
    csrf = page_csrf(attacked)
    huge_body = "csrf=" + csrf + "&id=" + "a" * 70_000
    many_ids = "&".join([f"csrf={csrf}"] + [f"id=x{n}" for n in range(5000)])
    form = {"content-type": "application/x-www-form-urlencoded"}

    answers = {
        "huge body": attacked.post("/console/replay", content=huge_body, headers=form),
        "huge field": attacked.post(
            "/console/mappings/save", data={"csrf": csrf, "source": "s" * 5000}
        ),
        "many ids": attacked.post("/console/replay", content=many_ids, headers=form),
        "json": attacked.post("/console/replay", json={"csrf": csrf, "id": "x"}),
        "not utf-8": attacked.post(
            "/console/replay", content=b"csrf=%ff%fe&id=\xff\xfe", headers=form
        ),
        "bad query": attacked.get("/console", params={"day": "<script>x</script>"}),
        "no page": attacked.get("/console/<script>"),
    }
    signed = attacked.cookies.get("adapter_console") or ""
    attacked.cookies.clear()
    attacked.cookies.set("adapter_console", signed[:-2] + "xx", path="/console")
    tampered = attacked.post("/console/replay", data={"csrf": csrf, "id": "x"})
    tampered_page = attacked.get("/console/held")
    attacked.cookies.clear()
    no_cookie = attacked.post("/console/mappings/save", data={"csrf": csrf})

    statuses = {name: answer.status_code for name, answer in answers.items()}
    assert statuses == {
        "huge body": 400,
        "huge field": 400,
        "many ids": 409,
        "json": 400,
        "not utf-8": 403,
        "bad query": 400,
        "no page": 404,
    }
    for answer in answers.values():
        assert answer.headers["content-type"].startswith("text/html")
        assert MARKUP.findall(answer.text) == []
    assert "day:" in answers["bad query"].text
    for refused in (tampered, tampered_page, no_cookie):
        assert refused.status_code == 303
        assert refused.headers["location"] == "/console/sign-in"
