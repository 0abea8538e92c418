"""The embedded store: BuildConfigs, Builds and webhook deliveries in one SQLite file.

This is the :class:`triggerd.store.base.Store` used when triggerd runs on one machine
(``<data_dir>/triggerd.db``); the engine is its only caller and the web layer answers 2xx on
the strength of its returns, so every write is committed with ``synchronous=FULL`` (fsync'd)
before its coroutine returns. All writes go through one writer thread that commits them in
groups (one fsync for everything queued meanwhile, each request isolated by a SAVEPOINT), and
reads run on read-only connections in a small thread pool, which WAL lets proceed during
writes. Consecutive ``instantiate`` calls in a group, the webhook hot path, are written
together: a handful of statements for the whole run instead of seven per call, because every
statement releases and retakes the GIL the event loop needs. It must never run SQLite work
on the event loop, never let one caller's failure undo another caller's write in the same
group, and never leave a failed group half-written.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import queue
import re
import sqlite3
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Generic, TypeVar, cast

from triggerd import jsoncodec
from triggerd.errors import (
    AlreadyExists,
    BadRequest,
    Conflict,
    NotFound,
    PermanentError,
    QueueFull,
    TemporaryError,
)
from triggerd.model import buildconfigs, builds
from triggerd.model import meta as metas
from triggerd.model.buildconfigs import BuildConfig
from triggerd.model.builds import Build, Phase
from triggerd.store.base import BuildQuery, Delivery, Instantiated, NewBuild, Page, QueueSummary

T = TypeVar("T")

#: A group is every write queued while the previous commit ran; the cap bounds how long the
#: first caller of a very large group waits for its answer.
MAX_GROUP: Final = 512
#: What a caller refused for a full queue is told to wait before trying again.
QUEUE_FULL_RETRY_SECONDS: Final = 30.0
CONFIG_LABELS: Final = (builds.CONFIG_LABEL, builds.CONFIG_LABEL_DEPRECATED)
#: Rows per executemany/IN list; far below SQLite's variable limit.
_CHUNK: Final = 500

# SQLite primary result codes (extended codes carry them in the low byte) that say "try
# again later" rather than "this request is wrong".
_TEMPORARY_CODES: Final = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)
_TEMPORARY_MESSAGES: Final = (
    "database is locked",
    "database table is locked",
    "disk i/o error",
    "database or disk is full",
    "unable to open database file",
    "out of memory",
)


class SchemaTooNew(PermanentError):
    """The file was written by a newer triggerd; opening it could corrupt what it added."""


# Schema -------------------------------------------------------------------------------------
#
# Each migration moves the file from version i to i + 1 (PRAGMA user_version); they run in one
# transaction on open. Append only: never edit a migration that has shipped. The statements
# are executed one by one because sqlite3's executescript() commits first, which would break
# the all-or-nothing upgrade.


def _migrate_1_core(conn: sqlite3.Connection) -> None:
    for statement in (
        # The global resourceVersion counter, as etcd's revision: bumped by every write.
        "CREATE TABLE counter (id INTEGER PRIMARY KEY CHECK (id = 0), value INTEGER NOT NULL)",
        "INSERT INTO counter (id, value) VALUES (0, 0)",
        """CREATE TABLE buildconfigs (
            namespace TEXT NOT NULL,
            name TEXT NOT NULL,
            uid TEXT NOT NULL UNIQUE,
            resource_version INTEGER NOT NULL,
            last_version INTEGER NOT NULL,
            doc TEXT NOT NULL,
            PRIMARY KEY (namespace, name)
        )""",
        # The foreign key makes "delete the config" delete its builds in the same statement,
        # as `oc delete bc` cascades; builds_by_config doubles as the index it needs.
        """CREATE TABLE builds (
            namespace TEXT NOT NULL,
            name TEXT NOT NULL,
            config_name TEXT NOT NULL,
            number INTEGER NOT NULL,
            phase TEXT NOT NULL,
            uid TEXT NOT NULL,
            resource_version INTEGER NOT NULL,
            created REAL NOT NULL,
            labels TEXT NOT NULL,
            doc TEXT NOT NULL,
            PRIMARY KEY (namespace, name),
            FOREIGN KEY (namespace, config_name)
                REFERENCES buildconfigs (namespace, name) ON DELETE CASCADE
        )""",
        # The listing order; phase rides along so a phase filter over this order is checked
        # in the index without reading the (large) rows it rejects.
        "CREATE INDEX builds_by_config ON builds (namespace, config_name, number, name, phase)",
        # One phase (the scheduler's "New", "Running"), already in listing order.
        "CREATE INDEX builds_by_phase ON builds (phase, namespace, config_name, number, name)",
    ):
        conn.execute(statement)


def _migrate_2_deliveries(conn: sqlite3.Connection) -> None:
    for statement in (
        # builds: JSON [[namespace, name], ...] of what the delivery created.
        """CREATE TABLE deliveries (
            key TEXT PRIMARY KEY,
            received REAL NOT NULL,
            builds TEXT NOT NULL
        )""",
        "CREATE INDEX deliveries_by_received ON deliveries (received)",
    ):
        conn.execute(statement)


def _migrate_3_queue_index(conn: sqlite3.Connection) -> None:
    # The scheduler's queue summary (configs with New builds, oldest first) from the index
    # alone, without reading the large rows of a long queue.
    conn.execute("CREATE INDEX builds_queue ON builds (phase, namespace, config_name, created)")


#: The upload a binary build names, as SQL over the stored document, and the cheap test that
#: limits the index below to builds that have one.
_BINARY_INPUT = f"json_extract(doc, '$.metadata.annotations.\"{builds.BINARY_INPUT_ANNOTATION}\"')"
_HAS_BINARY_INPUT = f"instr(doc, '\"{builds.BINARY_INPUT_ANNOTATION}\"') > 0"


def _migrate_4_binary_input_index(conn: sqlite3.Connection) -> None:
    # Whether an upload is still used, answered from an index of the few binary builds;
    # other builds pay one substring test on insert (the partial index's condition).
    conn.execute(
        f"CREATE INDEX builds_by_binary_input ON builds ({_BINARY_INPUT}) WHERE {_HAS_BINARY_INPUT}"
    )


#: Index i upgrades version i to i + 1; the code's schema version is the length.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _migrate_1_core,
    _migrate_2_deliveries,
    _migrate_3_queue_index,
    _migrate_4_binary_input_index,
]


def migrate(conn: sqlite3.Connection, path: Path | str = "") -> int:
    """Bring ``conn``'s file to the latest schema in one transaction; returns the old version.

    Raises SchemaTooNew, touching nothing, for a file newer than this code.
    """
    known = len(MIGRATIONS)
    found = refuse_newer(conn, path)
    if found == known:
        return found
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have migrated between the check and the lock.
        found = _user_version(conn)
        for step in MIGRATIONS[found:]:
            step(conn)
        # user_version lives in the file header and is part of the transaction.
        conn.execute(f"PRAGMA user_version = {known:d}")
        conn.execute("COMMIT")
    except BaseException:
        # SQLite may already have rolled back (I/O error); the original error matters.
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return found


def refuse_newer(conn: sqlite3.Connection, path: Path | str = "") -> int:
    """The file's schema version; SchemaTooNew if this code does not know it."""
    known = len(MIGRATIONS)
    found = _user_version(conn)
    if found > known:
        raise SchemaTooNew(
            f"{path or 'the database'} has schema version {found}, newer than version {known} "
            "that this triggerd understands; run a newer triggerd or restore a backup"
        )
    return found


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


