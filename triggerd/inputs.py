"""The uploads binary builds keep under ``<dataDir>/uploads/sha256/``, and their removal.

An upload (content-addressed, see triggerd/web/binary.py) stays while any stored build names
it in its ``triggerd.dev/binary-input`` annotation, so a re-run gets the same input. Once the
builds naming it are pruned or deleted the engine asks the store which digests are still in
use and hands the rest here. A file younger than ``grace_seconds`` is kept regardless: it may
be the same content uploaded again a moment ago for a build that is not stored yet (the
upload is written before its build is created, and an upload replaces the file).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from pathlib import Path

from triggerd.planning import archives

log = logging.getLogger(__name__)

#: Long enough for any upload's build to be stored after the upload is kept.
DEFAULT_GRACE_SECONDS = 600.0


class BinaryInputs:
    def __init__(self, data_dir: Path, *, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> None:
        self.data_dir = data_dir
        self.grace_seconds = grace_seconds

    def kept(self) -> list[str]:
        """The digests (``sha256:<hex>``) of every upload on disk."""
        folder = self.data_dir / archives.UPLOADS_DIR / "sha256"
        if not folder.is_dir():
            return []
        return sorted(f"sha256:{p.name}" for p in folder.iterdir() if p.is_file())

    def release(self, digests: Iterable[str], *, now: float | None = None) -> list[str]:
        """Delete these uploads (no build uses them any more) unless younger than the grace
        period; returns the digests deleted."""
        moment = time.time() if now is None else now
        removed = []
        for digest in sorted(set(digests)):
            try:
                path = archives.upload_path(self.data_dir, digest)
            except ValueError:
                continue  # not one of ours: annotations are user-visible, never trust them
            with contextlib.suppress(FileNotFoundError):
                if moment - path.stat().st_mtime < self.grace_seconds:
                    continue
                path.unlink()
                removed.append(digest)
        if removed:
            log.info("removed %d upload(s) no build uses any more", len(removed))
        return removed
