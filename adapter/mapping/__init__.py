"""Mapping configuration: the facts clinic IT edits in mappings/, loaded and checked."""
