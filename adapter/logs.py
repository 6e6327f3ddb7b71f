"""Logging set-up. The adapter's own log lines never carry record contents; libraries that log
request URLs (which carry search parameters such as a patient's MRN) are held at WARNING, and
so are the libraries that would log on every idle tick of the scheduler or every command."""

import logging
import traceback

URL_LOGGERS = ("urllib3", "httpx", "httpcore", "uvicorn.access")
"""Loggers whose DEBUG and INFO lines name full request URLs."""
TICK_LOGGERS = ("apscheduler.executors", "apscheduler.scheduler", "alembic")
"""Loggers that speak on every tick of a job ("Running job...", "...executed successfully")
or every start of a command (Alembic's "Context impl SQLiteImpl."); their warnings and errors
still show, and the store says itself when a migration changed something."""
SKIPPED_RUN = "maximum number of running instances reached"
"""APScheduler's warning when a tick comes while the job's previous run goes on: by design
(one run at a time), and said every tick of a long run."""


class SkippedTicks(logging.Filter):
    """Drops APScheduler's "skipped: maximum number of running instances reached"."""

    def filter(self, record: logging.LogRecord) -> bool:
        return SKIPPED_RUN not in record.getMessage()


def without_text(error: BaseException) -> str:
    """An error as the logs say it: its type and the traceback's frames, never its text, which
    may quote what a caller sent or a record held."""
    frames = "".join(traceback.format_tb(error.__traceback__))
    return f"{type(error).__name__}\n{frames}".rstrip()


class WithoutErrorText(logging.Filter):
    """A library's line about an exception (APScheduler's "Job ... raised an exception") keeps
    the exception's type and the traceback's frames, never its text, which may quote what a
    record held (a store's error, a value). The adapter's own lines do the same
    (`log_unexpected`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()}: {without_text(record.exc_info[1])}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_url_loggers() -> None:
    for name in URL_LOGGERS + TICK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    scheduler = logging.getLogger("apscheduler.scheduler")
    if not any(isinstance(f, SkippedTicks) for f in scheduler.filters):
        scheduler.addFilter(SkippedTicks())
    for name in ("apscheduler.executors.default", "apscheduler.scheduler"):
        library = logging.getLogger(name)
        if not any(isinstance(f, WithoutErrorText) for f in library.filters):
            library.addFilter(WithoutErrorText())


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_url_loggers()
