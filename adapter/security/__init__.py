"""Who may call the adapter, what each caller may do, and the record of every access."""
