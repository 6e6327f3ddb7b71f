"""Store keys of a site's records: source ids are unique within a site, not across sites."""

SEPARATOR = ":"
"""Between a site and a source id in a store key; neither a site id nor a source id holds it."""


def site_key(site: str | None, value: str) -> str:
    """The store key of a source id (a record's id, session id, series id or MRN): the id
    itself in a single-site deployment, `site:id` for a site of a group."""
    return value if site is None else f"{site}{SEPARATOR}{value}"


def site_key_or_none(site: str | None, value: str | None) -> str | None:
    return None if value is None else site_key(site, value)


def source_of_key(key: str) -> str:
    """The source id a site's store key was made from (an MRN may hold the separator; a site
    id never does)."""
    return key.partition(SEPARATOR)[2]
