"""The local executor: runs a build's plan with git and buildah on this machine.

The orchestrator hands over a Pending Build; this module resolves what the plan needs from
the server settings (buildah storage, insecure registries, credential files), renders the
plan with :mod:`triggerd.planning.buildah`, and runs it through :mod:`triggerd.runner` in a
per-build workspace under ``workspace_root``, writing the build log through
:class:`~triggerd.logs.LogStore`. The workspace is deleted afterwards; the log and the
buildah storage (``buildah.root``, default ``<dataDir>/storage``, so layers are reused by the
next build) stay.

It never logs or copies a secret's value anywhere but a 0600 file inside the workspace, and
never leaves a process of a build running after :meth:`LocalExecutor.run` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triggerd import runner
from triggerd.executors.base import Failed, Outcome, Reporter
from triggerd.images import references
from triggerd.logs import LogStore, snippet
from triggerd.model.builds import Build, Reason
from triggerd.planning import buildah
from triggerd.settings import SecretSettings, Settings

log = logging.getLogger(__name__)

SECRETS_DIR = "secrets"
PID_FILE = ".triggerd-pgid"
DOCKER_CONFIG_KEY = ".dockerconfigjson"
LEGACY_DOCKER_CONFIG_KEY = ".dockercfg"
SSH_KEY = "ssh-privatekey"


class _Refused(Exception):
    """The build cannot run as configured; it fails with ``reason`` before anything starts."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class _Active:
    run: runner.PlanRun | None = None
    cancel_requested: bool = False


