"""What each sync run status and item outcome means, in one place: the console, `sync runs`
and the documentation say it in these words."""

RUN_STATUSES = {
    "running": "the run is under way (or its process died; another takes over after the lease)",
    "completed": "the run went through the queue; its counts say what became of each resource",
    "failed": "the run stopped: the EHR was unavailable (the sync then backs off), refused the "
    "adapter's credentials, or another process took the lease over",
}
"""A run's status (sync_runs.status)."""

ITEM_OUTCOMES = {
    "delivered": "the EHR holds this version of the resource",
    "delivered_partially": "the EHR holds the resource without its references to resources "
    "not delivered yet; it is updated once they are (in the same run when they arrive in it)",
    "retry_later": "the EHR did not answer, or answered busy (408, 429, 5xx), through every "
    "attempt; the resource is tried again on the next run",
    "waiting": "held back: the patient is not found or not the same in the EHR by MRN, or a "
    "resource it references is not delivered yet; tried again on every run",
    "dead": "refused by the EHR (4xx) with its OperationOutcome: fix the cause, then replay",
    "skipped": "a type this EHR does not take (its CapabilityStatement or mappings/ehr.yaml); "
    "its stand-in (a clinical note, a coded Observation) is delivered instead",
    "matching": "reconciliation: the EHR's copy says what was delivered",
    "missing": "reconciliation: the EHR has no copy any more; queued to be sent again",
    "different": "reconciliation: the EHR's copy says something else; queued to be sent again",
    "duplicated": "reconciliation: the EHR holds more than one copy of the identifier",
}
"""The counts of a run (sync_runs.counts), each an outcome of one resource."""
SYNC_OUTCOMES = (
    "delivered",
    "delivered_partially",
    "retry_later",
    "waiting",
    "dead",
    "skipped",
)
"""The outcomes a sync run counts (the others are reconciliation's)."""


def legend(names: set[str]) -> list[tuple[str, str]]:
    """The meanings of the outcomes named, in the order above."""
    return [(name, meaning) for name, meaning in ITEM_OUTCOMES.items() if name in names]
