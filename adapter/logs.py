"""Logging set-up. The adapter's own log lines never carry record contents; libraries that log
request URLs (which carry search parameters such as a patient's MRN) are held at WARNING."""

import logging

URL_LOGGERS = ("urllib3", "httpx", "httpcore", "uvicorn.access")
"""Loggers whose DEBUG and INFO lines name full request URLs."""


def quiet_url_loggers() -> None:
    for name in URL_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_url_loggers()
