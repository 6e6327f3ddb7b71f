"""A clinic site -> its Organization and Location, which its visits and infusions name.

US Core 6.1 asks an Organization for `active` and `name`
(https://hl7.org/fhir/us/core/STU6.1/StructureDefinition-us-core-organization.html) and a
Location for `name` (https://hl7.org/fhir/us/core/STU6.1/StructureDefinition-us-core-location.html);
Encounter.serviceProvider and Encounter.location.location are references to them
(https://hl7.org/fhir/R4/encounter-definitions.html#Encounter.serviceProvider), as is
Procedure.location (https://hl7.org/fhir/R4/procedure-definitions.html#Procedure.location).
"""

from adapter.mapping.common import Json, Vocabulary

SOURCE_TYPE = "site"
"""The source of a site's Organization and Location: (site, site id)."""
RECORD_TYPE = "site"
DEFAULT = "site"
"""The identifier value of a single-site deployment's Organization and Location."""


def _value(vocabulary: Vocabulary, part: str) -> str:
    return f"{vocabulary.site_id or DEFAULT}/{part}"


def organization_reference(vocabulary: Vocabulary) -> Json | None:
    organization = vocabulary.mappings.site.organization
    if organization is None:
        return None
    reference = vocabulary.reference(
        "Organization", RECORD_TYPE, _value(vocabulary, "organization")
    )
    return {**reference, "display": organization.name}


def location_reference(vocabulary: Vocabulary, display: str | None = None) -> Json | None:
    location = vocabulary.mappings.site.location
    if location is None:
        return None
    reference = vocabulary.reference("Location", RECORD_TYPE, _value(vocabulary, "location"))
    return {**reference, "display": display or location.name}


def site_to_resources(vocabulary: Vocabulary) -> list[Json]:
    """The site's Organization and Location, each where its site.yaml names it."""
    site = vocabulary.mappings.site
    made: list[Json] = []
    if site.organization is not None:
        organization = vocabulary.resource(
            "Organization", RECORD_TYPE, _value(vocabulary, "organization")
        )
        organization["active"] = True
        organization["name"] = site.organization.name
        if site.organization.npi:
            organization["identifier"].append(
                {"system": vocabulary.systems.npi, "value": site.organization.npi}
            )
        made.append(organization)
    if site.location is not None:
        location = vocabulary.resource("Location", RECORD_TYPE, _value(vocabulary, "location"))
        location["status"] = "active"
        location["name"] = site.location.name
        location["mode"] = "instance"
        address = site.location.address
        if address is not None:
            body: Json = {"use": "work"}
            if address.lines:
                body["line"] = list(address.lines)
            for key, value in (
                ("city", address.city),
                ("state", address.state),
                ("postalCode", address.postal_code),
                ("country", address.country),
            ):
                if value:
                    body[key] = value
            location["address"] = body
        managing = organization_reference(vocabulary)
        if managing is not None:
            location["managingOrganization"] = managing
        made.append(location)
    return made
