"""The HTTP service: intake API, health, and (later) the FHIR endpoint."""
