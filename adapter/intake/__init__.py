"""Intake of the clinic's records: validation, revision rules and storage."""
