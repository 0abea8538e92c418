"""Local git repositories for tests, served over ``file://`` and ``git://`` on 127.0.0.1.

``GitRepo`` is a bare repository that tests fill with commits built from dicts of path to
content (no working tree, so concurrent tests cannot trip over checked-out files). Author,
committer and dates are fixed and advance by one minute per commit, so the same sequence of
operations gives the same commit ids on every run. Served repositories allow fetching any
object by id, so ``git fetch --depth=1 origin <sha>`` works over both transports the way a
build fetches an exact revision. ``GitDaemon`` runs ``git daemon`` for a base directory and
``GitRepoFactory`` creates uniquely named repositories inside it.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from tests.support.ports import LOOPBACK, free_port
from tests.support.processes import ManagedProcess, ProcessDied, wait_for

# 2026-01-01T00:00:00Z; commit n of a repository is dated this plus n minutes.
GIT_EPOCH = 1_767_225_600
AUTHOR_NAME = "Triggerd Tests"
AUTHOR_EMAIL = "tests@triggerd.invalid"
NULL_SHA = "0" * 40


class GitError(RuntimeError):
    """A git command failed; the message carries its stderr."""


@dataclass(frozen=True)
class Executable:
    """File content committed with mode 100755."""

    content: str | bytes


@dataclass(frozen=True)
class Symlink:
    """A symbolic link (mode 120000) pointing at ``target``."""

    target: str


FileSpec = str | bytes | Executable | Symlink | None
"""What a path maps to in ``GitRepo.commit``: content, an executable, a symlink, or None to
delete the path."""


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for git commands: isolated from the machine's and user's git config
    (a global ``commit.gpgsign`` or ``init.defaultBranch`` must not change test results)."""
    env = dict(os.environ)
    env.update(
        {
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_AUTHOR_NAME": AUTHOR_NAME,
            "GIT_AUTHOR_EMAIL": AUTHOR_EMAIL,
            "GIT_COMMITTER_NAME": AUTHOR_NAME,
            "GIT_COMMITTER_EMAIL": AUTHOR_EMAIL,
            "LC_ALL": "C",
        }
    )
    if extra:
        env.update(extra)
    return env


def git(
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
) -> str:
    """Run ``git ARGS`` and return its stdout stripped; raise ``GitError`` on failure."""
    proc = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=git_env(env),
        input=input,
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise GitError(
            f"git {' '.join(args)} failed ({proc.returncode}): "
            f"{proc.stderr.decode(errors='replace').strip()}"
        )
    return proc.stdout.decode(errors="replace").strip()


def shallow_fetch(url: str, sha: str, dest: Path) -> Path:
    """Check out exactly ``sha`` from ``url`` into ``dest`` the way a build does it:
    ``git init`` + ``git fetch --depth=1 origin <sha>`` + ``git checkout FETCH_HEAD``."""
    dest.mkdir(parents=True, exist_ok=True)
    git("init", "-q", str(dest))
    git("remote", "add", "origin", url, cwd=dest)
    git("fetch", "-q", "--depth=1", "origin", sha, cwd=dest)
    git("checkout", "-q", "--detach", "FETCH_HEAD", cwd=dest)
    return dest


