"""Infusion clinic EHR adapter: clinic charting records in, FHIR R4 out."""

__version__ = "0.1.0"
