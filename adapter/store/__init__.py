"""The store: source records and their revisions, in SQLite or PostgreSQL."""
