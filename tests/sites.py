"""Two sites of a clinic group, written into a test's copy of the mapping files."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from joserfc.jwk import ECKey

from adapter.app import create_app
from adapter.runtime import Runtime
from adapter.settings import Settings
from tests.conftest import ndjson

NORTH, SOUTH = "north", "south"


def add_sites(
    mappings: Path, ehr_urls: dict[str, str] | None = None, own_mrn_systems: bool = True
) -> None:
    """Sites `north` (New York time, its own MRN system) and `south` (Chicago time, its own
    MRN system and drug row); each with its EHR where `ehr_urls` names one. Without
    `own_mrn_systems` both keep the shared MRN system (the sandbox EHR's patients')."""
    for site, zone in ((NORTH, "America/New_York"), (SOUTH, "America/Chicago")):
        folder = mappings / "sites" / site
        folder.mkdir(parents=True)
        mrn = f"https://{site}.ketamine-clinic.example.org/fhir/sid/mrn"
        (folder / "site.yaml").write_text(
            f"time_zone: {zone}\n"
            + (f"identifier_systems:\n  mrn: {mrn}\n" if own_mrn_systems else "")
            + f"meta_source: https://{site}.ketamine-clinic.example.org/fhir/infusion-adapter\n"
            "organization:\n"
            f"  name: Ketamine Clinic {site.title()}\n"
            "location:\n"
            f"  name: Ketamine Clinic {site.title()} infusion suite\n"
            "  address: {lines: ['1 Main Street'], city: Springfield, state: IL}\n"
        )
        url = (ehr_urls or {}).get(site)
        if url:
            (folder / "ehr.yaml").write_text(f"connection:\n  base_url: {url}\n")
    (mappings / "sites" / SOUTH / "codes").mkdir()
    (mappings / "sites" / SOUTH / "codes" / "drugs.yaml").write_text(
        "rows:\n"
        "  - local: KETAMINE-S\n"
        "    text: Ketamine (south's own code)\n"
        "    codings:\n"
        "      - {system: 'http://www.nlm.nih.gov/research/umls/rxnorm', code: '6130',\n"
        "         display: ketamine, source: 'https://mor.nlm.nih.gov/RxNav/search?query=6130'}\n"
    )


@contextmanager
def group_client(
    settings: Settings, tmp_path: Path, records: list[dict[str, Any]]
) -> Iterator[TestClient]:
    """The service of a two-site group (its schedule off) with these records taken in and
    mapped."""
    add_sites(settings.mappings_dir)
    app = create_app(
        settings.model_copy(update={"export_dir": tmp_path / "exports"}), background=False
    )
    with TestClient(app) as client:
        runtime: Runtime = app.state.runtime
        runtime.intake.submit([(i, ndjson(r)) for i, r in enumerate(records)])
        runtime.mapping.run()
        yield client


def site_token(client: TestClient, sites: list[str] | None) -> dict[str, str]:
    """The headers of a SMART client bound to these sites (None: to none)."""
    runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
    now = datetime.now(UTC)
    key = ECKey.generate_key("P-384", parameters={"kid": "test-1"})
    smart = runtime.clients.add_smart_client(
        "site client", "system/*.rs", now, jwks={"keys": [key.as_dict(private=False)]}, sites=sites
    )
    token = runtime.clients.issue_token(smart, smart.grant, now, 3600)
    return {"Authorization": f"Bearer {token}"}
