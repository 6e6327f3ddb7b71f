"""The ASGI entry point for any ASGI server: `uvicorn adapter.main:app`."""

from adapter.app import create_app

app = create_app()
