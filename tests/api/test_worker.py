"""The service maps in the background: records posted to intake become resources unasked."""

import time

from fastapi.testclient import TestClient

from adapter.app import create_app
from adapter.settings import Settings
from tests.conftest import EXAMPLE_DAY, sign_in


def test_posted_records_are_mapped_by_the_background_worker(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"mapping_interval_seconds": 0.2}))

    with TestClient(app) as client:
        sign_in(client)
        client.post(
            "/api/v1/records",
            content=EXAMPLE_DAY.read_bytes(),
            headers={"content-type": "application/x-ndjson"},
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = client.get("/api/v1/mapping/status").json()["records"]
            if states.get("mapped") == 19:
                break
            time.sleep(0.1)
        record = client.get("/api/v1/records/infusion_session/SES-2026-00412").json()

    assert states == {"mapped": 19}
    # The Procedure, the infusion (its rate periods contained in it), pain and weight.
    assert len(record["mapping"]["resources"]) == 5