class GitRepo:
    """A bare repository on disk, plus the URLs it is reachable at."""

    def __init__(self, path: Path, *, git_base_url: str | None = None) -> None:
        self.path = path
        self._git_base_url = git_base_url
        self._lock = threading.Lock()
        self._clock = int(git("rev-list", "--all", "--count", cwd=path) or "0")

    @classmethod
    def create(
        cls,
        path: Path,
        *,
        default_branch: str = "main",
        git_base_url: str | None = None,
    ) -> GitRepo:
        """``git init --bare`` at ``path``, configured so any commit can be fetched by id."""
        git("init", "-q", "--bare", f"--initial-branch={default_branch}", str(path))
        for key, value in (
            # A build fetches an exact commit (`git fetch --depth=1 origin <sha>`), which the
            # server refuses for a sha that is not a ref tip unless these are on.
            ("uploadpack.allowReachableSHA1InWant", "true"),
            ("uploadpack.allowAnySHA1InWant", "true"),
            ("uploadpack.allowTipSHA1InWant", "true"),
            # Partial clones (--filter=blob:none) should work too.
            ("uploadpack.allowFilter", "true"),
        ):
            git("config", key, value, cwd=path)
        return cls(path, git_base_url=git_base_url)

    @property
    def name(self) -> str:
        """Directory name, e.g. ``app.git``."""
        return self.path.name

    @property
    def file_url(self) -> str:
        return self.path.resolve().as_uri()

    @property
    def git_url(self) -> str:
        """``git://127.0.0.1:PORT/NAME.git`` (only for repositories served by a daemon)."""
        if self._git_base_url is None:
            raise RuntimeError(f"{self.path} is not served by a git daemon")
        return f"{self._git_base_url}/{self.name}"

    def _next_date(self) -> str:
        self._clock += 1
        return f"@{GIT_EPOCH + 60 * self._clock} +0000"

    def _run(
        self, *args: str, env: Mapping[str, str] | None = None, input: bytes | None = None
    ) -> str:
        return git(*args, cwd=self.path, env=env, input=input)

    def rev_parse(self, ref: str) -> str:
        """The commit id ``ref`` names (tags are peeled to their commit)."""
        return self._run("rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}")

    def exists(self, ref: str) -> bool:
        try:
            self.rev_parse(ref)
        except GitError:
            return False
        return True

    @property
    def head_branch(self) -> str:
        """The branch HEAD points at (what a clone checks out by default)."""
        return self._run("symbolic-ref", "--short", "HEAD")

    def set_head(self, branch: str) -> None:
        self._run("symbolic-ref", "HEAD", f"refs/heads/{branch}")

    def commit(
        self,
        files: Mapping[str, FileSpec],
        *,
        message: str = "change",
        branch: str | None = None,
        replace: bool = False,
        parents: Sequence[str] | None = None,
    ) -> str:
        """Commit ``files`` on ``branch`` (default: HEAD's branch) and return the commit id.

        The new tree is the branch's current tree with ``files`` applied (None deletes a
        path); with ``replace=True`` it is exactly ``files``. ``parents`` overrides the
        parent list (default: the branch tip, if the branch exists), e.g. for merges.
        """
        branch = branch or self.head_branch
        ref = f"refs/heads/{branch}"
        with self._lock, tempfile.TemporaryDirectory(prefix="gitcommit-") as tmp:
            old = self.rev_parse(ref) if self.exists(ref) else ""  # "": branch is new
            # A private index file lets us build the tree without a working directory.
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            if old and not replace:
                self._run("read-tree", old, env=env)
            lines = []
            blob_files: list[tuple[str, str, Path]] = []
            for i, (path, spec) in enumerate(sorted(files.items())):
                if spec is None:
                    lines.append(f"0 {NULL_SHA}\t{path}")
                    continue
                if isinstance(spec, Symlink):
                    mode, data = "120000", spec.target.encode()
                elif isinstance(spec, Executable):
                    mode = "100755"
                    data = spec.content.encode() if isinstance(spec.content, str) else spec.content
                else:
                    mode, data = "100644", spec.encode() if isinstance(spec, str) else spec
                blob_path = Path(tmp) / f"blob{i}"
                blob_path.write_bytes(data)
                blob_files.append((path, mode, blob_path))
            if blob_files:
                # One hash-object call for all blobs instead of one process per file.
                shas = self._run(
                    "hash-object",
                    "-w",
                    "--no-filters",
                    "--stdin-paths",
                    input="".join(f"{p}\n" for _, _, p in blob_files).encode(),
                ).split()
                lines.extend(
                    f"{mode} {sha}\t{path}"
                    for (path, mode, _), sha in zip(blob_files, shas, strict=True)
                )
            if lines:
                self._run(
                    "update-index",
                    "--index-info",
                    env=env,
                    input="".join(f"{ln}\n" for ln in lines).encode(),
                )
            tree = self._run("write-tree", env=env)
            parent_ids = list(parents) if parents is not None else ([old] if old else [])
            date = self._next_date()
            parent_args = [arg for p in parent_ids for arg in ("-p", p)]
            sha = self._run(
                "commit-tree",
                tree,
                *parent_args,
                "-m",
                message,
                env={"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date},
            )
            # Compare-and-swap against the tip we read, so a racing update fails loudly.
            self._run("update-ref", "-m", message, ref, sha, old or NULL_SHA)
        return sha

    def branch(self, name: str, ref: str = "HEAD") -> str:
        """Create or move branch ``name`` to ``ref``; return its commit id."""
        sha = self.rev_parse(ref)
        self._run("update-ref", f"refs/heads/{name}", sha)
        return sha

    def delete_branch(self, name: str) -> None:
        self._run("update-ref", "-d", f"refs/heads/{name}")

    def tag(self, name: str, ref: str = "HEAD", *, message: str | None = None) -> str:
        """Create tag ``name`` at ``ref`` (annotated when ``message`` is given); return the
        commit id it points to."""
        sha = self.rev_parse(ref)
        if message is None:
            self._run("tag", name, sha)
        else:
            date = self._next_date()
            self._run("tag", "-a", "-m", message, name, sha, env={"GIT_COMMITTER_DATE": date})
        return sha

    def read_file(self, path: str, ref: str = "HEAD") -> bytes:
        return subprocess.run(
            ["git", "cat-file", "blob", f"{ref}:{path}"],
            cwd=self.path,
            env=git_env(),
            capture_output=True,
            check=True,
        ).stdout

    def list_files(self, ref: str = "HEAD") -> list[str]:
        out = self._run("ls-tree", "-r", "--name-only", ref)
        return out.splitlines() if out else []

    def log(self, ref: str = "HEAD") -> list[str]:
        """Commit ids reachable from ``ref``, newest first."""
        out = self._run("rev-list", ref)
        return out.splitlines() if out else []

    def __repr__(self) -> str:
        return f"<GitRepo {self.path}>"


def _daemon_ready(process: ManagedProcess) -> bool:
    return "Ready to rumble" in process.current_log()


class GitDaemon:
    """``git daemon`` serving every repository under ``base_dir`` on 127.0.0.1."""

    def __init__(
        self, base_dir: Path, *, log_path: Path | None = None, port: int | None = None
    ) -> None:
        self.base_dir = base_dir
        self.log_path = log_path or base_dir.parent / f"{base_dir.name}-git-daemon.log"
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self._process: ManagedProcess | None = None

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"git://{self.host}"

    def url_for(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def start(self, timeout: float = 15.0) -> Self:
        if shutil.which("git") is None:
            raise RuntimeError("git not found: run scripts/install-system-deps.sh as root")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(5):
            self._process = ManagedProcess(
                [
                    "git",
                    "daemon",
                    "--reuseaddr",
                    "--verbose",
                    "--informative-errors",
                    f"--base-path={self.base_dir}",
                    "--export-all",
                    "--enable=upload-pack",
                    f"--listen={LOOPBACK}",
                    f"--port={self.port}",
                    # Whitelist: serve nothing outside base_dir even if a path tries to escape.
                    str(self.base_dir),
                ],
                log_path=self.log_path,
                env=git_env(),
                name=f"git-daemon:{self.port}",
            ).start()
            process = self._process
            try:
                # git daemon logs this once its listen socket is up; a TCP probe alone could
                # be answered by another program that took the port first.
                wait_for(
                    functools.partial(_daemon_ready, process),
                    timeout=timeout,
                    what=f"git daemon listening on {self.host}",
                    process=process,
                )
                return self
            except ProcessDied:
                lost_port = "unable to allocate any listen sockets" in process.current_log()
                if self._fixed_port or not lost_port or attempt == 4:
                    raise
                self.port = free_port()
            except BaseException:
                self._process.stop()
                raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()

    def restart(self) -> Self:
        """Stop and start again on the same port."""
        self.stop()
        self._fixed_port = True
        return self.start()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    @property
    def process(self) -> ManagedProcess | None:
        return self._process

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GitRepoFactory:
    """Creates uniquely named bare repositories under one base directory (the daemon's)."""

    def __init__(self, base_dir: Path, daemon: GitDaemon | None = None) -> None:
        self.base_dir = base_dir
        self.daemon = daemon
        self._lock = threading.Lock()
        self.created: list[GitRepo] = []

    def __call__(
        self,
        name: str = "app",
        files: Mapping[str, FileSpec] | None = None,
        *,
        branch: str = "main",
        message: str = "initial commit",
    ) -> GitRepo:
        """A new repository ``NAME.git`` (``NAME-2.git``... if taken), with one commit of
        ``files`` on ``branch`` when ``files`` is given."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            candidate, n = name, 1
            while (self.base_dir / f"{candidate}.git").exists():
                n += 1
                candidate = f"{name}-{n}"
            repo = GitRepo.create(
                self.base_dir / f"{candidate}.git",
                default_branch=branch,
                git_base_url=self.daemon.base_url if self.daemon is not None else None,
            )
        if files is not None:
            repo.commit(files, message=message, branch=branch)
        self.created.append(repo)
        return repo