# The store ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class WriterStats:
    """What the writer thread has done, for metrics and the benchmark."""

    groups: int
    writes: int
    failed_groups: int
    largest_group: int
    queued: int


@dataclass(frozen=True, slots=True, kw_only=True)
class _InstantiateJob:
    """One ``instantiate`` call, for the batched path of the writer."""

    requests: Sequence[NewBuild]
    delivery: Delivery | None
    queue_limit: int


@dataclass(slots=True)
class _Write:
    run: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    #: set for instantiate calls: runs of them are written as one batch (``run`` is the
    #: same write, one call at a time, used when the batch hits a constraint)
    job: _InstantiateJob | None = None


_STOP: Final = object()


class SqliteStore:
    """A :class:`triggerd.store.base.Store` over one SQLite file.

    ``readers`` is the number of read-only connections (and threads); ``busy_timeout`` is how
    long a connection waits for another process's lock before the call fails with
    TemporaryError.
    """

    def __init__(
        self,
        path: Path,
        *,
        readers: int = 4,
        busy_timeout: float = 5.0,
        config_cache: int = 20_000,
        build_cache: int = 512,
    ) -> None:
        self.path = Path(path)
        self._readers_wanted = max(1, readers)
        self._busy_ms = max(0, int(busy_timeout * 1000))
        self._queue: queue.SimpleQueue[_Write | object] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._read_pool: ThreadPoolExecutor | None = None
        self._read_local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._read_conns_lock = threading.Lock()
        self._closed = False
        # Parsed objects by (namespace, name), reused while the stored resourceVersion
        # matches: parsing a config on every instantiate would dominate the writer's time,
        # and the scheduler lists the same unfinished builds over and over. Sound because
        # resourceVersions are never reused within a process (see _bump), so equal versions
        # mean the same stored document. Bounded, so 100,000 builds do not all stay parsed.
        self._configs: _Lru[BuildConfig] = _Lru(config_cache)
        self._builds: _Lru[Build] = _Lru(build_cache)
        # Writer-thread state.
        self._rv = 0
        self._rv_stored = 0
        self._groups = 0
        self._writes = 0
        self._failed_groups = 0
        self._largest_group = 0

    # Lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            raise RuntimeError("SqliteStore.open() called twice")
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._queue = queue.SimpleQueue()
        self._writer = threading.Thread(
            target=self._write_forever,
            args=(loop, ready),
            name="triggerd-store-writer",
            # A forgotten close() must not hang interpreter exit; SQLite survives a kill.
            daemon=True,
        )
        self._writer.start()
        try:
            await ready
        except BaseException:
            # Failed to open (or open() was cancelled after the writer started): stop it.
            self._queue.put(_STOP)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
            raise
        self._read_pool = ThreadPoolExecutor(
            max_workers=self._readers_wanted, thread_name_prefix="triggerd-store-read"
        )

    async def close(self) -> None:
        if self._closed or self._writer is None:
            self._closed = True
            return
        self._closed = True
        # Readers first, so the writer's connection is the last one and its close
        # checkpoints the WAL back into the main file.
        await asyncio.to_thread(self._close_readers)
        # Everything queued before close() is still written.
        self._queue.put(_STOP)
        await asyncio.to_thread(self._writer.join)

    def _close_readers(self) -> None:
        if self._read_pool is not None:
            self._read_pool.shutdown(wait=True)
        with self._read_conns_lock:
            for conn in self._read_conns:
                conn.close()
            self._read_conns.clear()

    def stats(self) -> WriterStats:
        return WriterStats(
            groups=self._groups,
            writes=self._writes,
            failed_groups=self._failed_groups,
            largest_group=self._largest_group,
            queued=self._queue.qsize(),
        )

    # BuildConfigs -------------------------------------------------------------------------

    async def list_buildconfigs(self, namespace: str | None = None) -> list[BuildConfig]:
        def read(conn: sqlite3.Connection) -> list[BuildConfig]:
            if namespace is None:
                rows = conn.execute(_SELECT_CONFIGS + " ORDER BY namespace, name")
            else:
                rows = conn.execute(
                    _SELECT_CONFIGS + " WHERE namespace = ? ORDER BY name", (namespace,)
                )
            return [self._config_from_row(row) for row in rows]

        return await self._read(read)

    async def get_buildconfig(self, namespace: str, name: str) -> BuildConfig:
        def read(conn: sqlite3.Connection) -> BuildConfig:
            return self._fetch_config(conn, namespace, name)

        return await self._read(read)

    async def create_buildconfig(self, config: BuildConfig) -> BuildConfig:
        def write(conn: sqlite3.Connection) -> BuildConfig:
            stored = config.with_server_fields(
                uid=str(uuid.uuid4()),
                resource_version=str(self._bump()),
                creation_timestamp=_now(),
            )
            doc = _dumps(stored.to_dict())
            try:
                conn.execute(
                    "INSERT INTO buildconfigs (namespace, name, uid, resource_version,"
                    " last_version, doc) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        stored.namespace,
                        stored.name,
                        stored.meta.uid,
                        int(stored.meta.resource_version),
                        stored.last_version,
                        doc,
                    ),
                )
            except sqlite3.IntegrityError as e:
                raise AlreadyExists(buildconfigs.KIND, config.name) from e
            return self._remember(buildconfigs.parse(json.loads(doc)))

        return await self._write(write)

    async def replace_buildconfig(
        self, config: BuildConfig, *, expected_resource_version: str | None = None
    ) -> BuildConfig:
        def write(conn: sqlite3.Connection) -> BuildConfig:
            current = self._fetch_config(conn, config.namespace, config.name)
            _check_version(buildconfigs.KIND, config.name, current.meta, expected_resource_version)
            stored = config.with_server_fields(
                uid=current.meta.uid,
                resource_version=str(self._bump()),
                creation_timestamp=current.meta.creation_timestamp,
                last_version=current.last_version,
            )
            doc = _dumps(stored.to_dict())
            conn.execute(
                "UPDATE buildconfigs SET resource_version = ?, doc = ?"
                " WHERE namespace = ? AND name = ?",
                (int(stored.meta.resource_version), doc, stored.namespace, stored.name),
            )
            return self._remember(buildconfigs.parse(json.loads(doc)))

        return await self._write(write)

    async def delete_buildconfig(self, namespace: str, name: str) -> None:
        def write(conn: sqlite3.Connection) -> None:
            # ON DELETE CASCADE removes the config's builds in the same statement.
            gone = conn.execute(
                "DELETE FROM buildconfigs WHERE namespace = ? AND name = ?", (namespace, name)
            ).rowcount
            if not gone:
                raise NotFound(buildconfigs.KIND, name)
            self._bump()
            self._configs.pop((namespace, name))

        await self._write(write)

    # Builds -------------------------------------------------------------------------------

    async def instantiate(
        self,
        requests: Sequence[NewBuild],
        *,
        delivery: Delivery | None = None,
        queue_limit: int = 0,
    ) -> Instantiated:
        def write(conn: sqlite3.Connection) -> Instantiated:
            # The duplicate check runs on the single writer, inside the transaction that
            # would record the key, so two deliveries with one key can never both create.
            if delivery is not None:
                row = conn.execute(
                    "SELECT builds FROM deliveries WHERE key = ?", (delivery.key,)
                ).fetchone()
                if row is not None:
                    refs = json.loads(row[0])
                    return Instantiated(builds=self._fetch_builds(conn, refs), duplicate=True)
            if queue_limit:
                queued = conn.execute(
                    "SELECT COUNT(*) FROM builds WHERE phase = ?", (Phase.NEW.value,)
                ).fetchone()[0]
                _check_queue(queued, len(requests), queue_limit)
            made = tuple(self._insert_build(conn, request) for request in requests)
            if delivery is not None:
                conn.execute(
                    _INSERT_DELIVERY,
                    (
                        delivery.key,
                        _epoch(delivery.received),
                        _dumps([[b.namespace, b.name] for b in made]),
                    ),
                )
            return Instantiated(builds=made)

        job = _InstantiateJob(requests=requests, delivery=delivery, queue_limit=queue_limit)
        return await self._write(write, job=job)

    async def delivered(self, key: str) -> tuple[Build, ...] | None:
        def read(conn: sqlite3.Connection) -> tuple[Build, ...] | None:
            row = conn.execute("SELECT builds FROM deliveries WHERE key = ?", (key,)).fetchone()
            return None if row is None else self._fetch_builds(conn, json.loads(row[0]))

        return await self._read(read)

    async def queue_summary(self) -> QueueSummary:
        def read(conn: sqlite3.Connection) -> QueueSummary:
            rows = conn.execute(
                "SELECT namespace, config_name, COUNT(*), MIN(created) FROM builds"
                " WHERE phase = ? GROUP BY namespace, config_name ORDER BY MIN(created)",
                (Phase.NEW.value,),
            ).fetchall()
            return QueueSummary(
                total=sum(row[2] for row in rows),
                configs=tuple((row[0], row[1]) for row in rows),
            )

        return await self._read(read)

    async def get_build(self, namespace: str, name: str) -> Build:
        def read(conn: sqlite3.Connection) -> Build:
            row = conn.execute(
                "SELECT resource_version, doc FROM builds WHERE namespace = ? AND name = ?",
                (namespace, name),
            ).fetchone()
            if row is None:
                raise NotFound(builds.KIND, name)
            return self._build_from_row(namespace, name, *row)

        return await self._read(read)

    async def list_builds(self, query: BuildQuery) -> Page:
        return await self._read(lambda conn: self._list_builds(conn, query), snapshot=True)

    async def update_build(
        self, build: Build, *, expected_resource_version: str | None = None
    ) -> Build:
        def write(conn: sqlite3.Connection) -> Build:
            row = conn.execute(
                "SELECT uid, resource_version, created FROM builds"
                " WHERE namespace = ? AND name = ?",
                (build.namespace, build.name),
            ).fetchone()
            if row is None:
                raise NotFound(builds.KIND, build.name)
            uid, rv, created = row
            if expected_resource_version is not None and expected_resource_version != str(rv):
                raise _conflict(builds.KIND, build.name)
            # uid and creationTimestamp are the server's: a caller cannot rewrite them.
            meta = replace(
                build.meta,
                uid=uid,
                resource_version=str(self._bump()),
                creation_timestamp=datetime.fromtimestamp(created, UTC),
            )
            stored = replace(build, meta=meta)
            doc = _dumps(stored.to_dict(shared=True))
            conn.execute(
                "UPDATE builds SET phase = ?, resource_version = ?, labels = ?, doc = ?"
                " WHERE namespace = ? AND name = ?",
                (
                    stored.phase.value,
                    int(meta.resource_version),
                    _dumps(dict(meta.labels)),
                    doc,
                    stored.namespace,
                    stored.name,
                ),
            )
            return self._builds.put(
                (stored.namespace, stored.name), builds.from_dict(json.loads(doc))
            )

        return await self._write(write)

    async def delete_builds(self, namespace: str, names: Sequence[str]) -> None:
        names = list(dict.fromkeys(names))

        def write(conn: sqlite3.Connection) -> None:
            gone = 0
            for i in range(0, len(names), _CHUNK):
                chunk = names[i : i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                gone += conn.execute(
                    f"DELETE FROM builds WHERE namespace = ? AND name IN ({marks})",  # noqa: S608
                    (namespace, *chunk),
                ).rowcount
            if gone:
                self._bump()

        if names:
            await self._write(write)

    async def prune_deliveries(self, older_than: datetime) -> int:
        def write(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM deliveries WHERE received < ?", (_epoch(older_than),)
            ).rowcount

        return await self._write(write)

    async def binary_inputs_in_use(self, digests: Collection[str]) -> set[str]:
        wanted = sorted(set(digests))

        def read(conn: sqlite3.Connection) -> set[str]:
            used: set[str] = set()
            # Bounded batches: SQLite limits the number of bound parameters.
            for start in range(0, len(wanted), 500):
                batch = wanted[start : start + 500]
                marks = ", ".join("?" * len(batch))
                # Constants and placeholders only; the digests are bound parameters.
                sql = (
                    f"SELECT DISTINCT {_BINARY_INPUT} FROM builds"  # noqa: S608
                    f" WHERE {_HAS_BINARY_INPUT} AND {_BINARY_INPUT} IN ({marks})"
                )
                rows = conn.execute(sql, batch)
                used.update(str(row[0]) for row in rows)
            return used

        return await self._read(read) if wanted else set()

    # Row helpers (run on the writer or a reader thread) -----------------------------------

    def _fetch_config(self, conn: sqlite3.Connection, namespace: str, name: str) -> BuildConfig:
        row = conn.execute(
            _SELECT_CONFIGS + " WHERE namespace = ? AND name = ?",
            (namespace, name),
        ).fetchone()
        if row is None:
            raise NotFound(buildconfigs.KIND, name)
        return self._config_from_row(row)

    def _config_from_row(self, row: tuple[Any, ...]) -> BuildConfig:
        namespace, name, uid, rv, last_version, doc = row
        cached = self._configs.get((namespace, name))
        if cached is not None and cached.meta.resource_version == str(rv):
            return cached
        # The columns are authoritative; the document is written with the same values.
        config = buildconfigs.parse(json.loads(doc)).with_server_fields(
            uid=uid, resource_version=str(rv), last_version=last_version
        )
        return self._remember(config)

    def _remember(self, config: BuildConfig) -> BuildConfig:
        return self._configs.put((config.namespace, config.name), config)

    def _build_from_row(self, namespace: str, name: str, rv: int, doc: str) -> Build:
        cached = self._builds.get((namespace, name))
        if cached is not None and cached.meta.resource_version == str(rv):
            return cached
        return self._builds.put((namespace, name), builds.from_dict(json.loads(doc)))

    def _fetch_builds(self, conn: sqlite3.Connection, refs: Iterable[Any]) -> tuple[Build, ...]:
        found: list[Build] = []
        for namespace, name in refs:
            row = conn.execute(
                "SELECT resource_version, doc FROM builds WHERE namespace = ? AND name = ?",
                (namespace, name),
            ).fetchone()
            # Builds pruned since the delivery are simply no longer there.
            if row is not None:
                found.append(self._build_from_row(namespace, name, *row))
        return tuple(found)

    def _insert_build(self, conn: sqlite3.Connection, request: NewBuild) -> Build:
        """Bump the config's lastVersion and insert the build it makes (writer thread)."""
        config = self._fetch_config(conn, request.namespace, request.config_name)
        config, build, row = self._make_build(config, request)
        try:
            conn.execute(_INSERT_BUILD, row)
        except sqlite3.IntegrityError as e:
            raise AlreadyExists(builds.KIND, build.name) from e
        conn.execute(_UPDATE_LAST_VERSION, _last_version_row(config))
        self._remember(config)
        return self._builds.put((build.namespace, build.name), build)

    def _make_build(
        self, config: BuildConfig, request: NewBuild
    ) -> tuple[BuildConfig, Build, tuple[Any, ...]]:
        """Number the next build of ``config`` and make it: the bumped config, the build and
        its row for ``_INSERT_BUILD``. No SQL: the caller writes both (writer thread)."""
        number = config.last_version + 1
        rv = str(self._bump())
        config = _bumped(config, rv, number)
        build = request.make(config, number)
        if build.namespace != request.namespace:
            raise ValueError(
                f"build factory made {build.namespace}/{build.name} for a BuildConfig in "
                f"namespace {request.namespace}"
            )
        # Whole seconds, as the wire form: the returned build equals a reloaded one.
        created = (build.meta.creation_timestamp or _now()).replace(microsecond=0)
        build = replace(
            build,
            meta=replace(
                build.meta,
                uid=build.meta.uid or str(uuid.uuid4()),
                resource_version=rv,
                creation_timestamp=created,
            ),
        )
        row = (
            build.namespace,
            build.name,
            request.config_name,
            number,
            build.phase.value,
            build.meta.uid,
            int(rv),
            _epoch(created),
            _dumps(dict(build.meta.labels)),
            _dumps(build.to_dict(shared=True)),
        )
        return config, build, row

    def _instantiate_batch(
        self, conn: sqlite3.Connection, writes: list[_Write]
    ) -> list[tuple[_Write, bool, Any]]:
        """Several instantiate calls in a few statements; each call still succeeds or fails
        alone, and a constraint the batch hits sends every call down the one-at-a-time path.
        """
        conn.execute("SAVEPOINT batch")
        try:
            outcomes, made = self._write_batch(conn, writes)
        except sqlite3.IntegrityError:
            conn.execute("ROLLBACK TO batch")
            conn.execute("RELEASE batch")
            # Nothing of the batch was remembered; each call now meets the constraint (or
            # not) on its own, in its own savepoint, exactly as without batching.
            return [self._run_isolated(conn, write) for write in writes]
        conn.execute("RELEASE batch")
        for config in made[0]:
            self._remember(config)
        for build in made[1]:
            self._builds.put((build.namespace, build.name), build)
        return outcomes

    def _write_batch(
        self, conn: sqlite3.Connection, writes: list[_Write]
    ) -> tuple[list[tuple[_Write, bool, Any]], tuple[list[BuildConfig], list[Build]]]:
        jobs = [cast(_InstantiateJob, w.job) for w in writes]
        keys = [j.delivery.key for j in jobs if j.delivery is not None]
        seen: dict[str, list[list[str]]] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            for key, refs in conn.execute(
                f"SELECT key, builds FROM deliveries WHERE key IN ({marks})",  # noqa: S608
                chunk,
            ):
                seen[key] = json.loads(refs)
        queued = 0
        if any(j.queue_limit for j in jobs):
            queued = conn.execute(
                "SELECT COUNT(*) FROM builds WHERE phase = ?", (Phase.NEW.value,)
            ).fetchone()[0]
        configs: dict[tuple[str, str], BuildConfig] = {}
        recorded: dict[str, tuple[Build, ...]] = {}
        build_rows: list[tuple[Any, ...]] = []
        delivery_rows: list[tuple[Any, ...]] = []
        made: list[Build] = []
        outcomes: list[tuple[_Write, bool, Any]] = []
        for write, job in zip(writes, jobs, strict=True):
            key = job.delivery.key if job.delivery is not None else None
            if key is not None and key in recorded:
                # The same delivery twice in one group: the later one is the redelivery.
                outcomes.append((write, True, Instantiated(builds=recorded[key], duplicate=True)))
                continue
            if key is not None and key in seen:
                old = self._fetch_builds(conn, seen[key])
                outcomes.append((write, True, Instantiated(builds=old, duplicate=True)))
                continue
            staged: dict[tuple[str, str], BuildConfig] = {}
            rows: list[tuple[Any, ...]] = []
            builds_made: list[Build] = []
            try:
                if job.queue_limit:
                    _check_queue(queued, len(job.requests), job.queue_limit)
                for request in job.requests:
                    ref = (request.namespace, request.config_name)
                    config = staged.get(ref) or configs.get(ref)
                    if config is None:
                        config = self._fetch_config(conn, *ref)
                    staged[ref], build, row = self._make_build(config, request)
                    rows.append(row)
                    builds_made.append(build)
            except sqlite3.Error:
                raise
            except BaseException as e:  # as _run_isolated: a factory's failure is its own
                outcomes.append((write, False, e))
                continue
            configs.update(staged)
            build_rows.extend(rows)
            made.extend(builds_made)
            queued += len(builds_made)
            result = tuple(builds_made)
            if job.delivery is not None:
                recorded[job.delivery.key] = result
                delivery_rows.append(
                    (
                        job.delivery.key,
                        _epoch(job.delivery.received),
                        _dumps([[b.namespace, b.name] for b in result]),
                    )
                )
            outcomes.append((write, True, Instantiated(builds=result)))
        if build_rows:
            conn.executemany(_INSERT_BUILD, build_rows)
            conn.executemany(_UPDATE_LAST_VERSION, [_last_version_row(c) for c in configs.values()])
        if delivery_rows:
            conn.executemany(_INSERT_DELIVERY, delivery_rows)
        return outcomes, (list(configs.values()), made)

    def _list_builds(self, conn: sqlite3.Connection, query: BuildQuery) -> Page:
        resource_version = str(conn.execute("SELECT value FROM counter WHERE id = 0").fetchone()[0])
        where: list[str] = []
        params: list[Any] = []
        if query.namespace is not None:
            where.append("namespace = ?")
            params.append(query.namespace)
        config_name = query.config_name
        if config_name is None:
            # The config label always equals the config_name column (instantiate sets both),
            # so `oc get builds -l openshift.io/build-config.name=x` uses the index instead
            # of reading every row's labels.
            config_name = next((query.labels[k] for k in CONFIG_LABELS if k in query.labels), None)
        if config_name is not None:
            where.append("config_name = ?")
            params.append(config_name)
        limit = query.limit if query.limit is not None and query.limit > 0 else None
        phases = sorted(p.value for p in query.phases)
        if len(phases) == 1:
            # builds_by_phase yields these rows already in listing order.
            where.append("phase = ?")
        elif phases and limit is not None:
            # Several phases and a page: walk builds_by_config in listing order, checking the
            # phase in the index, and stop at the page's end. (The unary + keeps the planner
            # off builds_by_phase, which would read and sort every later match per page.)
            where.append(f"+phase IN ({','.join('?' * len(phases))})")
        elif phases:
            # Everything is wanted anyway: seek each phase, sort only the matches.
            where.append(f"phase IN ({','.join('?' * len(phases))})")
        params.extend(phases)
        exact = _label_conditions(query, where, params)
        if query.continue_token is not None:
            where.append("(namespace, config_name, number, name) > (?, ?, ?, ?)")
            params.extend(_decode_continue(query.continue_token))
        sql = (
            "SELECT namespace, config_name, number, name, resource_version, labels, doc FROM builds"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY namespace, config_name, number, name"
        if limit is not None and exact:
            # One row more than the page tells whether another page follows.
            sql += " LIMIT ?"
            params.append(limit + 1)
        found: list[Build] = []
        last_key: tuple[str, str, int, str] | None = None
        more = False
        # The cursor streams rows, so memory stays O(page) even when the label filter has to be
        # finished here and many rows are skipped.
        for namespace, config_name, number, name, rv, labels, doc in conn.execute(sql, params):
            if not exact and not _labels_match(query, json.loads(labels)):
                continue
            if limit is not None and len(found) == limit:
                more = True
                break
            found.append(self._build_from_row(namespace, name, rv, doc))
            last_key = (namespace, config_name, number, name)
        token = _encode_continue(last_key) if more and last_key is not None else None
        return Page(builds=tuple(found), continue_token=token, resource_version=resource_version)

    def _bump(self) -> int:
        """The next resourceVersion (writer thread only).

        Kept in memory and written to the counter row once per group. A rolled-back write
        leaves a gap instead of handing its version out again, so within one process a
        resourceVersion names exactly one stored state (which the config cache relies on).
        """
        self._rv += 1
        return self._rv

    # Reads --------------------------------------------------------------------------------

    async def _read(self, fn: Callable[[sqlite3.Connection], T], *, snapshot: bool = False) -> T:
        pool = self._read_pool
        if pool is None or self._closed:
            raise RuntimeError("SqliteStore is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, self._run_read, fn, snapshot)

    def _run_read(self, fn: Callable[[sqlite3.Connection], T], snapshot: bool) -> T:
        conn = self._reader()
        try:
            if not snapshot:
                return fn(conn)
            # One read transaction: the page and its resourceVersion are the same snapshot.
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise _translate(e) from e

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._read_local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path.resolve().as_uri() + "?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,  # closed by close(), from another thread
            )
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms:d}")
            conn.execute("PRAGMA query_only = ON")
            self._read_local.conn = conn
            with self._read_conns_lock:
                self._read_conns.append(conn)
        return conn

    # Writes -------------------------------------------------------------------------------

    async def _write(
        self, fn: Callable[[sqlite3.Connection], T], *, job: _InstantiateJob | None = None
    ) -> T:
        if self._writer is None or self._closed:
            raise RuntimeError("SqliteStore is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Write(fn, future, loop, job))
        return cast(T, await future)

    def _connect_writer(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        try:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms:d}")
            # Before anything else: even switching to WAL rewrites a newer file's header.
            refuse_newer(conn, self.path)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise PermanentError(f"{self.path}: cannot use WAL journal mode (got {mode})")
            # A 2xx to a webhook means the Build is on disk: fsync every commit.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            migrate(conn, self.path)
            self._rv = self._rv_stored = int(
                conn.execute("SELECT value FROM counter WHERE id = 0").fetchone()[0]
            )
        except BaseException:
            conn.close()
            raise
        return conn

    def _write_forever(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        """The writer thread: take everything queued, run it as one transaction, repeat."""
        try:
            conn = self._connect_writer()
        except sqlite3.Error as e:
            _settle(loop, [(ready, False, _translate(e))])
            return
        except BaseException as e:  # reported to open(), which raises it
            _settle(loop, [(ready, False, e)])
            return
        _settle(loop, [(ready, True, None)])
        try:
            stopping = False
            while not stopping:
                first = self._queue.get()
                if first is _STOP:
                    break
                group = [cast(_Write, first)]
                # Group commit: everything that queued up while the last commit's fsync ran.
                while len(group) < MAX_GROUP:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stopping = True
                        break
                    group.append(cast(_Write, item))
                self._commit_group(conn, group)
        finally:
            conn.close()

    def _commit_group(self, conn: sqlite3.Connection, group: list[_Write]) -> None:
        # A caller that gave up before its turn does not get a write it can't hear about.
        live = [w for w in group if not w.future.cancelled()]
        if not live:
            return
        outcomes: list[tuple[_Write, bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._notice_other_writers(conn)
            run: list[_Write] = []  # consecutive instantiate calls, written as one batch
            for write in [*live, None]:
                if write is not None and write.job is not None:
                    run.append(write)
                    continue
                if len(run) == 1:
                    outcomes.append(self._run_isolated(conn, run[0]))
                elif run:
                    outcomes.extend(self._instantiate_batch(conn, run))
                run = []
                if write is not None:
                    outcomes.append(self._run_isolated(conn, write))
            if self._rv != self._rv_stored:
                conn.execute("UPDATE counter SET value = ? WHERE id = 0", (self._rv,))
            conn.execute("COMMIT")  # the group's one fsync
        except Exception as e:
            # The file or the connection is in trouble (I/O, full, locked), or this code is:
            # the whole group goes, so that nothing of it is half-written, and the writer
            # lives on for the next group.
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            # Cached objects may describe states that were just rolled back; versions are
            # never reused so they could not match, but drop them rather than rely on it.
            self._configs.clear()
            self._builds.clear()
            self._failed_groups += 1
            # _translate makes a new exception per caller: each awaiting task gets its own.
            self._deliver([(w, False, _translate(e)) for w in live])
            return
        self._rv_stored = self._rv
        self._groups += 1
        self._writes += len(live)
        self._largest_group = max(self._largest_group, len(live))
        self._deliver(outcomes)

    def _notice_other_writers(self, conn: sqlite3.Connection) -> None:
        """Carry on from another process's writes to this file (an admin tool, say).

        This thread is meant to be the file's only writer; if it is not, the counter moved
        under us, and cached objects might share versions with the other writer's.
        """
        stored = int(conn.execute("SELECT value FROM counter WHERE id = 0").fetchone()[0])
        if stored != self._rv_stored:
            self._rv = max(self._rv, stored)
            self._rv_stored = stored
            self._configs.clear()
            self._builds.clear()

    @staticmethod
    def _run_isolated(conn: sqlite3.Connection, write: _Write) -> tuple[_Write, bool, Any]:
        """Run one caller's write inside a SAVEPOINT; its failure undoes only its own work.

        Errors that say the database itself is in trouble propagate and fail the group.
        """
        conn.execute("SAVEPOINT request")
        try:
            value = write.run(conn)
        except sqlite3.IntegrityError as e:
            # A constraint the request logic did not anticipate: still this request's fault.
            outcome: tuple[_Write, bool, Any] = (write, False, Conflict(str(e)))
        except (sqlite3.ProgrammingError, sqlite3.InterfaceError, sqlite3.DataError) as e:
            # A statement this request could not bind or run; the transaction is intact.
            outcome = (write, False, e)
        except sqlite3.Error:
            raise
        except BaseException as e:  # even a factory's SystemExit is its caller's alone
            outcome = (write, False, e)
        else:
            conn.execute("RELEASE request")
            return (write, True, value)
        conn.execute("ROLLBACK TO request")
        conn.execute("RELEASE request")
        return outcome

    @staticmethod
    def _deliver(outcomes: list[tuple[_Write, bool, Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for write, ok, value in outcomes:
            by_loop.setdefault(write.loop, []).append((write.future, ok, value))
        for loop, settled in by_loop.items():
            _settle(loop, settled)


def _settle(
    loop: asyncio.AbstractEventLoop, outcomes: list[tuple[asyncio.Future[Any], bool, Any]]
) -> None:
    """Resolve futures from the writer thread: one wake-up of the loop per group."""

    def resolve() -> None:
        for future, ok, value in outcomes:
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    # The loop may already be closed (a caller that went away); nobody is left to tell.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(resolve)


# Helpers ------------------------------------------------------------------------------------

V = TypeVar("V")


class _Lru(Generic[V]):
    """A small thread-safe LRU map (the writer and every reader thread share it)."""

    def __init__(self, size: int) -> None:
        self._size = max(0, size)
        self._data: OrderedDict[tuple[str, str], V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: tuple[str, str], value: V) -> V:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            if len(self._data) > self._size:
                self._data.popitem(last=False)
        return value

    def pop(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


_SELECT_CONFIGS: Final = (
    "SELECT namespace, name, uid, resource_version, last_version, doc FROM buildconfigs"
)
_INSERT_BUILD: Final = (
    "INSERT INTO builds (namespace, name, config_name, number, phase, uid,"
    " resource_version, created, labels, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# SQLite patches the two changed fields of the stored document in C, much cheaper than
# serialising the whole config again on every build.
_UPDATE_LAST_VERSION: Final = (
    "UPDATE buildconfigs SET resource_version = ?, last_version = ?,"
    " doc = json_set(doc, '$.metadata.resourceVersion', ?, '$.status.lastVersion', ?)"
    " WHERE namespace = ? AND name = ?"
)
_INSERT_DELIVERY: Final = "INSERT INTO deliveries (key, received, builds) VALUES (?, ?, ?)"


def _last_version_row(config: BuildConfig) -> tuple[Any, ...]:
    """The parameters of ``_UPDATE_LAST_VERSION`` for a config ``_bumped`` made."""
    rv = config.meta.resource_version
    return (int(rv), config.last_version, rv, config.last_version, config.namespace, config.name)


def _check_queue(queued: int, adding: int, limit: int) -> None:
    if queued + adding > limit:
        raise QueueFull(
            f"the build queue is full ({queued} builds waiting, limit {limit}); retry later",
            delay=QUEUE_FULL_RETRY_SECONDS,
        )


def _label_path(key: str) -> str | None:
    """The JSON path of a label key, or None when SQLite's path syntax cannot quote it."""
    if not key or '"' in key or "\\" in key:
        return None
    return f'$."{key}"'


def _label_conditions(query: BuildQuery, where: list[str], params: list[Any]) -> bool:
    """Add SQL for the label requirements; False when some must be checked in Python."""
    exact = True

    def path(key: str) -> str | None:
        nonlocal exact
        p = _label_path(key)
        if p is None:
            exact = False
        return p

    for key, value in sorted(query.labels.items()):
        if (p := path(key)) is not None:
            where.append("json_extract(labels, ?) = ?")
            params.extend((p, value))
    for key in sorted(query.label_present):
        if (p := path(key)) is not None:
            where.append("json_type(labels, ?) IS NOT NULL")
            params.append(p)
    for key in sorted(query.label_absent):
        if (p := path(key)) is not None:
            where.append("json_type(labels, ?) IS NULL")
            params.append(p)
    for key, values in sorted(query.label_in.items()):
        if (p := path(key)) is not None:
            if not values:
                where.append("0")
                continue
            where.append(f"json_extract(labels, ?) IN ({','.join('?' * len(values))})")
            params.append(p)
            params.extend(sorted(values))
    for key, values in sorted(query.label_not_in.items()):
        if (p := path(key)) is not None and values:
            # As in Kubernetes, `notin` also matches objects without the label.
            marks = ",".join("?" * len(values))
            where.append(
                f"(json_type(labels, ?) IS NULL OR json_extract(labels, ?) NOT IN ({marks}))"
            )
            params.extend((p, p))
            params.extend(sorted(values))
    return exact


def _labels_match(query: BuildQuery, labels: Mapping[str, Any]) -> bool:
    if any(labels.get(k) != v for k, v in query.labels.items()):
        return False
    if any(k not in labels for k in query.label_present):
        return False
    if any(k in labels for k in query.label_absent):
        return False
    if any(labels.get(k) not in values for k, values in query.label_in.items()):
        return False
    return not any(k in labels and labels[k] in vs for k, vs in query.label_not_in.items())


def _encode_continue(key: tuple[str, str, int, str]) -> str:
    raw = json.dumps(list(key), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[str, str, int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        namespace, config_name, number, name = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as e:
        raise BadRequest("the continue token is not one this server issued") from e
    if not (
        isinstance(namespace, str)
        and isinstance(config_name, str)
        and isinstance(number, int)
        and isinstance(name, str)
    ):
        raise BadRequest("the continue token is not one this server issued")
    return namespace, config_name, number, name


# Small helpers ------------------------------------------------------------------------------


def _bumped(config: BuildConfig, resource_version: str, last_version: int) -> BuildConfig:
    """``config`` as instantiate stores it: only resourceVersion and lastVersion change.

    Equal to parsing the updated stored document, without the cost of parsing it: the raw
    mapping a parse keeps is the document minus metadata.resourceVersion.
    """
    raw_status = {**(config.raw.get("status") or {}), "lastVersion": last_version}
    return replace(
        config,
        meta=replace(config.meta, resource_version=resource_version),
        last_version=last_version,
        raw={**config.raw, "status": raw_status},
    )


def _now() -> datetime:
    # The wire form has whole seconds; storing more would make a reloaded object differ.
    return metas.now().replace(microsecond=0)


def _epoch(value: datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _json_default(value: Any) -> Any:
    # YAML loads unquoted timestamps as datetimes; the API's wire form is RFC 3339.
    if isinstance(value, datetime):
        return metas.format_time(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# Built once: json.dumps with any option builds a new encoder per call, a measurable cost
# at several documents per build.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_json_default)


#: A lone UTF-16 surrogate (a JSON "\\ud800" escape) has no UTF-8 form; SQLite would refuse
#: the whole document. It becomes U+FFFD, as Go's encoding/json (and so Kubernetes) does.
_LONE_SURROGATES: Final = re.compile("[\ud800-\udfff]")


def _dumps(value: Any) -> str:
    # orjson refuses lone surrogates, so the substitution below only runs on json's text.
    text = jsoncodec.dumps(value, default=_json_default, fallback=_ENCODER)
    return _LONE_SURROGATES.sub("\ufffd", text)


def _check_version(kind: str, name: str, meta: metas.ObjectMeta, expected: str | None) -> None:
    if expected is not None and expected != meta.resource_version:
        raise _conflict(kind, name)


def _conflict(kind: str, name: str) -> Conflict:
    # Kubernetes' wording, which kubectl/oc users recognise.
    return Conflict(
        f'Operation cannot be fulfilled on {kind} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )


def _is_temporary(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in _TEMPORARY_CODES:
        return True
    text = str(error).lower()
    return any(m in text for m in _TEMPORARY_MESSAGES)


def _translate(error: BaseException) -> Exception:
    """A new domain error for ``error`` (new each call, so every caller can raise its own)."""
    translated: Exception
    if isinstance(error, sqlite3.Error) and _is_temporary(error):
        text = str(error)
        delay = 1.0 if "locked" in text or "busy" in text else 5.0
        translated = TemporaryError(f"the build store is unavailable ({text}); retry later", delay)
    else:
        translated = PermanentError(f"the build store failed: {type(error).__name__}: {error}")
    translated.__cause__ = error
    return translated
