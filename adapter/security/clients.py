"""Registered clients, their API keys and access tokens, and spent assertion ids.

API keys and access tokens are random 256-bit strings shown once; the store keeps only their
SHA-256, so a copy of the database lets no one in."""

import hashlib
import secrets
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from adapter.mapping.sites import SITE_ID_RULE, is_site_id
from adapter.security.scopes import Grant
from adapter.store import notices
from adapter.store.tables import access_tokens, api_clients, spent_assertions

ROLES = ("intake", "admin", "metrics")
KEY_PREFIX = "iak_"
TOKEN_PREFIX = "iat_"
CACHE_SECONDS = 10.0
"""How long a checked key or token is trusted without asking the store again: a revocation
takes effect within this time in every process (on PostgreSQL each process also hears of it at
once, and forgets what it checked: docs/replicas.md)."""


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Client:
    id: str
    name: str
    kind: str
    """`key` (an API key with a role) or `smart` (SMART Backend Services, a JWKS)."""
    role: str | None
    scopes: str | None
    jwks: dict[str, Any] | None
    jwks_url: str | None
    development: bool
    created_at: datetime
    revoked_at: datetime | None
    sites: frozenset[str] | None = None
    """The clinic sites of a group the client is bound to: it writes and reads only theirs.
    None: bound to none, every site."""

    @property
    def grant(self) -> Grant:
        return Grant.of(self.scopes or "")


@dataclass(frozen=True)
class TokenHolder:
    client: Client
    grant: Grant
    expires_at: datetime


