"""A clinical note (DocumentReference with a plain-text attachment): how a side effect or a
protocol breach reaches an EHR that takes neither AdverseEvent nor DetectedIssue."""

import base64
from datetime import datetime

from adapter.mapping.common import Json, Vocabulary, instant

CONTENT_TYPE = "text/plain;charset=utf-8"


def note(
    vocabulary: Vocabulary,
    record_type: str,
    value: str,
    *,
    subject: Json,
    recorded: datetime,
    author: Json | None,
    description: str,
    text: str,
    related: list[Json],
    period: Json | None,
    encounter: Json,
    withdrawn: bool,
    withdrawn_text: str,
) -> Json:
    """The note of `text`; withdrawn, its status says so and its text says only that."""
    notes = vocabulary.mappings.notes
    document = vocabulary.resource("DocumentReference", record_type, value)
    document["status"] = "entered-in-error" if withdrawn else "current"
    document["docStatus"] = "final"
    document["type"] = vocabulary.concept(notes.type)
    document["category"] = [vocabulary.concept(notes.category)]
    document["subject"] = subject
    document["date"] = instant(recorded)
    if author:
        document["author"] = [author]
    document["description"] = withdrawn_text if withdrawn else description
    body = (withdrawn_text + "\n") if withdrawn else text
    document["content"] = [
        {
            "attachment": {
                "contentType": CONTENT_TYPE,
                "data": base64.b64encode(body.encode()).decode(),
                "title": description,
                "creation": instant(recorded),
            }
        }
    ]
    context: Json = {"encounter": [encounter], "related": related}
    if period:
        context["period"] = period
    document["context"] = context
    return document
