"""What each sync run status and item outcome means, in one place: the console, `sync runs`
and the documentation say it in these words."""

RUN_STATUSES = {
    "running": "the run is under way (or its process died; another takes over after the lease)",
    "completed": "the run went through the queue; its counts say what became of each resource",
    "failed": "the run stopped, or delivered nothing: the EHR was unavailable, throttling or "
    "failing every request (the sync then backs off), refused the adapter's credentials or "
    "permissions (401, 403), redirected elsewhere, spoke another FHIR version, or another "
    "process took the lease over",
}
"""A run's status (sync_runs.status)."""

ITEM_OUTCOMES = {
    "delivered": "the EHR holds this version of the resource",
    "delivered_partially": "the EHR holds the resource without its references to resources "
    "not delivered yet; it is updated once they are (in the same run when they arrive in it)",
    "retry_later": "the EHR did not answer, or answered busy (408, 429, 5xx), through every "
    "attempt; the resource is tried again on the next run (not before a Retry-After)",
    "unconfirmed": "a create whose answer was lost, cut short or unreadable: the EHR may still "
    "store it, so it is searched for by identifier after ADAPTER_EHR_SETTLE_SECONDS, before "
    "anything is sent again",
    "forbidden": "not delivered: the EHR answered 403 to writes of the type (the adapter's "
    "client lacks the scope or permission); tried again once that is fixed, never a dead letter",
    "waiting": "held back: the patient is not found, not the same, inactive or merged into a "
    "record that cannot be confirmed in the EHR by MRN, or a resource it references is not "
    "delivered yet (a copy delivered without that reference is updated once it is); tried "
    "again on every run",
    "dead": "refused by the EHR (4xx) with its OperationOutcome: fix the cause, then replay",
    "skipped": "a type this EHR does not take (its CapabilityStatement or mappings/ehr.yaml); "
    "its stand-in (a clinical note, a coded Observation) is delivered instead",
    "matching": "reconciliation: the EHR's copy says what was delivered",
    "missing": "reconciliation: the EHR has no copy any more; queued to be sent again",
    "different": "reconciliation: the EHR's copy says something else; queued to be sent again",
    "duplicated": "reconciliation: the EHR holds more than one copy of the identifier and not "
    "every extra one is provably the adapter's own (or the EHR refuses DELETE): a person decides",
    "duplicates_removed": "reconciliation: an extra copy that said what the adapter sends (its "
    "own write, stored twice) was deleted from the EHR",
    "edited_in_ehr": "reconciliation: someone changed the EHR's copy after delivery; kept as "
    "mappings/ehr.yaml says (edited_in_ehr) and listed as a dead letter for review",
    "deleted_in_ehr": "reconciliation: the EHR's copy was deleted there (410 Gone); kept deleted "
    "as mappings/ehr.yaml says (deleted_in_ehr) and listed as a dead letter; replay creates it",
}
"""The counts of a run (sync_runs.counts), each an outcome of one resource."""
SYNC_OUTCOMES = (
    "delivered",
    "delivered_partially",
    "retry_later",
    "unconfirmed",
    "forbidden",
    "waiting",
    "dead",
    "skipped",
)
"""The outcomes a sync run counts (the others are reconciliation's)."""


def legend(names: set[str]) -> list[tuple[str, str]]:
    """The meanings of the outcomes named, in the order above."""
    return [(name, meaning) for name, meaning in ITEM_OUTCOMES.items() if name in names]
