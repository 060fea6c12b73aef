"""The archive's index database: SQLite inside the archive by default, PostgreSQL (psycopg 3) for a deployment.

One schema, written once with `?` placeholders (turned into `%s` for psycopg). Every write is one transaction;
a connection is used by one thread at a time (a lock), which is what the CLI and the single-process server need.
"""
from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

from nodecode.errors import NodecodeError

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id {serial} PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    orig_bytes BIGINT NOT NULL,
    ndc_bytes BIGINT NOT NULL,
    codec TEXT NOT NULL,
    label TEXT,
    added DOUBLE PRECISION NOT NULL,
    embedding {blob} NOT NULL
);
CREATE TABLE IF NOT EXISTS labels (
    image_id BIGINT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    rank INTEGER NOT NULL,
    label TEXT NOT NULL,
    name TEXT NOT NULL,
    score REAL NOT NULL,
    PRIMARY KEY (image_id, rank)
);
CREATE INDEX IF NOT EXISTS labels_by_name ON labels (lower(name), score);
CREATE INDEX IF NOT EXISTS labels_by_label ON labels (label, score);
CREATE TABLE IF NOT EXISTS areas (
    image_id BIGINT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    fraction REAL NOT NULL,
    PRIMARY KEY (image_id, name)
);
CREATE INDEX IF NOT EXISTS areas_by_name ON areas (lower(name), fraction);
"""


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


class Database:
    """A connection to the index, SQLite (a file path) or PostgreSQL (a postgresql:// URL)."""

    def __init__(self, url: str):
        self.url, self.pg = url, is_postgres(url)
        self._lock = threading.RLock()
        try:
            if self.pg:
                import psycopg
                self.conn = psycopg.connect(url, autocommit=True, connect_timeout=10)   # reads: one round trip
            else:
                self.conn = sqlite3.connect(url, timeout=30, check_same_thread=False, isolation_level=None)
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
                self.conn.execute("PRAGMA foreign_keys=ON")
        except Exception as e:  # psycopg.OperationalError, sqlite3.Error: one line for the user
            raise NodecodeError(f"cannot open database {redact(url)}: {str(e).strip().splitlines()[0]}") from None

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.pg else sql

    def create(self) -> None:
        serial, blob = ("BIGSERIAL", "BYTEA") if self.pg else ("INTEGER", "BLOB")
        with self.transaction() as cur:
            for stmt in SCHEMA.format(serial=serial, blob=blob).split(";"):
                if stmt.strip():
                    cur.execute(stmt)

    @contextmanager
    def transaction(self):
        """A cursor inside one transaction: committed on success, rolled back on any exception."""
        with self._lock:
            if self.pg:
                with self.conn.transaction():
                    with self.conn.cursor() as cur:
                        yield _Cursor(cur, self)
            else:
                cur = self.conn.cursor()
                cur.execute("BEGIN IMMEDIATE")
                try:
                    yield _Cursor(cur, self)
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                cur.execute("COMMIT")

    def query(self, sql: str, params=()) -> list[tuple]:
        with self._lock:
            if self.pg:
                with self.conn.cursor() as cur:
                    cur.execute(self._sql(sql), params)
                    return cur.fetchall()
            return self.conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self.conn.close()


class _Cursor:
    def __init__(self, cur, db: Database):
        self.cur, self.db = cur, db

    def execute(self, sql: str, params=()):
        self.cur.execute(self.db._sql(sql), params)
        return self

    def executemany(self, sql: str, rows):
        self.cur.executemany(self.db._sql(sql), rows)

    def fetchone(self):
        return self.cur.fetchone()

    def fetchall(self):
        return self.cur.fetchall()

    def insert_id(self, sql: str, params) -> int:
        """INSERT ... and return the new row's id."""
        if self.db.pg:
            self.cur.execute(self.db._sql(sql + " RETURNING id"), params)
            return int(self.cur.fetchone()[0])
        self.cur.execute(sql, params)
        return int(self.cur.lastrowid)


def redact(url: str) -> str:
    """The URL without a password (for messages)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}@{host}"
    return url


def sqlite_path(archive: Path) -> str:
    return str(archive / "index.sqlite")
