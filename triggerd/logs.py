"""Build logs on disk: one append-only file per build, readable and followable while written.

An executor opens a :class:`LogWriter` for a build and appends lines to
``<root>/<namespace>/<name>.log``; the web layer reads the file (whole or its tail) or
follows it (``oc logs -f``), waking on each write instead of polling. Logs outlive the
build's workspace and the server process; they are removed only with the Build.

This module stores bytes as given: it never interprets them, and callers must not hand it
secrets (the executor redacts before writing). It must stay usable from one event loop: the
writer is synchronous and cheap, followers are async generators on the same loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from triggerd.errors import NotFound

_CHUNK = 64 * 1024
_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(slots=True)
class _Live:
    """A build whose log is still being written: followers wait on ``changed``."""

    changed: asyncio.Event = field(default_factory=asyncio.Event)
    finished: bool = False

    def wake(self) -> None:
        # Swap in a fresh event before setting the old one, so a follower that captured
        # the old event is released and the next wait blocks until the next write.
        old, self.changed = self.changed, asyncio.Event()
        old.set()


class LogWriter:
    """Appends to one build's log; :meth:`close` marks the log finished (idempotent)."""

    def __init__(self, store: LogStore, key: tuple[str, str], path: Path, live: _Live) -> None:
        self._store = store
        self._key = key
        self._live = live
        self._file = path.open("ab", buffering=0)
        self.closed = False

    def write(self, data: bytes) -> None:
        """Append ``data`` as is (callers pass whole lines) and wake followers."""
        if self.closed or not data:
            return
        self._file.write(data)
        self._live.wake()

    def line(self, text: str | bytes) -> None:
        """Append one line, adding the newline."""
        data = text.encode("utf-8", "replace") if isinstance(text, str) else text
        self.write(data if data.endswith(b"\n") else data + b"\n")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._file.close()
        self._live.finished = True
        self._live.wake()
        self._store._forget(self._key, self._live)

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LogStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._live: dict[tuple[str, str], _Live] = {}

    def path(self, namespace: str, name: str) -> Path:
        for part in (namespace, name):
            if not _SAFE_PART.match(part):
                raise ValueError(f"not a valid namespace or build name: {part!r}")
        return self.root / namespace / f"{name}.log"

    def open_writer(self, namespace: str, name: str) -> LogWriter:
        """Start (or continue) writing a build's log; followers see every write."""
        path = self.path(namespace, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        key = (namespace, name)
        live = self._live.get(key)
        if live is None or live.finished:
            live = self._live[key] = _Live()
        return LogWriter(self, key, path, live)

    def exists(self, namespace: str, name: str) -> bool:
        return self.path(namespace, name).is_file()

    def is_live(self, namespace: str, name: str) -> bool:
        """Whether a writer is still open for this build."""
        return (namespace, name) in self._live

    def read(self, namespace: str, name: str, tail_lines: int | None = None) -> bytes:
        """The whole log, or its last ``tail_lines`` lines; NotFound when there is none."""
        path = self.path(namespace, name)
        try:
            with path.open("rb") as f:
                if tail_lines is None:
                    return f.read()
                return _tail(f, tail_lines)
        except FileNotFoundError as e:
            raise NotFound("BuildLog", f"{namespace}/{name}") from e

    async def follow(self, namespace: str, name: str) -> AsyncIterator[bytes]:
        """What the log holds now, then each new chunk, until the writer is closed.

        A finished log is returned whole and the iteration ends; NotFound when there is no
        log at all (the build has not started writing one).
        """
        path = self.path(namespace, name)
        key = (namespace, name)
        try:
            f = path.open("rb")
        except FileNotFoundError as e:
            raise NotFound("BuildLog", f"{namespace}/{name}") from e
        with f:
            while True:
                live = self._live.get(key)
                # Look at "finished" and pick the event before reading: whatever was
                # written before the writer closed is then certain to be read below.
                done = live is None or live.finished
                waiter = None if live is None else live.changed
                chunk = f.read(_CHUNK)
                if chunk:
                    yield chunk
                    continue
                if done or waiter is None:
                    return
                await waiter.wait()

    def delete(self, namespace: str, name: str) -> None:
        """Remove a build's log; followers of a live log are released."""
        key = (namespace, name)
        live = self._live.pop(key, None)
        if live is not None:
            live.finished = True
            live.wake()
        with contextlib.suppress(FileNotFoundError):
            self.path(namespace, name).unlink()

    def _forget(self, key: tuple[str, str], live: _Live) -> None:
        if self._live.get(key) is live:
            del self._live[key]


def snippet(data: bytes, lines: int = 10) -> str:
    """The last ``lines`` non-empty lines of a log, as status.logSnippet shows them."""
    text = data.decode("utf-8", "replace")
    kept = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])


def _tail(f: BinaryIO, count: int) -> bytes:
    """The last ``count`` lines of a binary file, reading backwards in blocks."""
    if count <= 0:
        return b""
    end = f.seek(0, os.SEEK_END)
    pos, data = end, b""
    # One more newline than lines wanted, ignoring a final newline that ends the last line.
    while pos > 0 and data.count(b"\n") <= count:
        step = min(_CHUNK, pos)
        pos -= step
        f.seek(pos)
        data = f.read(step) + data
    body = data[:-1] if data.endswith(b"\n") else data
    parts = body.split(b"\n")
    kept = b"\n".join(parts[-count:])
    return kept + (b"\n" if data.endswith(b"\n") else b"")
