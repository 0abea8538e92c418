"""Client side of binary builds: pack a local input and upload it to ``instantiatebinary``.

``triggerd start-build BC --from-dir DIR | --from-file FILE | --from-archive FILE |
--from-repo DIR [--commit REV]`` calls :func:`start_binary`. A directory is packed as a
tar.gz without ``.git`` (the CLI has no option to include it; ``--from-repo`` sends a
commit), a repository with ``git archive`` of the commit (its author, committer
and message go along as ``revision.*``), a file is sent as is with ``asFile``, an archive
is sent unchanged; ``--commit`` with the other three is sent as ``revision.commit``. The
body is streamed from a temporary file with a tqdm progress bar on stderr (only when stderr
is a terminal, unless forced).

Never follows symlinks out of the directory being packed (they are stored as links; the
server refuses ones that escape) and never sends device files.
"""

from __future__ import annotations

import asyncio
import functools
import os
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from tqdm import tqdm

CHUNK = 256 * 1024
GIT_FORMAT = "%H%x00%an%x00%ae%x00%cn%x00%ce%x00%s"


class UploadError(Exception):
    """The input cannot be packed (missing directory, not a git repository, ...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepared:
    """A body ready to send and the query parameters that go with it."""

    path: Path
    params: dict[str, str] = field(default_factory=dict)
    temporary: bool = False


def pack_directory(directory: Path, *, include_git: bool = False) -> Prepared:
    """``directory`` as a tar.gz of its contents (paths relative to it)."""
    if not directory.is_dir():
        raise UploadError(f"{directory} is not a directory")
    fd, name = tempfile.mkstemp(prefix="triggerd-upload-", suffix=".tar.gz")
    os.close(fd)
    out = Path(name)

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        if not include_git and ".git" in parts:
            return None
        if not (info.isreg() or info.isdir() or info.issym()):
            return None  # devices, FIFOs, sockets: never part of a build context
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    try:
        with tarfile.open(out, "w:gz") as tar:
            for entry in sorted(directory.iterdir()):
                mode = entry.lstat().st_mode
                if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
                    tar.add(entry, arcname=entry.name, filter=keep)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return Prepared(path=out, temporary=True)


def pack_repository(repository: Path, commit: str = "") -> Prepared:
    """``git archive`` of ``commit`` (default HEAD) with its revision as query parameters."""
    revision = commit or "HEAD"
    if revision.startswith("-"):
        raise UploadError(f"--commit {revision!r} must not start with '-'")
    try:
        info = subprocess.run(
            ["git", "-C", str(repository), "log", "-1", f"--format={GIT_FORMAT}", revision, "--"],
            capture_output=True,
            check=True,
            text=True,
        ).stdout.rstrip("\n")
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        raise UploadError(f"{repository}: cannot read commit {revision}: {detail.strip()}") from e
    sha, author, author_email, committer, committer_email, message = info.split("\x00")
    fd, name = tempfile.mkstemp(prefix="triggerd-upload-", suffix=".tar")
    os.close(fd)
    out = Path(name)
    try:
        subprocess.run(
            ["git", "-C", str(repository), "archive", "--format=tar", f"--output={out}", sha],
            capture_output=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as e:
        out.unlink(missing_ok=True)
        raise UploadError(f"{repository}: git archive failed") from e
    params = {
        "revision.commit": sha,
        "revision.message": message,
        "revision.authorName": author,
        "revision.authorEmail": author_email,
        "revision.committerName": committer,
        "revision.committerEmail": committer_email,
    }
    return Prepared(path=out, params=params, temporary=True)


def prepare(
    *,
    from_dir: str | None = None,
    from_file: str | None = None,
    from_archive: str | None = None,
    from_repo: str | None = None,
    commit: str = "",
    include_git: bool = False,
) -> Prepared:
    """The body for exactly one of the ``--from-*`` options."""
    given = [x for x in (from_dir, from_file, from_archive, from_repo) if x]
    if len(given) != 1:
        raise UploadError(
            "give exactly one of --from-dir, --from-file, --from-archive, --from-repo"
        )
    if from_dir:
        packed = pack_directory(Path(from_dir), include_git=include_git)
        if commit:
            # What the directory is a checkout of: the build's revision (labels, env).
            packed.params["revision.commit"] = commit
        return packed
    if from_repo:
        return pack_repository(Path(from_repo), commit)
    path = Path(from_file or from_archive or "")
    if not path.is_file():
        raise UploadError(f"{path} is not a file")
    params = {"asFile": path.name} if from_file else {}
    if commit:
        params["revision.commit"] = commit
    return Prepared(path=path, params=params)


async def send(
    session: aiohttp.ClientSession,
    url: str,
    prepared: Prepared,
    *,
    progress: bool | None = None,
) -> tuple[int, str]:
    """POST the body with a progress bar; (HTTP status, response text)."""
    size = prepared.path.stat().st_size
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(
        total=size, unit="B", unit_scale=True, unit_divisor=1024, desc="Uploading",
        disable=not show, file=sys.stderr,
    )  # fmt: skip

    async def body() -> AsyncIterator[bytes]:
        with prepared.path.open("rb") as f:
            while chunk := f.read(CHUNK):
                bar.update(len(chunk))
                yield chunk

    try:
        async with session.post(
            url,
            data=body(),
            params=prepared.params,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        ) as response:
            return response.status, await response.text()
    finally:
        bar.close()


async def start_binary(
    session: aiohttp.ClientSession,
    url: str,
    *,
    from_dir: str | None = None,
    from_file: str | None = None,
    from_archive: str | None = None,
    from_repo: str | None = None,
    commit: str = "",
    progress: bool | None = None,
) -> tuple[int, str]:
    """Pack (or take) the input and upload it to ``url`` (the instantiatebinary URL)."""
    prepared = await asyncio.to_thread(
        functools.partial(
            prepare, from_dir=from_dir, from_file=from_file, from_archive=from_archive,
            from_repo=from_repo, commit=commit,
        )
    )  # fmt: skip
    try:
        return await send(session, url, prepared, progress=progress)
    finally:
        if prepared.temporary:
            prepared.path.unlink(missing_ok=True)
