"""``start-build --from-repo DIR --commit REV`` packing (triggerd.upload.pack_repository)
for a commit other than HEAD: the archive holds that commit's tree, not HEAD's nor the
working tree's, and the revision parameters describe that commit."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from triggerd import upload


def git(repo: Path, *args: str, author: str = "Ada", email: str = "ada@example.com") -> str:
    identity = ["-c", f"user.name={author}", "-c", f"user.email={email}"]
    done = subprocess.run(
        ["git", "-C", str(repo), *identity, *args], check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def two_commits(repo: Path) -> tuple[str, str]:
    """A repository whose first commit (by Ada) has ``first.txt`` and ``shared.txt``, and
    whose second (by Grace) removes ``first.txt``, adds ``second.txt`` and changes
    ``shared.txt``; plus an uncommitted change. Returns the two shas."""
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "first.txt").write_text("only in the first commit\n")
    (repo / "shared.txt").write_text("shared, first version\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "First commit")
    first = git(repo, "rev-parse", "HEAD")
    (repo / "first.txt").unlink()
    (repo / "second.txt").write_text("only in the second commit\n")
    (repo / "shared.txt").write_text("shared, second version\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "Second commit", author="Grace", email="grace@example.com")
    second = git(repo, "rev-parse", "HEAD")
    (repo / "shared.txt").write_text("uncommitted\n")
    return first, second


def archived(prepared: upload.Prepared) -> dict[str, bytes]:
    with tarfile.open(prepared.path) as tar:
        files = {}
        for member in tar.getmembers():
            if member.isfile():
                extracted = tar.extractfile(member)
                assert extracted is not None
                files[member.name] = extracted.read()
        return files


@pytest.mark.parametrize("rev", ["HEAD~1", "main~1", "first"])
def test_an_earlier_commit_is_archived_with_its_revision(tmp_path: Path, rev: str) -> None:
    repo = tmp_path / "repo"
    first, second = two_commits(repo)
    wanted = first[:12] if rev == "first" else rev  # an abbreviated sha works too
    prepared = upload.prepare(from_repo=str(repo), commit=wanted)
    try:
        assert archived(prepared) == {
            "first.txt": b"only in the first commit\n",
            "shared.txt": b"shared, first version\n",
        }
        assert prepared.params == {
            "revision.commit": first,  # the full sha, whatever name was given
            "revision.message": "First commit",
            "revision.authorName": "Ada",
            "revision.authorEmail": "ada@example.com",
            "revision.committerName": "Ada",
            "revision.committerEmail": "ada@example.com",
        }
        assert second not in prepared.params.values()
    finally:
        prepared.path.unlink()


def test_without_commit_head_is_archived(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _, second = two_commits(repo)
    prepared = upload.prepare(from_repo=str(repo))
    try:
        assert archived(prepared) == {
            "second.txt": b"only in the second commit\n",
            "shared.txt": b"shared, second version\n",
        }
        assert prepared.params["revision.commit"] == second
        assert prepared.params["revision.authorName"] == "Grace"
    finally:
        prepared.path.unlink()


def test_a_commit_the_repository_does_not_have_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    two_commits(repo)
    with pytest.raises(upload.UploadError, match=r"cannot read commit HEAD~5"):
        upload.prepare(from_repo=str(repo), commit="HEAD~5")
