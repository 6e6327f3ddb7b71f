"""Waits for the sandbox EHR (HAPI FHIR in docker-compose), creates the example day's patients
there once (conditional create on the MRN), then stays up; healthy once the patients exist."""

import json
import pathlib
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

BASE = sys.argv[1].rstrip("/")
PATIENTS = pathlib.Path(sys.argv[2])
READY = pathlib.Path("/tmp/sandbox-ehr-seeded")


def request(
    method: str, url: str, body: object = None, headers: dict[str, str] | None = None
) -> int:
    data = json.dumps(body).encode() if body is not None else None
    sent = {"Content-Type": "application/fhir+json", **(headers or {})}
    with urllib.request.urlopen(
        urllib.request.Request(url, data, sent, method=method), timeout=10
    ) as answer:
        return int(answer.status)


while True:
    try:
        request("GET", f"{BASE}/metadata")
        break
    except (urllib.error.URLError, OSError):
        time.sleep(3)
for patient in json.loads(PATIENTS.read_text()):
    identifier = patient["identifier"][0]
    match = urllib.parse.urlencode({"identifier": f"{identifier['system']}|{identifier['value']}"})
    request("POST", f"{BASE}/Patient", patient, {"If-None-Exist": match})
READY.touch()
print(f"sandbox EHR at {BASE} has the example patients", flush=True)
while True:
    time.sleep(3600)
