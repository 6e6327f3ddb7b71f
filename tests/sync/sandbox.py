"""The sandbox EHR (tests/ehr-server) in a Node process, and what tests ask of it."""

import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import requests

SERVER = Path(__file__).resolve().parent.parent / "ehr-server"
SANDBOX_PATIENTS = SERVER / "sandbox-patients.json"
MRN_SYSTEM = "https://ketamine-clinic.example.org/fhir/sid/mrn"
RECORDS_SYSTEM = "https://ketamine-clinic.example.org/fhir/sid/infusion-charting"
DEFAULT_CONFIG = {
    "conditionalCreate": True,
    "transactions": True,
    "readOnlyTypes": [],
    "delete": True,
    "requireIfMatch": False,
    "bearer": None,
    "smartClients": {},
    "quirks": {},
}
PROFILES: dict[str, dict[str, Any]] = {
    "generic": {},
    "epic": {
        "conditionalCreate": False,
        "readOnlyTypes": ["AdverseEvent", "DetectedIssue"],
        "delete": False,
    },
    "oracle": {"requireIfMatch": True, "delete": False},
    "single": {"transactions": False, "conditionalCreate": False},
    "plain": {"conditionalCreate": False},
}
"""The EHRs the sync must work with: a FHIR server that does everything; Epic's R4 API (no
conditional create, AdverseEvent and DetectedIssue read-only, no DELETE); Oracle Health (If-Match
on updates, no DELETE); a server that takes single requests only; a server that takes
transactions without conditional create (its only guard against a second copy is the sync's
own)."""


def delivered_kinds(profile: str) -> Callable[[str], bool]:
    """Which delivery kinds (adapter.store.outbox.delivery_kind) reach an EHR of a profile: every
    type it writes, and the stand-ins of the types it does not."""
    read_only = set(PROFILES[profile].get("readOnlyTypes", []))

    def delivered(kind: str) -> bool:
        stood_for, _, stand_in = kind.partition(">")
        if stand_in:
            return stood_for in read_only
        return kind not in read_only

    return delivered


class SandboxEhr:
    def __init__(self, *args: str) -> None:
        if not (SERVER / "node_modules" / "@medplum" / "fhir-router").exists():
            raise RuntimeError("the sandbox EHR is not installed: npm ci --prefix tests/ehr-server")
        self.process = subprocess.Popen(
            ["node", str(SERVER / "server.mjs"), "--port", "0", *args],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the sandbox EHR did not start")
        started = orjson.loads(line)
        self.base = str(started["base"])
        self.origin = self.base.removesuffix("/fhir")
        self.decoy = str(started["decoy"])
        """Another origin, with a store of its own, that the `redirect` quirk points at."""
        self.http = requests.Session()

    def control(self, method: str, path: str, body: Any = None) -> Any:
        answer = self.http.request(
            method, f"{self.origin}/_control{path}", data=orjson.dumps(body) if body else None
        )
        answer.raise_for_status()
        return orjson.loads(answer.content) if answer.content else None

    def reset(self, profile: str = "generic") -> None:
        """Empty the server, apply an EHR profile, and create the sandbox patients."""
        self.control("POST", "/reset")
        self.control("DELETE", "/reject")
        self.control("PUT", "/config", {**DEFAULT_CONFIG, **PROFILES[profile]})
        self.control("POST", "/seed", orjson.loads(SANDBOX_PATIENTS.read_bytes()))

    def configure(self, **config: Any) -> None:
        self.control("PUT", "/config", config)

    def quirk(self, **quirks: Any) -> None:
        """Make the EHR misbehave (tests/ehr-server/quirks.mjs); no arguments end it."""
        self.control("PUT", "/config", {"quirks": quirks})

    def settle(self) -> int:
        """Store the writes a `lateCommit` EHR is holding; how many there were."""
        stored: int = self.control("POST", "/settle")["stored"]
        return stored

    def reached_decoy(self) -> dict[str, Any]:
        """What reached the decoy origin: requests by method, resources stored by type."""
        found: dict[str, Any] = self.control("GET", "/decoy")
        return found

    def add_patients(self, mrns: list[str]) -> None:
        """Patients the EHR knows, by MRN."""
        self.control(
            "POST",
            "/seed",
            [
                {
                    "resourceType": "Patient",
                    "identifier": [{"system": MRN_SYSTEM, "value": mrn}],
                    "name": [{"family": f"Test{mrn}", "given": ["Pat"]}],
                }
                for mrn in mrns
            ],
        )

    def all(self, resource_type: str) -> list[dict[str, Any]]:
        """Every resource of a type the EHR holds, read from its store (whatever its quirks)."""
        found: list[dict[str, Any]] = self.control("GET", f"/resources/{resource_type}")
        return found

    def identifiers(self, resource_type: str) -> list[Any]:
        """The identifier element of every resource of a type the EHR holds (None where it has
        none): a fraction of `all` to send and read."""
        found: list[Any] = self.control("GET", f"/identifiers/{resource_type}")
        return found

    def identifier_counts(self, resource_type: str) -> Counter[tuple[str, str]]:
        """How many copies the EHR holds of each of the adapter's identifiers of a type."""
        counts: Counter[tuple[str, str]] = Counter()
        for listed in self.identifiers(resource_type):
            for identifier in listed if isinstance(listed, list) else [listed] if listed else []:
                if identifier["system"].startswith(RECORDS_SYSTEM):
                    counts[(identifier["system"], identifier["value"])] += 1
        return counts

    def stats(self) -> dict[str, int]:
        found: dict[str, int] = self.control("GET", "/stats")
        return found

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
