"""Tests of tests/support/gitrepo.py: repositories, deterministic commits, both transports.

The key property for triggerd is that a build can fetch one exact commit shallowly
(``git fetch --depth=1 origin <sha>``) from ``file://`` and ``git://`` URLs, including a
commit that is no longer a branch tip.
"""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest

from tests.support.gitrepo import (
    Executable,
    GitDaemon,
    GitError,
    GitRepoFactory,
    Symlink,
    git,
    shallow_fetch,
)
from tests.support.processes import ProcessDied

pytestmark = pytest.mark.e2e


def test_commits_are_deterministic(git_repo_factory: GitRepoFactory) -> None:
    a = git_repo_factory("same", {"README.md": "hello\n"})
    b = git_repo_factory("same", {"README.md": "hello\n"})
    assert a.path != b.path  # unique names: same.git, same-2.git
    assert a.name == "same.git"
    assert b.name == "same-2.git"
    assert a.rev_parse("main") == b.rev_parse("main")
    assert a.commit({"x": "1"}) == b.commit({"x": "1"})
    # Author, committer and a per-commit clock are fixed, so even the ids are stable
    # across runs; pin the first one to catch accidental changes to the scheme.
    assert a.log()[-1] == b.log()[-1]
    who = git("log", "-1", "--format=%an <%ae>|%aI|%cI", a.log()[-1], cwd=a.path)
    assert who.split("|") == [
        "Triggerd Tests <tests@triggerd.invalid>",
        "2026-01-01T00:01:00+00:00",
        "2026-01-01T00:01:00+00:00",
    ]


def test_commit_updates_deletes_and_modes(git_repo_factory: GitRepoFactory) -> None:
    repo = git_repo_factory(
        "modes", {"a.txt": "a", "dir/b.txt": b"\x00binary", "run.sh": Executable("#!/bin/sh\n")}
    )
    first = repo.rev_parse("HEAD")
    second = repo.commit({"a.txt": None, "link": Symlink("dir/b.txt")}, message="second")
    assert repo.log() == [second, first]
    assert repo.list_files() == ["dir/b.txt", "link", "run.sh"]
    assert repo.read_file("dir/b.txt") == b"\x00binary"
    assert repo.read_file("a.txt", ref=first) == b"a"
    modes = git("ls-tree", "-r", "HEAD", cwd=repo.path)
    assert "100755 blob" in next(line for line in modes.splitlines() if line.endswith("run.sh"))
    assert "120000 blob" in next(line for line in modes.splitlines() if line.endswith("link"))
    third = repo.commit({"only.txt": "x"}, replace=True)
    assert repo.list_files(third) == ["only.txt"]


def test_branches_tags_and_head(git_repo_factory: GitRepoFactory) -> None:
    repo = git_repo_factory("refs", {"f": "1"})
    base = repo.rev_parse("main")
    assert repo.branch("feature") == base
    on_feature = repo.commit({"f": "2"}, branch="feature")
    assert repo.rev_parse("main") == base
    assert repo.rev_parse("feature") == on_feature
    assert repo.tag("v1", "main") == base
    assert repo.tag("v2", "feature", message="release 2") == on_feature
    assert git("cat-file", "-t", "v2", cwd=repo.path) == "tag"  # annotated
    assert repo.rev_parse("v2") == on_feature  # peeled
    repo.set_head("feature")
    assert repo.head_branch == "feature"
    repo.set_head("main")
    repo.delete_branch("feature")
    assert not repo.exists("refs/heads/feature")
    with pytest.raises(GitError):
        repo.rev_parse("feature")


def test_new_branch_from_nothing(git_repo_factory: GitRepoFactory) -> None:
    repo = git_repo_factory("orphan", {"f": "1"})
    orphan = repo.commit({"g": "2"}, branch="gh-pages")
    assert repo.log("gh-pages") == [orphan]


@pytest.mark.parametrize("transport", ["file", "git"])
def test_shallow_fetch_of_an_exact_older_commit(
    git_repo_factory: GitRepoFactory, tmp_path: Path, transport: str
) -> None:
    repo = git_repo_factory("shallow", {"Containerfile": "FROM scratch\n", "v": "1"})
    old = repo.rev_parse("HEAD")
    repo.commit({"v": "2"})
    repo.commit({"v": "3"})  # `old` is no longer a tip: needs allow*SHA1InWant
    url = repo.file_url if transport == "file" else repo.git_url
    assert url.startswith(f"{transport}://")
    work = shallow_fetch(url, old, tmp_path / "work")
    assert (work / "v").read_text() == "1"
    assert git("rev-parse", "HEAD", cwd=work) == old
    assert git("rev-list", "--count", "HEAD", cwd=work) == "1"  # really shallow


def test_daemon_serves_clone_and_ls_remote(
    git_daemon: GitDaemon, git_repo_factory: GitRepoFactory, tmp_path: Path
) -> None:
    repo = git_repo_factory("served", {"hello.txt": "hi\n", "bin/x": Executable("echo")})
    repo.tag("v1.0")
    assert repo.git_url == f"git://127.0.0.1:{git_daemon.port}/served.git"
    refs = git("ls-remote", repo.git_url)
    assert f"{repo.rev_parse('main')}\trefs/heads/main" in refs
    assert "refs/tags/v1.0" in refs
    clone = tmp_path / "clone"
    git("clone", "-q", "--branch", "v1.0", repo.git_url, str(clone))
    assert (clone / "hello.txt").read_text() == "hi\n"
    assert (clone / "bin" / "x").stat().st_mode & stat.S_IXUSR
    assert git_daemon.running


def test_unknown_repository_is_refused(git_daemon: GitDaemon) -> None:
    with pytest.raises(GitError):
        git("ls-remote", git_daemon.url_for("does-not-exist.git"))


def test_daemon_restart_keeps_port(tmp_path: Path) -> None:
    daemon = GitDaemon(tmp_path / "repos")
    factory = GitRepoFactory(daemon.base_dir, daemon)
    with daemon:
        repo = factory("r", {"f": "1"})
        port = daemon.port
        assert git("ls-remote", repo.git_url)
        daemon.restart()
        assert daemon.port == port
        assert repo.rev_parse("main") in git("ls-remote", repo.git_url)
    assert not daemon.running


def test_daemon_moves_to_another_port_when_its_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        daemon = GitDaemon(tmp_path / "repos")
        daemon.port = taken  # as if another program grabbed the port free_port() gave us
        with daemon:
            assert daemon.port != taken
            repo = GitRepoFactory(daemon.base_dir, daemon)("r", {"f": "1"})
            assert repo.rev_parse("main") in git("ls-remote", repo.git_url)
        fixed = GitDaemon(tmp_path / "repos2", port=taken)
        with pytest.raises(ProcessDied, match="unable to allocate"):
            fixed.start()
        fixed.stop()
