"""Console sign-ins: a random cookie value, kept as its SHA-256 digest with the admin client it
was exchanged for, the CSRF token of its forms and its expiry."""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.cookies import CookieError, SimpleCookie

from sqlalchemy import Engine, delete, select

from adapter.store.tables import console_sessions as sessions

COOKIE = "adapter_console"
"""The name of the console's sign-in cookie."""
COOKIE_PREFIX = "cs_"


@dataclass(frozen=True)
class ConsoleSession:
    client_id: str
    csrf: str
    expires_at: datetime


def _digest(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


class ConsoleSessions:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def start(self, client_id: str, now: datetime, lifetime: timedelta) -> tuple[str, str]:
        """A new sign-in: the cookie value (shown once, never stored) and its CSRF token.
        Expired sign-ins are removed on the way."""
        cookie = COOKIE_PREFIX + secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        with self.engine.begin() as connection:
            connection.execute(delete(sessions).where(sessions.c.expires_at <= now))
            connection.execute(
                sessions.insert().values(
                    token_hash=_digest(cookie),
                    client_id=client_id,
                    csrf=csrf,
                    created_at=now,
                    expires_at=now + lifetime,
                )
            )
        return cookie, csrf

    def find(self, cookie: str, now: datetime) -> ConsoleSession | None:
        """The unexpired sign-in of this cookie value."""
        if not cookie.startswith(COOKIE_PREFIX) or len(cookie) > 128:
            return None
        query = select(sessions.c.client_id, sessions.c.csrf, sessions.c.expires_at).where(
            sessions.c.token_hash == _digest(cookie), sessions.c.expires_at > now
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).one_or_none()
        return ConsoleSession(row.client_id, row.csrf, row.expires_at) if row else None

    def end(self, cookie: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(delete(sessions).where(sessions.c.token_hash == _digest(cookie)))


def cookie_value(header: str) -> str | None:
    """The console's sign-in cookie in a Cookie header, if any."""
    try:
        parsed = SimpleCookie(header)
    except CookieError:
        return None
    found = parsed.get(COOKIE)
    return found.value if found is not None and found.value else None
