"""Safe unpacking of binary-build uploads: real tar/zip files made here, every unsafe
kind refused by scan() and by extract() with the offending path, nothing written outside
the destination."""

from __future__ import annotations

import gzip
import io
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from triggerd.planning import archives

LIMITS = archives.Limits(max_size=1024 * 1024, max_files=50)


def make_tar(path: Path, entries: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                name, data = entry
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o755 if name.endswith(".sh") else 0o644
                tar.addfile(info, io.BytesIO(data))
    return path


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return info


def make_zip(path: Path, entries: list[tuple[str, bytes, int]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_tar_gz_is_unpacked_with_modes_and_inner_links(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "in.tar.gz",
        [("./app/main.sh", b"echo hi\n"), ("app/data.txt", b"x"),
         link("app/alias", "data.txt"), link("app/hard", "app/data.txt", tarfile.LNKTYPE)],
    )  # fmt: skip
    dest = tmp_path / "ctx"
    dest.mkdir()
    assert archives.scan(archive, LIMITS).files == 4
    summary = archives.extract(archive, dest, LIMITS)
    assert summary.format is archives.ArchiveFormat.TAR
    assert (dest / "app/main.sh").read_text() == "echo hi\n"
    assert (dest / "app/main.sh").stat().st_mode & 0o111
    assert (dest / "app/alias").readlink() == Path("data.txt")
    assert (dest / "app/hard").read_text() == "x"


def test_links_through_links_that_stay_inside_are_kept(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "in.tar.gz",
        [("lib/v2/x.so", b"x"), link("lib/current", "v2"), link("x.so", "lib/current/x.so"),
         link("lib/self", "."), link("deep", "lib/self/self/current/../v2/x.so")],
    )  # fmt: skip
    dest = tmp_path / "ctx"
    dest.mkdir()
    archives.extract(archive, dest, LIMITS)
    assert (dest / "x.so").read_text() == "x"
    assert (dest / "deep").read_text() == "x"


def test_zip_and_as_file(tmp_path: Path) -> None:
    archive = make_zip(
        tmp_path / "in.zip", [("src/a.txt", b"a", stat.S_IFREG | 0o644), ("src/", b"", 0)]
    )
    dest = tmp_path / "ctx"
    dest.mkdir()
    assert archives.extract(archive, dest, LIMITS).format is archives.ArchiveFormat.ZIP
    assert (dest / "src/a.txt").read_text() == "a"
    single = tmp_path / "app.jar"
    single.write_bytes(b"PK-but-a-file")
    archives.place_file(single, dest, "app.jar", LIMITS)
    assert (dest / "app.jar").read_bytes() == b"PK-but-a-file"
    with pytest.raises(archives.UnsafeArchive, match="plain file name"):
        archives.place_file(single, dest, "../escape", LIMITS)


def bomb(path: Path) -> Path:
    """A tar.gz of a few KiB that unpacks to 4 MiB of zeros (over the 1 MiB cap)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("zeros")
        info.size = 4 * 1024 * 1024
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    path.write_bytes(gzip.compress(raw.getvalue()))
    return path


def zip_bomb(path: Path) -> Path:
    return make_zip(path, [("big", bytes(4 * 1024 * 1024), stat.S_IFREG | 0o644)])


Maker = Callable[[Path], Path]
UNSAFE: list[tuple[str, Maker, str]] = [
    ("traversal", lambda p: make_tar(p, [("../evil", b"x")]), "../evil: '..' is not allowed"),
    ("nested traversal", lambda p: make_tar(p, [("a/../../evil", b"x")]), "a/../../evil"),
    ("absolute", lambda p: make_tar(p, [("/tmp/evil", b"x")]), "/tmp/evil: absolute paths"),
    ("symlink escape", lambda p: make_tar(p, [link("up", "../../etc")]),
     "up: symlink to '../../etc' points outside"),
    ("absolute symlink", lambda p: make_tar(p, [link("passwd", "/etc/passwd")]),
     "passwd: symlink to '/etc/passwd'"),
    ("write through symlink", lambda p: make_tar(p, [link("d", "."), ("d/x", b"x")]),
     "d/x: is below the symlink d"),
    ("hard link escape", lambda p: make_tar(p, [link("h", "/etc/passwd", tarfile.LNKTYPE)]),
     "h: hard link to '/etc/passwd' points outside"),
    ("hard link to unknown", lambda p: make_tar(p, [link("h", "elsewhere", tarfile.LNKTYPE)]),
     "h: hard link to something outside"),
    ("device", lambda p: make_tar(p, [device("null")]), "null: device files"),
    ("bomb", bomb, "zeros: unpacks to more than the limit of 1048576 bytes"),
    ("zip bomb", zip_bomb, "big: unpacks to more than the limit"),
    ("too many files", lambda p: make_tar(p, [(f"f{i}", b"") for i in range(51)]),
     "f50: more than 50 entries"),
    ("zip traversal", lambda p: make_zip(p, [("../z", b"x", stat.S_IFREG | 0o644)]),
     "../z: '..'"),
    ("zip symlink escape", lambda p: make_zip(p, [("l", b"/etc", stat.S_IFLNK | 0o777)]),
     "l: symlink to '/etc'"),
    # Text alone says d/../x is x; through the link d -> . it is ../x.
    ("symlink chain", lambda p: make_tar(p, [link("d", "."), link("a", "d/../x")]),
     "a: symlink to 'd/../x' points outside"),
    # The same with the link that makes it escape coming second.
    ("symlink chain, link last", lambda p: make_tar(p, [("sub/k", b"k"), link("a", "d/../x"),
                                                        link("d", "sub/..")]),
     "a: symlink to 'd/../x' points outside"),
    ("nested symlink chain", lambda p: make_tar(
        p, [("sub/keep", b"k"), link("sub/up", ".."), link("sub/esc", "up/../etc")]),
     "sub/esc: symlink to 'up/../etc' points outside"),
    ("zip symlink chain", lambda p: make_zip(p, [("d", b".", stat.S_IFLNK | 0o777),
                                                 ("a", b"d/../x", stat.S_IFLNK | 0o777)]),
     "a: symlink to 'd/../x' points outside"),
    ("symlink loop", lambda p: make_tar(p, [link("a", "b/x"), link("b", "a")]),
     "is a symlink loop"),
    ("symlink over a directory", lambda p: make_tar(p, [("d/x", b"x"), link("d", "sub")]),
     "d: is"),
    ("not an archive", lambda p: (p.write_bytes(b"hello" * 200), p)[1], "not a tar"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "message"), [c[1:] for c in UNSAFE], ids=[c[0] for c in UNSAFE])
def test_unsafe_uploads_are_refused_with_the_path(
    tmp_path: Path, make: Maker, message: str
) -> None:
    archive = make(tmp_path / "upload")
    with pytest.raises(archives.UnsafeArchive) as scanned:
        archives.scan(archive, LIMITS)
    assert message in str(scanned.value)
    # extract() enforces the same rules while writing; nothing lands outside the context.
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = outside / "ctx"
    dest.mkdir()
    before = snapshot(tmp_path.parent)
    with pytest.raises(archives.UnsafeArchive) as extracted:
        archives.extract(archive, dest, LIMITS)
    assert message in str(extracted.value)
    created = snapshot(tmp_path.parent) - before
    assert all(c.startswith(f"{tmp_path.name}/outside/ctx/") for c in created), created
    assert snapshot(outside) - {"ctx"} == {c for c in snapshot(outside) if c.startswith("ctx/")}
