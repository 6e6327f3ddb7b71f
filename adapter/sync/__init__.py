"""The scheduled sync: every stored resource version delivered to the clinic's EHR, once."""
