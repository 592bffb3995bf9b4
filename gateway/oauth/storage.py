"""Where the built-in authorization server keeps its state: a small keyed store with expiry.

Everything the server remembers — registered clients, authorization codes, refresh tokens and
their families, consents, signing keys — is a JSON object filed under a kind and a key, with an
optional lifetime. Secrets are never keys or values in clear: tokens and codes are filed under
their SHA-256 digest, and what must be read back (a user's service token, a private key) is
encrypted before it reaches the store. Single use is one atomic operation, `first_use`, so two
replicas redeeming the same code or refresh token at once cannot both win.

Two backends: SQLite in a file (the embedded default; every call runs on one dedicated thread,
within `STORAGE_TIMEOUT`) and Redis (shared by replicas; `coredis`, already a dependency of the
rate limiter's Redis storage).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar
from urllib.parse import urlsplit

# A storage call slower than this fails the OAuth request (503-like), never hangs it.
STORAGE_TIMEOUT: Final = 5.0
# SQLite: how long a writer waits for another process's lock before giving up.
SQLITE_BUSY_TIMEOUT: Final = 4.0
# SQLite: expired rows are swept every this many writes (no background task).
SWEEP_EVERY: Final = 256

Record = dict[str, Any]
T = TypeVar("T")


class StorageError(RuntimeError):
    """The store did not answer in time or failed."""


class OAuthStore(Protocol):
    """JSON records filed by kind and key, with optional expiry."""

    async def open(self) -> None:
        """Connect (and create what is missing); raises `StorageError` when the store cannot serve."""
        ...

    async def put(self, kind: str, key: str, value: Record, ttl: float | None) -> None: ...

    async def get(self, kind: str, key: str) -> Record | None: ...

    async def delete(self, kind: str, key: str) -> None: ...

    async def first_use(self, kind: str, key: str, ttl: float) -> bool:
        """Mark (kind, key) used; True only for the first caller, atomically."""
        ...

    async def values(self, kind: str) -> list[Record]: ...

    async def aclose(self) -> None: ...


def open_store(url: str) -> OAuthStore:
    """The store a URL names: `sqlite:///absolute/path.db` or `redis://` / `rediss://`."""
    if url.startswith("sqlite:///"):
        return SqliteStore(Path(url.removeprefix("sqlite://")))
    if url.startswith(("redis://", "rediss://")):
        return RedisStore(url)
    raise ValueError(f"unknown OAuth storage {urlsplit(url).scheme!r}")


class SqliteStore:
    """One SQLite file; all access on one thread of its own (the connection never changes thread)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oauth-sqlite")
        self._db: sqlite3.Connection | None = None
        self._writes = 0

    async def _run(self, call: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(STORAGE_TIMEOUT):
                return await loop.run_in_executor(self._executor, call, *args)
        except (sqlite3.Error, OSError, TimeoutError) as exc:
            raise StorageError(f"sqlite: {type(exc).__name__}: {exc}") from None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            db = sqlite3.connect(self._path, timeout=SQLITE_BUSY_TIMEOUT, isolation_level=None)
            self._path.chmod(0o600)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS records ("
                " kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, expires REAL,"
                " PRIMARY KEY (kind, key))"
            )
            self._db = db
        return self._db

    async def open(self) -> None:
        await self._run(self._connection)

    def _put(self, kind: str, key: str, value: str, expires: float | None) -> None:
        db = self._connection()
        db.execute("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)", (kind, key, value, expires))
        self._wrote(db)

    def _wrote(self, db: sqlite3.Connection) -> None:
        self._writes += 1
        if self._writes % SWEEP_EVERY == 0:
            db.execute("DELETE FROM records WHERE expires IS NOT NULL AND expires <= ?", (time.time(),))

    async def put(self, kind: str, key: str, value: Record, ttl: float | None) -> None:
        expires = time.time() + ttl if ttl is not None else None
        await self._run(self._put, kind, key, json.dumps(value), expires)

    def _get(self, kind: str, key: str) -> str | None:
        row = (
            self._connection()
            .execute(
                "SELECT value FROM records WHERE kind = ? AND key = ? AND (expires IS NULL OR expires > ?)",
                (kind, key, time.time()),
            )
            .fetchone()
        )
        return str(row[0]) if row is not None else None

    async def get(self, kind: str, key: str) -> Record | None:
        text = await self._run(self._get, kind, key)
        return _record(text)

    def _delete(self, kind: str, key: str) -> None:
        self._connection().execute("DELETE FROM records WHERE kind = ? AND key = ?", (kind, key))

    async def delete(self, kind: str, key: str) -> None:
        await self._run(self._delete, kind, key)

    def _first_use(self, kind: str, key: str, expires: float) -> bool:
        db = self._connection()
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "DELETE FROM records WHERE kind = ? AND key = ? AND expires IS NOT NULL AND expires <= ?",
                ("used:" + kind, key, now),
            )
            cursor = db.execute("INSERT OR IGNORE INTO records VALUES (?, ?, '{}', ?)", ("used:" + kind, key, expires))
            first = cursor.rowcount == 1
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._wrote(db)
        return first

    async def first_use(self, kind: str, key: str, ttl: float) -> bool:
        first: bool = await self._run(self._first_use, kind, key, time.time() + ttl)
        return first

    def _values(self, kind: str) -> list[str]:
        rows = self._connection().execute(
            "SELECT value FROM records WHERE kind = ? AND (expires IS NULL OR expires > ?)", (kind, time.time())
        )
        return [str(row[0]) for row in rows]

    async def values(self, kind: str) -> list[Record]:
        texts: list[str] = await self._run(self._values, kind)
        return [record for text in texts if (record := _record(text)) is not None]

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def aclose(self) -> None:
        try:
            await self._run(self._close)
        finally:
            self._executor.shutdown(wait=False)


