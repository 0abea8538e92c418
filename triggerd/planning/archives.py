"""Binary build inputs: recognising an upload and unpacking it safely into a build context.

``POST .../instantiatebinary`` (:mod:`triggerd.web.binary`) checks an upload with
:func:`scan` before a Build is created, so a bad archive is refused with 400 naming the
offending path; the runner unpacks the stored upload into the build's workspace with
:func:`extract`, which applies the very same rules again while it writes (the file could
have been swapped, and the checks must hold for what is actually written).

Rules: no absolute paths, no ``..``, no member below a symlink, symlinks and hard links
only to targets inside the context (a symlink's target resolved through the archive's
other symlinks, as the kernel will: ``d -> .`` makes ``a -> d/../x`` point outside), no
device files, FIFOs or sockets, at most
``max_files`` entries and ``max_size`` bytes once unpacked (counted from the bytes
written, not from the headers, so a lying zip or a gzip bomb stops at the cap).

This module does file I/O only inside the destination directory it is given and never
starts processes; it knows nothing about HTTP, Builds or buildah.
"""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO

from triggerd.model import builds
from triggerd.settings import Settings

#: Defaults for the maxBinarySize / maxBinaryFiles settings.
DEFAULT_MAX_SIZE = 1024 * 1024 * 1024
DEFAULT_MAX_FILES = 100_000
#: Build annotations instantiatebinary sets: the stored upload (its sha256) and asFile.
#: Annotations are copied when a build is re-run, so the re-run gets the same input.
INPUT_ANNOTATION = builds.BINARY_INPUT_ANNOTATION
AS_FILE_ANNOTATION = builds.BINARY_AS_FILE_ANNOTATION
#: Uploads are stored content-addressed under <dataDir>/uploads/sha256/<hex>.
UPLOADS_DIR = "uploads"
_CHUNK = 1024 * 1024
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_GZIP_MAGIC = b"\x1f\x8b"
_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"


class ArchiveFormat(StrEnum):
    TAR = "tar"  # plain or compressed (gzip, bzip2, xz)
    ZIP = "zip"


class UnsafeArchive(ValueError):
    """The upload breaks a rule; ``path`` is the member at fault ("" for the whole)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    max_size: int = DEFAULT_MAX_SIZE
    max_files: int = DEFAULT_MAX_FILES


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    format: ArchiveFormat | None  # None: a single file (asFile)
    files: int
    size: int


class _Kind(StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"


@dataclass(frozen=True, slots=True, kw_only=True)
class _Member:
    name: str  # normalised, relative
    kind: _Kind
    mode: int
    link: str = ""  # symlink target as stored, or hard link's member name (normalised)
    open: Callable[[], IO[bytes]] | None = None  # for files


def limits_for(settings: Settings) -> Limits:
    """The maxBinarySize / maxBinaryFiles settings."""
    return Limits(max_size=settings.max_binary_size, max_files=settings.max_binary_files)


def upload_path(data_dir: Path, digest: str) -> Path:
    """Where the upload with ``digest`` (``sha256:<hex>``) is kept; ValueError if malformed."""
    algorithm, _, hex_digest = digest.partition(":")
    if algorithm != "sha256" or len(hex_digest) != 64 or not _is_hex(hex_digest):
        raise ValueError(f"malformed upload digest {digest!r}")
    return data_dir / UPLOADS_DIR / "sha256" / hex_digest


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def detect(head: bytes) -> ArchiveFormat:
    """The archive format from the first bytes (at least 512) of an upload."""
    if head.startswith(_ZIP_MAGIC):
        return ArchiveFormat.ZIP
    if head.startswith((_GZIP_MAGIC, _BZIP2_MAGIC, _XZ_MAGIC)):
        return ArchiveFormat.TAR
    if len(head) >= 262 and head[257:262] == b"ustar":
        return ArchiveFormat.TAR
    raise UnsafeArchive("", "not a tar, tar.gz, tar.bz2, tar.xz or zip archive")


def normalise(name: str) -> str:
    """A member name as a clean relative path; UnsafeArchive for absolute or ``..``."""
    if "\x00" in name:
        raise UnsafeArchive(name, "contains a NUL byte")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(name, "absolute paths are not allowed")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(name, "'..' is not allowed in paths")
    return "/".join(parts)


def check_file_name(name: str) -> str:
    """An asFile name: one plain path component."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
        raise UnsafeArchive(name, "asFile must be a plain file name")
    return name


def scan(archive: Path, limits: Limits) -> Summary:
    """Check every rule on ``archive`` without writing anything."""
    return _walk(archive, limits, None)


