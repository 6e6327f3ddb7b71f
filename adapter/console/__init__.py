"""The console for clinic IT at /console: server-rendered pages over the store, for admins."""
