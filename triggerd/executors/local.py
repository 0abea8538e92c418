"""The local executor: runs a build's plan with git and buildah on this machine.

The orchestrator hands over a Pending Build; this module resolves what the plan needs from
the server settings (buildah storage, insecure registries, credential files; which Secrets
and ConfigMaps a build reads, and for what, is :func:`triggerd.planning.needs.needs`'s
decision, shared with the Kubernetes executor), renders the
plan with :mod:`triggerd.planning.buildah`, and runs it through :mod:`triggerd.runner` in a
per-build workspace under ``workspace_root``, writing the build log through
:class:`~triggerd.logs.LogStore`. The workspace is deleted afterwards; the log and the
buildah storage (``buildah.root``, default ``<dataDir>/storage``, so layers are reused by the
next build) stay, kept within the layer cache settings by last use
(:mod:`triggerd.executors.layer_cache`).

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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triggerd import runner
from triggerd.executors import layer_cache
from triggerd.executors.base import Failed, Outcome, Reporter
from triggerd.images import references
from triggerd.logs import LogStore, snippet
from triggerd.model.builds import Build, Reason
from triggerd.planning import archives, buildah
from triggerd.planning.needs import Needs, needs
from triggerd.planning.plan import OutputName
from triggerd.settings import SecretSettings, Settings

log = logging.getLogger(__name__)

SECRETS_DIR = "secrets"
PID_FILE = ".triggerd-pgid"
DOCKER_CONFIG_KEY = ".dockerconfigjson"
LEGACY_DOCKER_CONFIG_KEY = ".dockercfg"
SSH_KEY = "ssh-privatekey"
#: Keys of a kubernetes.io/basic-auth secret.
BASIC_USERNAME = "username"
BASIC_PASSWORD = "password"  # noqa: S105 (the key name, not a password)


class _Refused(Exception):
    """The build cannot run as configured; it fails with ``reason`` before anything starts."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


#: Under the data dir: one file per image, touched when a build uses it (layer_cache).
LAYER_USES_DIR = "layer-cache-uses"


@dataclass(slots=True)
class _Active:
    run: runner.PlanRun | None = None
    cancel_requested: bool = False
    started: float = 0.0
    #: image ids the build's buildah output named so far (cache hits, committed steps)
    seen: layer_cache.OutputTap | None = None


