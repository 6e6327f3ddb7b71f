"""FHIR Bulk Data export: jobs kept in the store, run in the background, files that expire."""
