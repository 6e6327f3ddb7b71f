"""FHIR R4 on the wire: the models that check resources, and the checks they do not make."""

FHIR_VERSION = "4.0.1"