class LocalExecutor:
    """Runs builds as host processes; implements :class:`triggerd.executors.base.Executor`."""

    def __init__(
        self,
        settings: Settings,
        logs: LogStore,
        workspace_root: Path,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        #: epoch seconds, for the layer cache's last-use times (tests move it)
        self.clock = clock
        self.logs = logs
        self.workspace_root = workspace_root.resolve()
        data_dir = settings.data_dir.resolve()
        self.storage_root = Path(settings.buildah.root or data_dir / "storage").resolve()
        self.storage_runroot = Path(settings.buildah.runroot or data_dir / "run").resolve()
        self._active: dict[tuple[str, str], _Active] = {}
        self._sweep_needed = False
        self._sweep_lock = asyncio.Lock()
        self.uses = layer_cache.UseRecords(data_dir / LAYER_USES_DIR)

    # Executor protocol -----------------------------------------------------------------
    async def run(self, build: Build, reporter: Reporter) -> Outcome:
        key = (build.namespace, build.name)
        if key in self._active:
            raise RuntimeError(f"build {build.namespace}/{build.name} is already running")
        tap = layer_cache.OutputTap()
        active = self._active[key] = _Active(started=self.clock(), seen=tap)
        workspace = self.workspace(build.namespace, build.name)
        writer = self.logs.open_writer(build.namespace, build.name)
        result: runner.RunResult | None = None

        def emit(data: bytes) -> None:
            writer.write(data)
            tap.feed(data)

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
                emit=emit,
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
            built = result.outputs.get(OutputName.IMAGE_ID, "") if result else ""
            await self._housekeep(tap.ids | ({built} if built else set()))

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
        reads = needs(build)
        insecure = frozenset(h for h, r in settings.registries.items() if r.insecure)
        push_auth = self._push_auth(build, reads, workspace)
        cache = buildah.cache_repository(build, settings.layer_cache_registry)
        return buildah.PlanContext(
            storage_driver=settings.buildah.storage_driver,
            root=str(self.storage_root),
            runroot=str(self.storage_runroot),
            isolation=settings.buildah.isolation,
            insecure_registries=insecure,
            image_stream_registry=settings.image_stream_registry,
            push_auth_file=push_auth,
            pull_auth_file=self._pull_auth(reads, workspace),
            image_pull_auth_files=self._image_pull_auth(reads, workspace),
            git_ssh_key_file=self._ssh_key(reads, workspace),
            git_credential_helper=self._credential_helper(reads, workspace),
            push_retries=settings.buildah.push_retries,
            binary_input=self._binary_input(build),
            binary_as_file=build.meta.annotations.get(archives.AS_FILE_ANNOTATION),
            binary_limits=archives.limits_for(settings),
            secret_dirs=self._secret_dirs(reads, workspace),
            config_map_dirs=self._config_map_dirs(reads, workspace),
            cache_repository=cache,
            cache_auth_file=self._cache_auth(cache, push_auth) if cache else None,
        )

    def _cache_auth(self, cache: str, push_auth: str | None) -> str | None:
        """Credentials to push the layer cache with: the cache registry's own (registries
        setting), else the build's push credentials (the cache lives where builds push)."""
        configured = self.settings.registry(references.parse(cache).registry).auth_file
        return configured or push_auth

    def _config_map_dirs(self, reads: Needs, workspace: Path) -> dict[str, str]:
        """Each config map the build reads as a directory of one file per key. Config maps
        come from the ``configMaps`` setting (name → key → value)."""
        available = self.settings.config_maps
        dirs: dict[str, str] = {}
        for name in reads.config_maps:
            data = available.get(name)
            if data is None:
                raise _Refused(
                    Reason.FETCH_SOURCE_FAILED,
                    f'config map "{name}" is not defined in the server settings',
                )
            for key, value in data.items():
                if "/" in key or key in ("", ".", ".."):
                    raise _Refused(
                        Reason.FETCH_SOURCE_FAILED, f'config map "{name}": bad key {key!r}'
                    )
                _write_secret(workspace, f"configmaps/{name}/{key}", value, shared=True)
            dirs[name] = f"{SECRETS_DIR}/configmaps/{name}"
        return dirs

    def _secret_dirs(self, reads: Needs, workspace: Path) -> dict[str, str]:
        """Each secret the build mounts, as a directory with one 0600 file per key (a
        ``path`` secret: that file under its own name), outside the build context."""
        dirs: dict[str, str] = {}
        for name in reads.secrets:
            if "/" in name or name.startswith("."):
                raise _Refused(Reason.GENERIC_BUILD_FAILED, f"bad secret name {name!r}")
            secret = self._secret(name, Reason.GENERIC_BUILD_FAILED, "secret")
            files = dict(secret.data)
            if secret.path:
                try:
                    files[Path(secret.path).name] = Path(secret.path).read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as e:
                    raise _Refused(
                        Reason.GENERIC_BUILD_FAILED, f'secret "{name}": cannot read its file'
                    ) from e
            if not files:
                raise _Refused(Reason.GENERIC_BUILD_FAILED, f'secret "{name}" has no data')
            for key, value in files.items():
                if "/" in key or key in ("", ".", ".."):
                    raise _Refused(Reason.GENERIC_BUILD_FAILED, f'secret "{name}": bad key {key!r}')
                _write_secret(workspace, f"mounts/{name}/{key}", value, shared=True)
            dirs[name] = f"{SECRETS_DIR}/mounts/{name}"
        return dirs

    def _binary_input(self, build: Build) -> str | None:
        digest = build.meta.annotations.get(archives.INPUT_ANNOTATION)
        if not digest or build.spec.source.binary is None:
            return None
        reason = Reason.FETCH_SOURCE_FAILED
        try:
            path = archives.upload_path(self.settings.data_dir.resolve(), digest)
        except ValueError as e:
            raise _Refused(reason, f"annotation {archives.INPUT_ANNOTATION}: {e}") from e
        if not path.is_file():
            raise _Refused(reason, f"the uploaded input {digest} is no longer stored")
        return str(path)

    def _secret(self, name: str, reason: Reason, what: str) -> SecretSettings:
        secret = self.settings.secrets.get(name)
        if secret is None:
            raise _Refused(reason, f'{what} "{name}" is not defined in the server settings')
        return secret

    def _push_auth(self, build: Build, reads: Needs, workspace: Path) -> str | None:
        output = build.spec.output
        reason = Reason.PUSH_IMAGE_TO_REGISTRY_FAILED
        if reads.push_secret:
            secret = self._secret(reads.push_secret, reason, "push secret")
            return _docker_config(secret, reads.push_secret, workspace, "push-auth.json", reason)
        if output.to is None:
            return None
        try:
            host = references.parse(output.to.name).registry
        except ValueError:
            return None  # render() reports the bad reference
        return self.settings.registry(host).auth_file

    def _pull_auth(self, reads: Needs, workspace: Path) -> str | None:
        pull_secret = reads.pull_secret
        reason = Reason.PULL_BUILDER_IMAGE_FAILED
        if pull_secret:
            secret = self._secret(pull_secret, reason, "pull secret")
            return _docker_config(secret, pull_secret, workspace, "pull-auth.json", reason)
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

    def _image_pull_auth(self, reads: Needs, workspace: Path) -> dict[str, str]:
        """An auth file per pull secret of source.images, from the named secrets."""
        reason = Reason.PULL_BUILDER_IMAGE_FAILED
        files: dict[str, str] = {}
        for index, name in enumerate(reads.image_pull_secrets):
            secret = self._secret(name, reason, "pull secret")
            files[name] = _docker_config(
                secret, name, workspace, f"image-pull-auth-{index}.json", reason
            )
        return files

    def _ssh_key(self, reads: Needs, workspace: Path) -> str | None:
        name = reads.fetch_secret
        if name is None:
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
        if BASIC_USERNAME in secret.data or BASIC_PASSWORD in secret.data:
            return None  # basic auth: see _credential_helper
        raise _Refused(
            reason,
            f'source secret "{name}" needs a path, data.{SSH_KEY}, or data.{BASIC_USERNAME} '
            f"and data.{BASIC_PASSWORD}",
        )

    def _credential_helper(self, reads: Needs, workspace: Path) -> str | None:
        """For a basic-auth source secret: a git credential helper that reads the username
        and password from 0600 files. The helper holds only their paths, so neither the
        plan, the argv, the environment nor the log ever carries the values."""
        name = reads.fetch_secret
        if name is None:
            return None
        secret = self._secret(name, Reason.FETCH_SOURCE_FAILED, "source secret")
        if secret.path or SSH_KEY in secret.data:
            return None
        if BASIC_USERNAME not in secret.data and BASIC_PASSWORD not in secret.data:
            return None
        user = workspace / _write_secret(
            workspace, "git-username", secret.data.get(BASIC_USERNAME, "")
        )
        password = workspace / _write_secret(
            workspace, "git-password", secret.data.get(BASIC_PASSWORD, "")
        )
        helper = workspace / _write_secret(
            workspace,
            "git-credential-helper",
            "#!/bin/sh\n"
            "# git credential helper written by triggerd for one build\n"
            'test "$1" = get || exit 0\n'
            f"printf 'username=%s\\npassword=%s\\n' \"$(cat '{user}')\" \"$(cat '{password}')\"\n",
        )
        helper.chmod(0o700)
        return str(helper)

    async def _housekeep(self, used: set[str]) -> None:
        """Layer cache bookkeeping after a build. It runs while the build's outcome is being
        returned: a failure here (a full disk, a storage buildah cannot read) is logged and
        must not turn a pushed image into a build in Error."""
        try:
            await self._record_use(used)
            await self._sweep_if_idle()
            await self.prune_layer_cache()
        except Exception:
            log.exception("layer cache housekeeping after a build failed")

    async def _record_use(self, ids: set[str]) -> None:
        """Touch the last-use record of every image on the layer chains the build used."""
        if not ids or not self._pruning:
            return
        storage = await asyncio.to_thread(self._read_storage)
        if storage is None:
            return
        used = storage.chain(storage.resolve(ids))
        await asyncio.to_thread(self.uses.touch, used, self.clock())

    @property
    def _pruning(self) -> bool:
        settings = self.settings
        return (
            settings.layer_cache_max_age_seconds is not None
            or settings.layer_cache_max_bytes is not None
        )

    def _read_storage(self) -> layer_cache.Storage | None:
        return layer_cache.read_storage(self.storage_root, self.settings.buildah.storage_driver)

    async def prune_layer_cache(self) -> list[str]:
        """Keep the host layer cache within the ``layerCacheMaxAge``/``layerCacheMaxBytes``
        settings (``layer_cache_max_age_seconds``/``layer_cache_max_bytes``): images no
        build used for longer than the age go first, then the least recently used ones
        until the storage is under the size. Images running builds use are left alone:
        the ones their output named so far (and their layer chains), and the ones made
        since the oldest of them started; an image a build's container is made from cannot
        be removed anyway. Returns the removed image ids."""
        max_age = self.settings.layer_cache_max_age_seconds
        max_bytes = self.settings.layer_cache_max_bytes
        if max_age is None and max_bytes is None:
            return []
        removed: list[str] = []
        async with self._sweep_lock:
            storage = await asyncio.to_thread(self._read_storage)
            if storage is None:
                log.warning("layer cache: cannot read the metadata of %s", self.storage_root)
                return removed
            protected = self._in_use(storage)
            last_use = await asyncio.to_thread(self.uses.last_use, storage)
            # Least recently used first.
            candidates = sorted(
                (moment, image_id)
                for image_id, moment in last_use.items()
                if image_id not in protected
            )
            now = self.clock()
            if max_age is not None:
                for moment, image_id in candidates:
                    if now - moment > float(max_age) and await self._remove_image(image_id):
                        removed.append(image_id)
            if max_bytes is not None:
                driver = self.settings.buildah.storage_driver
                usage = await asyncio.to_thread(layer_cache.Usage, self.storage_root, driver)
                total = await asyncio.to_thread(usage.refresh)
                for _, image_id in candidates:
                    if total <= int(max_bytes):
                        break
                    if image_id in removed or not await self._remove_image(image_id):
                        continue
                    removed.append(image_id)
                    if usage.per_layer:
                        total = await asyncio.to_thread(usage.refresh)
                    else:  # a driver without a directory per layer: measure again
                        usage = await asyncio.to_thread(
                            layer_cache.Usage, self.storage_root, driver
                        )
                        total = usage.total
            if removed:
                await asyncio.to_thread(self.uses.forget_except, set(storage.images) - set(removed))
        if removed:
            log.info("layer cache: removed %d images", len(removed))
        return removed

    def _in_use(self, storage: layer_cache.Storage) -> set[str]:
        """Images running builds use (see prune_layer_cache)."""
        if not self._active:
            return set()
        seen: set[str] = set()
        for active in self._active.values():
            if active.seen is not None:
                seen |= active.seen.ids
        # Made since the oldest running build started (storage times are the real clock).
        since = time.time() - max(self.clock() - a.started for a in self._active.values())
        recent = {i for i, image in storage.images.items() if image.arrived >= since}
        return storage.chain(storage.resolve(seen) | recent)

    async def _remove_image(self, image_id: str) -> bool:
        argv = [str(a) for a in buildah.buildah_globals(self._storage_context())]
        proc = await asyncio.create_subprocess_exec(
            *argv, "rmi", image_id,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        # An image other images are built on cannot go first; it is tried again later.
        return await proc.wait() == 0

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


def _write_secret(workspace: Path, filename: str, content: str, *, shared: bool = False) -> str:
    """Write ``content`` to a 0600 file outside the build context; return its plan path.

    ``shared`` files (mounted into a build, where the build's own non-root user must read
    them) are 0644 in a 0755 directory; the 0700 ``secrets`` directory above them still
    keeps other users of the host out.
    """
    path = workspace / SECRETS_DIR / filename
    (workspace / SECRETS_DIR).mkdir(mode=0o700, exist_ok=True)
    path.parent.mkdir(mode=0o755 if shared else 0o700, parents=True, exist_ok=True)
    mode = 0o644 if shared else 0o600
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(content)
        os.fchmod(f.fileno(), mode)
    if shared:
        path.parent.chmod(0o755)
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