class _Cache:
    """A small time-bound memo of lookups, so that each request does not ask the store. A
    lookup begun before a `clear` is not kept: it may have read what the clear is about."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self.items: dict[str, tuple[float, Any]] = {}
        self.lock = threading.Lock()
        self.generation = 0

    def get(self, key: str) -> tuple[bool, Any]:
        with self.lock:
            found = self.items.get(key)
        if found is None or found[0] < time.monotonic():
            return False, None
        return True, found[1]

    def put(self, key: str, value: Any, generation: int) -> None:
        """Keep a lookup begun at `generation` (read before asking the store)."""
        with self.lock:
            if generation != self.generation:
                return
            if len(self.items) >= self.size:
                self.items.clear()
            self.items[key] = (time.monotonic() + CACHE_SECONDS, value)

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.generation += 1


_COLUMNS = (
    api_clients.c.id,
    api_clients.c.name,
    api_clients.c.kind,
    api_clients.c.role,
    api_clients.c.scopes,
    api_clients.c.jwks,
    api_clients.c.jwks_url,
    api_clients.c.development,
    api_clients.c.created_at,
    api_clients.c.revoked_at,
    api_clients.c.sites,
)


def _client(row: Any) -> Client:
    return Client(
        id=row.id,
        name=row.name,
        kind=row.kind,
        role=row.role,
        scopes=row.scopes,
        jwks=orjson.loads(row.jwks) if row.jwks else None,
        jwks_url=row.jwks_url,
        development=bool(row.development),
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        sites=frozenset(row.sites.split()) if row.sites else None,
    )


def _sites_value(sites: Iterable[str] | None) -> str | None:
    """The stored form of a site binding (ids separated by spaces); None: every site."""
    if sites is None:
        return None
    ids = sorted(set(sites))
    bad = [site for site in ids if not is_site_id(site)]
    if not ids or bad:
        raise ValueError(f"sites: each a site id, {SITE_ID_RULE}")
    return " ".join(ids)


class Clients:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.keys = _Cache()
        self.tokens = _Cache()

    def add_key_client(
        self,
        name: str,
        role: str,
        now: datetime,
        development: bool = False,
        sites: Iterable[str] | None = None,
    ) -> tuple[Client, str]:
        """A client of the intake or admin API; the key is returned here and never again.
        `sites`: the clinic sites its records may name (None: any)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        client_id = self._insert(
            name=name,
            kind="key",
            role=role,
            key_hash=digest(key),
            development=development,
            now=now,
            sites=_sites_value(sites),
        )
        return self._get(client_id), key

    def add_smart_client(
        self,
        name: str,
        scopes: str,
        now: datetime,
        jwks: dict[str, Any] | None = None,
        jwks_url: str | None = None,
        development: bool = False,
        sites: Iterable[str] | None = None,
    ) -> Client:
        """A SMART Backend Services client: its public keys (or where to fetch them) and the
        scopes it may be granted."""
        if (jwks is None) == (jwks_url is None):
            raise ValueError("give the client's JWKS or its JWKS URL, one of the two")
        if jwks is not None and not isinstance(jwks.get("keys"), list):
            raise ValueError("a JWKS is a JSON object with a `keys` list")
        Grant.of(scopes)
        client_id = self._insert(
            name=name,
            kind="smart",
            scopes=" ".join(scopes.split()),
            jwks=orjson.dumps(jwks).decode() if jwks is not None else None,
            jwks_url=jwks_url,
            development=development,
            now=now,
            sites=_sites_value(sites),
        )
        return self._get(client_id)

    def _insert(self, now: datetime, **values: Any) -> str:
        client_id = uuid.uuid4().hex
        with self.engine.begin() as connection:
            connection.execute(insert(api_clients).values(id=client_id, created_at=now, **values))
            # A key tried before it existed is remembered as unknown: the processes forget it.
            notices.announce(connection, notices.CLIENTS)
        return client_id

    def _get(self, client_id: str) -> Client:
        found = self.get(client_id)
        assert found is not None
        return found

    def get(self, client_id: str) -> Client | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(*_COLUMNS).where(api_clients.c.id == client_id)
            ).one_or_none()
        return _client(row) if row else None

    def listed(self) -> list[Client]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(*_COLUMNS).order_by(api_clients.c.created_at))
            return [_client(row) for row in rows]

    def revoke(self, client_id: str, now: datetime) -> bool:
        """Revoke the client and every token it holds; False when there is no such client."""
        with self.engine.begin() as connection:
            changed = connection.execute(
                update(api_clients)
                .where(api_clients.c.id == client_id, api_clients.c.revoked_at.is_(None))
                .values(revoked_at=now)
            ).rowcount
            connection.execute(delete(access_tokens).where(access_tokens.c.client_id == client_id))
            notices.announce(connection, notices.CLIENTS)
        self.forget()
        return bool(changed)

    def forget(self) -> None:
        """Ask the store again for every key and token (a client was revoked, here or in
        another process)."""
        self.keys.clear()
        self.tokens.clear()

    def development_clients(self) -> list[Client]:
        return [c for c in self.listed() if c.development and c.revoked_at is None]

    def by_key(self, key: str) -> Client | None:
        """The active key client this API key belongs to."""
        hashed = digest(key)
        generation = self.keys.generation
        known, value = self.keys.get(hashed)
        if known:
            return value  # type: ignore[no-any-return]
        with self.engine.connect() as connection:
            row = connection.execute(
                select(*_COLUMNS).where(
                    api_clients.c.key_hash == hashed, api_clients.c.revoked_at.is_(None)
                )
            ).one_or_none()
        client = _client(row) if row else None
        self.keys.put(hashed, client, generation)
        return client

    def issue_token(self, client: Client, grant: Grant, now: datetime, seconds: int) -> str:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.engine.begin() as connection:
            connection.execute(delete(access_tokens).where(access_tokens.c.expires_at < now))
            connection.execute(
                insert(access_tokens).values(
                    token_hash=digest(token),
                    client_id=client.id,
                    scopes=str(grant),
                    expires_at=now + timedelta(seconds=seconds),
                )
            )
        return token

    def by_token(self, token: str, now: datetime) -> TokenHolder | None:
        """The holder of an unexpired access token of an active client."""
        hashed = digest(token)
        generation = self.tokens.generation
        known, holder = self.tokens.get(hashed)
        if not known:
            with self.engine.connect() as connection:
                row = connection.execute(
                    select(
                        *_COLUMNS,
                        access_tokens.c.scopes.label("granted"),
                        access_tokens.c.expires_at,
                    )
                    .select_from(
                        access_tokens.join(
                            api_clients, api_clients.c.id == access_tokens.c.client_id
                        )
                    )
                    .where(access_tokens.c.token_hash == hashed, api_clients.c.revoked_at.is_(None))
                ).one_or_none()
            holder = (
                TokenHolder(_client(row), Grant.of(row.granted), row.expires_at) if row else None
            )
            self.tokens.put(hashed, holder, generation)
        if holder is None or holder.expires_at <= now:
            return None
        return holder  # type: ignore[no-any-return]

    def spend_assertion(
        self, client_id: str, jti: str, expires_at: datetime, now: datetime
    ) -> bool:
        """Record an assertion's jti; False when it was seen before (a replay)."""
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    delete(spent_assertions).where(spent_assertions.c.expires_at < now)
                )
                connection.execute(
                    insert(spent_assertions).values(
                        client_id=client_id, jti=jti, expires_at=expires_at
                    )
                )
        except IntegrityError:
            return False
        return True