def extract(archive: Path, destination: Path, limits: Limits) -> Summary:
    """Unpack ``archive`` into the existing directory ``destination``, or raise
    UnsafeArchive leaving nothing outside it."""
    return _walk(archive, limits, destination.resolve())


def place_file(upload: Path, destination: Path, name: str, limits: Limits) -> Summary:
    """The asFile form: the upload as the single file ``destination/name``."""
    check_file_name(name)
    size = upload.stat().st_size
    if size > limits.max_size:
        raise UnsafeArchive(name, f"is {size} bytes, over the limit of {limits.max_size}")
    budget = _Budget(limits)
    budget.count(name)
    with upload.open("rb") as src:
        _write_member(destination.resolve(), name, src, 0o644, budget)
    return Summary(format=None, files=1, size=size)


class _Budget:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.files = 0
        self.size = 0

    def count(self, name: str) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise UnsafeArchive(name, f"more than {self.limits.max_files} entries")

    def add(self, name: str, size: int) -> None:
        self.size += size
        if self.size > self.limits.max_size:
            raise UnsafeArchive(
                name, f"unpacks to more than the limit of {self.limits.max_size} bytes"
            )


def _walk(archive: Path, limits: Limits, destination: Path | None) -> Summary:
    with archive.open("rb") as f:
        fmt = detect(f.read(512))
    budget = _Budget(limits)
    symlinks: dict[str, str] = {}
    parents: set[str] = set()  # directories other members are in
    files: set[str] = set()
    members = _tar_members(archive) if fmt is ArchiveFormat.TAR else _zip_members(archive)
    for member in members:
        budget.count(member.name)
        _check_parents(member.name, symlinks)
        parents.update(_parents_of(member.name))
        if member.kind is _Kind.SYMLINK:
            _check_symlink(member.name, member.link)
            symlinks[member.name] = member.link
            _resolve_inside(member.name, symlinks)
        elif member.kind is _Kind.HARDLINK and member.link not in files:
            raise UnsafeArchive(member.name, "hard link to something outside the archive")
        if destination is None:
            if member.kind is _Kind.FILE:
                budget.add(member.name, _drain(member))
        else:
            _materialise(destination, member, budget)
        if member.kind in (_Kind.FILE, _Kind.HARDLINK):
            files.add(member.name)
    # A link checked early can escape through one that came later (a -> d/../x, then
    # d -> .): every link is resolved again against all of them. Nothing was written
    # outside the destination meanwhile: extraction never follows a link.
    for name in symlinks:
        if name in parents:
            raise UnsafeArchive(name, "is a symlink and a directory with members in it")
        _resolve_inside(name, symlinks)
    return Summary(format=fmt, files=budget.files, size=budget.size)


def _drain(member: _Member) -> int:
    """Read a member to count its real size (headers can lie)."""
    opener = member.open
    assert opener is not None
    total = 0
    with opener() as stream:
        while chunk := stream.read(_CHUNK):
            total += len(chunk)
    return total


#: Links followed while resolving one path before it counts as a loop (Linux's limit).
MAX_LINK_HOPS = 40


def _resolve_inside(name: str, symlinks: dict[str, str]) -> str:
    """Where the link ``name`` points, resolved as the kernel would against the archive's
    ``symlinks`` (path → target); UnsafeArchive when it leaves the context or loops."""
    target = symlinks[name]
    pending = [p for p in posixpath.dirname(name).split("/") if p]
    pending += [p for p in target.split("/") if p]
    resolved: list[str] = []
    hops = 0
    pending.reverse()  # a stack: the next component on top
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            if not resolved:
                raise UnsafeArchive(name, f"symlink to {target!r} points outside the build context")
            resolved.pop()
            continue
        here = "/".join([*resolved, part])
        link = symlinks.get(here)
        if link is None:
            resolved.append(part)
            continue
        hops += 1
        if hops > MAX_LINK_HOPS or link.startswith("/"):
            problem = (
                "is a symlink loop"
                if hops > MAX_LINK_HOPS
                else (f"symlink to {target!r} points outside the build context")
            )
            raise UnsafeArchive(name, problem)
        # The link's target replaces it, relative to the directory it is in.
        pending.extend(reversed([p for p in link.split("/") if p]))
    return "/".join(resolved)


def _parents_of(name: str) -> Iterator[str]:
    parts = name.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def _check_parents(name: str, symlinks: Mapping[str, str]) -> None:
    parts = name.split("/")
    for i in range(1, len(parts)):
        if "/".join(parts[:i]) in symlinks:
            raise UnsafeArchive(name, f"is below the symlink {'/'.join(parts[:i])}")


def _check_symlink(name: str, target: str) -> None:
    if not target or target.startswith("/"):
        raise UnsafeArchive(name, f"symlink to {target!r} points outside the build context")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchive(name, f"symlink to {target!r} points outside the build context")