class RedisStore:
    """Records as Redis strings under `mcp-gateway:oauth:<kind>:<key>`, expiring with Redis TTLs."""

    PREFIX: Final = "mcp-gateway:oauth:"

    def __init__(self, url: str) -> None:
        import coredis  # noqa: PLC0415 - only a Redis-backed gateway needs the client

        self._redis: coredis.Redis[str] = coredis.Redis.from_url(url, decode_responses=True)

    def _name(self, kind: str, key: str) -> str:
        return f"{self.PREFIX}{kind}:{key}"

    async def _run(self, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(STORAGE_TIMEOUT):
                return await call
        except Exception as exc:  # coredis raises its own tree; any failure is a storage failure
            raise StorageError(f"redis: {type(exc).__name__}: {exc}") from None

    async def open(self) -> None:
        await self._run(self._redis.ping())

    async def put(self, kind: str, key: str, value: Record, ttl: float | None) -> None:
        px = max(int(ttl * 1000), 1) if ttl is not None else None
        await self._run(self._redis.set(self._name(kind, key), json.dumps(value), px=px))

    async def get(self, kind: str, key: str) -> Record | None:
        text: str | None = await self._run(self._redis.get(self._name(kind, key)))
        return _record(text)

    async def delete(self, kind: str, key: str) -> None:
        await self._run(self._redis.delete([self._name(kind, key)]))

    async def first_use(self, kind: str, key: str, ttl: float) -> bool:
        from coredis.tokens import PureToken  # noqa: PLC0415 - see __init__

        name = self._name("used:" + kind, key)
        done: bool = await self._run(self._redis.set(name, "1", condition=PureToken.NX, px=max(int(ttl * 1000), 1)))
        return bool(done)

    async def values(self, kind: str) -> list[Record]:
        async def collect() -> list[Record]:
            names: list[str | bytes] = [name async for name in self._redis.scan_iter(match=self._name(kind, "*"))]
            if not names:
                return []
            texts = await self._redis.mget(names)
            return [record for text in texts if (record := _record(text)) is not None]

        records: list[Record] = await self._run(collect())
        return records

    async def aclose(self) -> None:
        pass  # the connection pool closes with the client object


def _record(text: str | None) -> Record | None:
    if text is None:
        return None
    value = json.loads(text)
    return value if isinstance(value, dict) else None