class LocalExecutor:
    """Runs builds as host processes; implements :class:`triggerd.executors.base.Executor`."""

    def __init__(self, settings: Settings, logs: LogStore, workspace_root: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.workspace_root = workspace_root.resolve()
        data_dir = settings.data_dir.resolve()
        self.storage_root = Path(settings.buildah.root or data_dir / "storage").resolve()
        self.storage_runroot = Path(settings.buildah.runroot or data_dir / "run").resolve()
        self._active: dict[tuple[str, str], _Active] = {}
        self._sweep_needed = False
        self._sweep_lock = asyncio.Lock()

    # Executor protocol -----------------------------------------------------------------
    async def run(self, build: Build, reporter: Reporter) -> Outcome:
        key = (build.namespace, build.name)
        if key in self._active:
            raise RuntimeError(f"build {build.namespace}/{build.name} is already running")
        active = self._active[key] = _Active()
        workspace = self.workspace(build.namespace, build.name)
        writer = self.logs.open_writer(build.namespace, build.name)
        result: runner.RunResult | None = None
        try:
            # A sweep must not remove the containers of a build that is starting.
            async with self._sweep_lock:
                await asyncio.to_thread(_fresh_directory, workspace)
            try:
                ctx = self.context(build, workspace)
                plan = buildah.render(build, ctx)
            except (_Refused, buildah.Unplannable) as e:
                writer.line(f"--> Build failed ({e.reason.value}): {e}")
                return Failed(reason=e.reason, message=str(e), log_snippet=str(e))
            run = active.run = runner.PlanRun(
                plan,
                workspace,
                emit=writer.write,
                listener=reporter,
                on_spawn=lambda pid: _record_group(workspace, pid),
            )
            if active.cancel_requested:
                await run.stop(runner.StopCause.CANCELLED)
            result = await run.run()
            return runner.to_outcome(plan, result)
        finally:
            del self._active[key]
            writer.close()
            await asyncio.to_thread(shutil.rmtree, workspace, True)
            if result is None or result.stopped is not None:
                # A killed buildah leaves its working container behind in the storage.
                self._sweep_needed = True
            await self._sweep_if_idle()

    async def cancel(self, namespace: str, name: str) -> bool:
        active = self._active.get((namespace, name))
        if active is None:
            return False
        active.cancel_requested = True
        if active.run is not None:
            await active.run.stop(runner.StopCause.CANCELLED)
        return True

    async def recover(self, build: Build) -> Outcome | None:
        """Host processes do not survive the server: the build ends in Error. Anything of
        it still running (the server was killed, its children were not) is killed now."""
        workspace = self.workspace(build.namespace, build.name)
        _kill_recorded_group(workspace)
        await asyncio.to_thread(shutil.rmtree, workspace, True)
        self._sweep_needed = True
        with self.logs.open_writer(build.namespace, build.name) as writer:
            writer.line(f"--> {Reason.SERVER_RESTARTED.message}")
        return Failed(
            reason=Reason.SERVER_RESTARTED,
            message=Reason.SERVER_RESTARTED.message,
            log_snippet=snippet(self.logs.read(build.namespace, build.name)),
        )

    # Helpers ---------------------------------------------------------------------------
    def workspace(self, namespace: str, name: str) -> Path:
        # The log store validates the same names; reuse its check for the path parts.
        self.logs.path(namespace, name)
        return self.workspace_root / namespace / name

    def running(self) -> list[tuple[str, str]]:
        return list(self._active)

    def context(self, build: Build, workspace: Path) -> buildah.PlanContext:
        """Resolve settings and secrets into what the plan needs; credential data is written
        to 0600 files under ``<workspace>/secrets`` and referred to by path only."""
        settings = self.settings
        insecure = frozenset(h for h, r in settings.registries.items() if r.insecure)
        return buildah.PlanContext(
            storage_driver=settings.buildah.storage_driver,
            root=str(self.storage_root),
            runroot=str(self.storage_runroot),
            isolation=settings.buildah.isolation,
            insecure_registries=insecure,
            push_auth_file=self._push_auth(build, workspace),
            pull_auth_file=self._pull_auth(build, workspace),
            git_ssh_key_file=self._ssh_key(build, workspace),
            push_retries=settings.buildah.push_retries,
        )

    def _secret(self, name: str, reason: Reason, what: str) -> SecretSettings:
        secret = self.settings.secrets.get(name)
        if secret is None:
            raise _Refused(reason, f'{what} "{name}" is not defined in the server settings')
        return secret

    def _push_auth(self, build: Build, workspace: Path) -> str | None:
        output = build.spec.output
        reason = Reason.PUSH_IMAGE_TO_REGISTRY_FAILED
        if output.push_secret:
            secret = self._secret(output.push_secret, reason, "push secret")
            return _docker_config(secret, output.push_secret, workspace, "push-auth.json", reason)
        if output.to is None:
            return None
        try:
            host = references.parse(output.to.name).registry
        except ValueError:
            return None  # render() reports the bad reference
        return self.settings.registry(host).auth_file

    def _pull_auth(self, build: Build, workspace: Path) -> str | None:
        docker = build.spec.strategy.docker
        reason = Reason.PULL_BUILDER_IMAGE_FAILED
        if docker is not None and docker.pull_secret:
            secret = self._secret(docker.pull_secret, reason, "pull secret")
            return _docker_config(secret, docker.pull_secret, workspace, "pull-auth.json", reason)
        # Without a pull secret, every registry's configured credentials apply: a Dockerfile
        # may pull from any of them.
        files = [r.auth_file for r in self.settings.registries.values() if r.auth_file]
        if not files:
            return None
        if len(files) == 1:
            return files[0]
        merged: dict[str, Any] = {}
        for path in files:
            try:
                merged.update(json.loads(Path(path).read_text(encoding="utf-8")).get("auths", {}))
            except (OSError, ValueError, AttributeError) as e:
                raise _Refused(reason, f"cannot read registry auth file {path}: {e}") from e
        return _write_secret(workspace, "pull-auth.json", json.dumps({"auths": merged}))

    def _ssh_key(self, build: Build, workspace: Path) -> str | None:
        name = build.spec.source.source_secret
        if not name or build.spec.source.git is None:
            return None
        reason = Reason.FETCH_SOURCE_FAILED
        secret = self._secret(name, reason, "source secret")
        if secret.path:
            return str(Path(secret.path).resolve())
        if SSH_KEY in secret.data:
            key = secret.data[SSH_KEY]
            relative = _write_secret(
                workspace, "ssh-key", key if key.endswith("\n") else key + "\n"
            )
            return str(workspace / relative)
        raise _Refused(
            reason,
            f'source secret "{name}" needs a path or data.{SSH_KEY}: only SSH keys are supported',
        )

    async def _sweep_if_idle(self) -> None:
        """Remove working containers killed builds left, once no build is running (the
        storage is this executor's alone, so everything in it is ours to clean)."""
        if not self._sweep_needed or self._active:
            return
        async with self._sweep_lock:
            if not self._sweep_needed or self._active:
                return
            self._sweep_needed = False
            argv = [str(a) for a in buildah.buildah_globals(self._storage_context())]
            proc = await asyncio.create_subprocess_exec(
                *argv, "rm", "--all",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await proc.communicate()
            if proc.returncode != 0:
                log.warning("buildah rm --all failed: %s", err.decode(errors="replace").strip())

    def _storage_context(self) -> buildah.PlanContext:
        return buildah.PlanContext(
            storage_driver=self.settings.buildah.storage_driver,
            root=str(self.storage_root),
            runroot=str(self.storage_runroot),
        )


def _docker_config(
    secret: SecretSettings, name: str, workspace: Path, filename: str, reason: Reason
) -> str:
    if secret.path:
        return secret.path
    if DOCKER_CONFIG_KEY in secret.data:
        return _write_secret(workspace, filename, secret.data[DOCKER_CONFIG_KEY])
    if LEGACY_DOCKER_CONFIG_KEY in secret.data:
        try:
            auths = json.loads(secret.data[LEGACY_DOCKER_CONFIG_KEY])
        except ValueError as e:
            raise _Refused(
                reason, f'secret "{name}": {LEGACY_DOCKER_CONFIG_KEY} is not JSON'
            ) from e
        return _write_secret(workspace, filename, json.dumps({"auths": auths}))
    raise _Refused(
        reason,
        f'secret "{name}" needs a path or data.{DOCKER_CONFIG_KEY} to be used as registry auth',
    )


def _write_secret(workspace: Path, filename: str, content: str) -> str:
    """Write ``content`` to a 0600 file outside the build context; return its plan path."""
    directory = workspace / SECRETS_DIR
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / filename
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(content)
    return f"{SECRETS_DIR}/{filename}"


def _fresh_directory(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)


def _record_group(workspace: Path, pid: int) -> None:
    """Remember the running process group so a restarted server can kill what is left."""
    with contextlib.suppress(OSError):
        (workspace / PID_FILE).write_text(f"{pid} {_start_time(pid)}\n")


def _kill_recorded_group(workspace: Path) -> None:
    try:
        pid_text, start = (workspace / PID_FILE).read_text().split()
        pgid = int(pid_text)
    except (OSError, ValueError):
        return
    current = _start_time(pgid)
    # A live process with that pid but another start time is a recycled pid: the group we
    # recorded is gone (Linux does not reuse a pid while its process group exists).
    if current and current != start:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _start_time(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # Field 22 (starttime), counted after the parenthesised command name.
    return stat.rpartition(")")[2].split()[19]