def _tar_members(archive: Path) -> Iterator[_Member]:
    try:
        with tarfile.open(archive, "r:*") as tar:
            for info in tar:
                name = normalise(info.name)
                if not name:
                    continue
                if info.isdir():
                    yield _Member(name=name, kind=_Kind.DIR, mode=info.mode)
                elif info.isreg():
                    yield _Member(
                        name=name,
                        kind=_Kind.FILE,
                        mode=info.mode,
                        open=_tar_opener(tar, info),
                    )
                elif info.issym():
                    yield _Member(name=name, kind=_Kind.SYMLINK, mode=0o777, link=info.linkname)
                elif info.islnk():
                    try:
                        target = normalise(info.linkname)
                    except UnsafeArchive as e:
                        raise UnsafeArchive(
                            name, f"hard link to {info.linkname!r} points outside the context"
                        ) from e
                    yield _Member(name=name, kind=_Kind.HARDLINK, mode=0, link=target)
                else:
                    raise UnsafeArchive(name, "device files, FIFOs and sockets are not allowed")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UnsafeArchive("", f"cannot read the tar archive: {e}") from e


def _tar_opener(tar: tarfile.TarFile, info: tarfile.TarInfo) -> Callable[[], IO[bytes]]:
    def opener() -> IO[bytes]:
        stream = tar.extractfile(info)
        if stream is None:
            raise UnsafeArchive(info.name, "cannot be read")
        return stream

    return opener


def _zip_members(archive: Path) -> Iterator[_Member]:
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = normalise(info.filename)
                if not name:
                    continue
                unix_mode = info.external_attr >> 16
                file_type = stat.S_IFMT(unix_mode)
                if info.is_dir():
                    yield _Member(name=name, kind=_Kind.DIR, mode=0o755)
                elif file_type == stat.S_IFLNK:
                    if info.file_size > 4096:
                        raise UnsafeArchive(name, "symlink target is too long")
                    target = zf.read(info).decode("utf-8", "replace")
                    yield _Member(name=name, kind=_Kind.SYMLINK, mode=0o777, link=target)
                elif file_type not in (0, stat.S_IFREG):
                    raise UnsafeArchive(name, "device files, FIFOs and sockets are not allowed")
                else:
                    yield _Member(
                        name=name,
                        kind=_Kind.FILE,
                        mode=unix_mode & 0o777 or 0o644,
                        open=_zip_opener(zf, info),
                    )
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise UnsafeArchive("", f"cannot read the zip archive: {e}") from e


def _zip_opener(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Callable[[], IO[bytes]]:
    def opener() -> IO[bytes]:
        return zf.open(info)

    return opener


def _materialise(destination: Path, member: _Member, budget: _Budget) -> None:
    parent = _parent_inside(destination, member.name)
    target = parent / posixpath.basename(member.name)
    if member.kind is _Kind.DIR:
        if target.is_symlink():
            raise UnsafeArchive(member.name, "replaces a symlink")
        target.mkdir(exist_ok=True)
        return
    if target.is_symlink() or target.is_dir():
        raise UnsafeArchive(member.name, "is in the archive more than once")
    if target.exists():
        target.unlink()  # a later entry of the same name wins, as tar does
    if member.kind is _Kind.SYMLINK:
        os.symlink(member.link, target)
    elif member.kind is _Kind.HARDLINK:
        source = _parent_inside(destination, member.link) / posixpath.basename(member.link)
        if source.is_symlink() or not source.is_file():
            raise UnsafeArchive(member.name, "hard link to something that is not a file")
        os.link(source, target)
    else:
        opener = member.open
        assert opener is not None
        with opener() as stream:
            _write_member(destination, member.name, stream, member.mode, budget)


def _parent_inside(destination: Path, name: str) -> Path:
    """The directory ``name`` goes in, created, and checked to be a real directory inside
    ``destination`` (no component a symlink, whatever an earlier member did)."""
    current = destination
    for part in name.split("/")[:-1]:
        current = current / part
        if current.is_symlink():
            raise UnsafeArchive(name, "is below a symlink")
        if not current.exists():
            current.mkdir()
        elif not current.is_dir():
            raise UnsafeArchive(name, f"is below the file {current.relative_to(destination)}")
    return current


def _write_member(
    destination: Path, name: str, stream: IO[bytes], mode: int, budget: _Budget
) -> None:
    target = _parent_inside(destination, name) / posixpath.basename(name)
    # Only the permission bits a build context needs: no setuid/setgid/sticky.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := stream.read(_CHUNK):
            budget.add(name, len(chunk))
            out.write(chunk)
        os.fchmod(out.fileno(), (mode & 0o777) | 0o600)
