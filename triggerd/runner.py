"""Run a :class:`~triggerd.planning.plan.Plan`: the one place that performs plan actions.

The local executor runs plans here on the host (in its event loop); a Kubernetes Job runs
``python -m triggerd.runner PLAN.json WORKDIR`` which uses the very same code. Commands run
as argv (never a shell) in the workspace, each in its own session and process group so a
cancel or a deadline can stop the whole tree (buildah's chroot helpers and the RUN process
included); stdout and stderr go line by line to the log with a ``--> Stage: command``
header before each step. Builtin actions (write a file, edit the Dockerfile, check paths,
read an output) are done in Python and refuse to touch anything outside the workspace, even
through symlinks a repository contains.

It never logs secret values: argv and URLs are shown with credentials redacted, credential
files are referred to by path only, and the server's own environment is not passed on.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from triggerd.executors.base import Cancelled, Failed, Outcome, Succeeded
from triggerd.images import references
from triggerd.model.builds import Reason, Stage, StageName
from triggerd.model.specs import SourceRevision
from triggerd.planning import archives, dockerfile, s2i
from triggerd.planning.plan import (
    Arg,
    Buildah,
    Capture,
    CheckInside,
    Command,
    CopyFromImage,
    CopyInto,
    EditDockerfile,
    ExtractArchive,
    GenerateS2IDockerfile,
    MakeDirectory,
    MergeAuthFiles,
    MissingOutput,
    OutputName,
    Plan,
    PlanFormatError,
    ReadOutput,
    RunInImage,
    S2IInput,
    Step,
    WriteFile,
    parse_captured,
    redact,
    resolve,
    revision_from_outputs,
    workspace_path,
)

#: How long a stopped process group gets between SIGTERM and SIGKILL.
KILL_GRACE_SECONDS = 2.0
#: How long asking an http(s) S2I scripts location for one script may take.
SCRIPT_PROBE_SECONDS = 30.0
SNIPPET_LINES = 10
_READ_CHUNK = 64 * 1024
_MAX_LINE = 64 * 1024
# Environment variables a build may inherit from the process running it. Everything else
# (notably TRIGGERD_* settings, which may carry tokens) stays out of git and buildah.
_INHERITED_ENV = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "SSL_CERT_FILE",
     "SSL_CERT_DIR", "XDG_RUNTIME_DIR", "BUILDAH_LOG_LEVEL"}
)  # fmt: skip
_INHERITED_PREFIXES = ("LC_",)
_PROXY_VARS = frozenset({"http_proxy", "https_proxy", "no_proxy"})
# Global options of git and buildah that take a value, skipped to find the subcommand.
_OPTIONS_WITH_VALUE = frozenset({"-C", "-c", "--storage-driver", "--root", "--runroot"})


class StopCause(StrEnum):
    CANCELLED = "Cancelled"
    DEADLINE = "DeadlineExceeded"


class StepError(Exception):
    """A step failed; the message is for the build's status and log."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StepFailure:
    step: Step
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    outputs: Mapping[OutputName, str]
    stages: tuple[Stage, ...] = ()
    failure: StepFailure | None = None
    stopped: StopCause | None = None
    snippet: str = ""

    @property
    def succeeded(self) -> bool:
        return self.failure is None and self.stopped is None

    def to_dict(self) -> dict[str, Any]:
        """The result as the runner writes it for whoever launched it (a Job's watcher)."""
        doc: dict[str, Any] = {
            "succeeded": self.succeeded,
            "outputs": {k.value: v for k, v in self.outputs.items()},
            "stages": [s.to_dict() for s in self.stages],
            "logSnippet": self.snippet,
        }
        if self.failure is not None:
            doc["reason"] = self.failure.step.reason.value
            doc["message"] = self.failure.message
        if self.stopped is not None:
            doc["stopped"] = self.stopped.value
        return doc


class Listener(Protocol):
    """What a run tells its owner while it goes (an executor's Reporter fits)."""

    async def running(self) -> None: ...

    async def revision(self, revision: SourceRevision) -> None: ...

    async def stage(self, stage: Stage) -> None: ...


class _Quiet:
    async def running(self) -> None:
        pass

    async def revision(self, revision: SourceRevision) -> None:
        pass

    async def stage(self, stage: Stage) -> None:
        pass


def inherited_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of ``environ`` a build's commands get."""
    return {
        k: v
        for k, v in environ.items()
        if k in _INHERITED_ENV or k.startswith(_INHERITED_PREFIXES) or k.lower() in _PROXY_VARS
    }


class PlanRun:
    """One run of a plan in a workspace directory. :meth:`run` once; :meth:`stop` any time."""

    def __init__(
        self,
        plan: Plan,
        workspace: Path,
        *,
        emit: Callable[[bytes], None],
        listener: Listener | None = None,
        environ: Mapping[str, str] | None = None,
        on_spawn: Callable[[int], None] | None = None,
        kill_grace: float = KILL_GRACE_SECONDS,
    ) -> None:
        self.plan = plan
        self.workspace = workspace.resolve()
        self._emit_raw = emit
        self._listener: Listener = listener or _Quiet()
        self._env = inherited_environment(os.environ if environ is None else environ)
        self._on_spawn = on_spawn
        self._kill_grace = kill_grace
        self._outputs: dict[OutputName, str] = {}
        self._tail: collections.deque[str] = collections.deque(maxlen=SNIPPET_LINES)
        self._proc: asyncio.subprocess.Process | None = None
        self._started = False
        self._stop_cause: StopCause | None = None
        self._stopping: asyncio.Task[None] | None = None

    # Public ----------------------------------------------------------------------------
    @property
    def outputs(self) -> Mapping[OutputName, str]:
        return dict(self._outputs)

    @property
    def snippet(self) -> str:
        return "\n".join(self._tail)

    @property
    def stop_cause(self) -> StopCause | None:
        return self._stop_cause

    async def run(self) -> RunResult:
        stages: list[Stage] = []
        failure: StepFailure | None = None
        current: StageName | None = None
        stage_start = (datetime.now(UTC), time.monotonic())
        watchdog = (
            asyncio.create_task(self._watch_deadline(self.plan.deadline_seconds))
            if self.plan.deadline_seconds
            else None
        )

        async def close_stage() -> None:
            if current is None:
                return
            stage = Stage(
                name=current,
                start_time=stage_start[0],
                duration_ms=int((time.monotonic() - stage_start[1]) * 1000),
            )
            stages.append(stage)
            await self._listener.stage(stage)

        try:
            for step in self.plan.steps:
                if self._stop_cause is not None:
                    break
                if step.stage is not current:
                    await close_stage()
                    current, stage_start = step.stage, (datetime.now(UTC), time.monotonic())
                self._line(f"--> {step.stage.value}: {step.action.describe(self._outputs)}")
                try:
                    await self._perform(step)
                except StepError as e:
                    if self._stop_cause is None:
                        failure = StepFailure(step=step, message=str(e))
                    break
            await close_stage()
        finally:
            if watchdog is not None:
                watchdog.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watchdog
            # Whatever ended the run (including the task being cancelled), no process of
            # this build may outlive it.
            await asyncio.shield(self._kill_current())
        result = RunResult(
            outputs=dict(self._outputs), stages=tuple(stages), failure=failure,
            stopped=self._stop_cause,
        )  # fmt: skip
        self._line(_summary(self.plan, result))
        return dataclasses.replace(result, snippet=self.snippet)

    async def stop(self, cause: StopCause = StopCause.CANCELLED) -> None:
        """Stop the run: no further steps, and the running command's process group gets
        SIGTERM, then SIGKILL after the grace period. Returns once that group is gone."""
        if self._stop_cause is None:
            self._stop_cause = cause
        if self._stopping is None or self._stopping.done():
            self._stopping = asyncio.create_task(self._kill_current())
        await asyncio.shield(self._stopping)

    # Steps -----------------------------------------------------------------------------
    async def _perform(self, step: Step) -> None:
        action = step.action
        try:
            if isinstance(action, Command):
                await self._command_with_fallback(action)
            elif isinstance(action, MakeDirectory):
                self._inside(self._path(action.path), create=True)
            elif isinstance(action, WriteFile):
                self._write(action.path, action.content.encode(), action.mode)
            elif isinstance(action, EditDockerfile):
                self._edit_dockerfile(action)
            elif isinstance(action, CheckInside):
                self._check_inside(action)
            elif isinstance(action, ReadOutput):
                path = self._inside(self._path(action.path))
                self._outputs[action.output] = path.read_text(encoding="utf-8").strip()
            elif isinstance(action, GenerateS2IDockerfile):
                await self._generate_s2i(action)
            elif isinstance(action, RunInImage):
                await self._run_in_image(action)
            elif isinstance(action, ExtractArchive):
                await self._extract(action)
            elif isinstance(action, CopyInto):
                self._copy_into(action)
            elif isinstance(action, CopyFromImage):
                await self._copy_from_image(action)
            elif isinstance(action, MergeAuthFiles):
                self._merge_auth_files(action)
        except OSError as e:
            raise StepError(f"{action.describe(self._outputs)}: {e.strerror or e}") from e
        except UnicodeDecodeError as e:
            raise StepError(f"{action.describe(self._outputs)}: not UTF-8 text") from e
        except MissingOutput as e:
            raise StepError(str(e)) from e

    async def _command_with_fallback(self, command: Command) -> None:
        try:
            await self._command(command)
        except StepError:
            marker = command.fallback_marker
            if (
                not command.fallback
                or self._stop_cause is not None
                or not any(marker in line for line in self._tail)
            ):
                raise
            self._line("--> The registry layer cache failed; building again without it")
            await self._command(Command(argv=command.fallback, env=command.env))

    async def _command(self, command: Command) -> None:
        argv = [resolve(a, str(self.workspace), self._outputs) for a in command.argv]
        env = dict(self._env)
        env.update(
            {k: resolve(v, str(self.workspace), self._outputs) for k, v in command.env.items()}
        )
        capture = command.capture
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=self.workspace,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE if capture else asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except FileNotFoundError as e:
            raise StepError(f"{argv[0]} is not installed") from e
        self._proc = proc
        if self._on_spawn is not None:
            self._on_spawn(proc.pid)
        if self._stop_cause is not None:
            # stop() came while we were spawning: this process was not there to be killed.
            await self._kill_current()
        captured: list[bytes] = []
        assert proc.stdout is not None
        pumps = [
            asyncio.create_task(_pump(proc.stdout, captured.append if capture else self._log_bytes))
        ]
        if capture and proc.stderr is not None:
            pumps.append(asyncio.create_task(_pump(proc.stderr, self._log_bytes)))
        if not self._started:
            self._started = True
            await self._listener.running()
        returncode = await proc.wait()
        # Stragglers (a daemon a RUN left behind) would keep the pipes open forever.
        _signal_group(proc.pid, signal.SIGKILL)
        await asyncio.gather(*pumps)
        self._proc = None
        if self._stop_cause is not None:
            raise StepError(self._stop_cause.value)
        if returncode != 0:
            raise StepError(f"{_command_name(argv)} {_status(returncode)}")
        if capture is not None:
            await self._capture(capture, b"".join(captured).decode("utf-8", "replace"))

    async def _capture(self, capture: Capture, stdout: str) -> None:
        try:
            self._outputs.update(parse_captured(capture, stdout))
        except ValueError as e:
            raise StepError(str(e)) from e
        revision = revision_from_outputs(self._outputs)
        if capture is Capture.REVISION and revision is not None:
            self._line(
                f"Commit {revision.commit} by {self._outputs[OutputName.AUTHOR]}: "
                f"{revision.message}"
            )
            await self._listener.revision(revision)

    def _edit_dockerfile(self, action: EditDockerfile) -> None:
        path = self._inside(self._path(action.path))
        text = path.read_bytes().decode("utf-8")
        workspace = str(self.workspace)
        labels = [(k, resolve(v, workspace, self._outputs)) for k, v in action.labels]
        try:
            edited = dockerfile.edit(
                text, from_image=action.from_image, env=action.env, labels=labels
            )
        except dockerfile.DockerfileError as e:
            raise StepError(f"{action.path}: {e}") from e
        self._write(action.output, edited.encode(), 0o644)

    async def _copy_from_image(self, action: CopyFromImage) -> None:
        base = self._buildah_argv(action.buildah)
        code, out, err = await self._collect(
            [*base, "from", "--pull-never", "--quiet", action.image], action.buildah
        )
        if code != 0:
            raise StepError(
                f"buildah from {action.image} {_status(code)}: "
                + redact(err.decode("utf-8", "replace").strip()[-300:])
            )
        container = out.decode().strip().splitlines()[-1]
        try:
            code, out, err = await self._collect([*base, "mount", container], action.buildah)
            if code != 0:
                raise StepError(
                    f"buildah mount {_status(code)}: "
                    + redact(err.decode("utf-8", "replace").strip()[-300:])
                )
            root = Path(out.decode().strip().splitlines()[-1])
            for source, destination in action.paths:
                target = self._inside(self._path(destination), create=True)
                copied = await asyncio.to_thread(_copy_out_of_image, root, source, target)
                self._line(f"    {source}: {copied} entries copied to {destination}")
        finally:
            await asyncio.shield(self._collect([*base, "umount", container], action.buildah))
            await asyncio.shield(self._collect([*base, "rm", container], action.buildah))

    def _copy_into(self, action: CopyInto) -> None:
        source = self._input_source(action.source)
        for name, real in _input_files(source):
            # Owner-writable like the host's copies (0644), whatever the volume's mode.
            mode = (real.stat().st_mode & 0o777) | 0o200
            self._write(f"{action.destination}/{name}", real.read_bytes(), mode)

    async def _extract(self, action: ExtractArchive) -> None:
        destination = self._inside(self._path(action.destination), create=True)
        limits = archives.Limits(max_size=action.max_size, max_files=action.max_files)
        upload = Path(action.archive)
        try:
            if action.as_file:
                summary = await asyncio.to_thread(
                    archives.place_file, upload, destination, action.as_file, limits
                )
            else:
                summary = await asyncio.to_thread(archives.extract, upload, destination, limits)
        except archives.UnsafeArchive as e:
            raise StepError(f"unsafe upload: {e}") from e
        kind = summary.format.value if summary.format else "file"
        self._line(f"    {kind}: {summary.files} entries, {summary.size} bytes")

    async def _generate_s2i(self, action: GenerateS2IDockerfile) -> None:
        config = await self._image_config(action.buildah, action.builder_image)
        context = self._inside(self._path(action.context))
        scripts_dir = context / s2i.SOURCE_SCRIPTS_DIR
        source_scripts = frozenset(
            name
            for name in s2i.SCRIPT_NAMES
            if self._is_regular_inside(scripts_dir / name, context)
        )
        env_file = context / s2i.SOURCE_ENVIRONMENT_FILE
        environment = (
            env_file.read_bytes().decode("utf-8")
            if self._is_regular_inside(env_file, context)
            else None
        )
        previous: str | None = None
        if action.incremental and action.previous_image:
            previous = await self._previous_image(action)
        workspace = str(self.workspace)
        labels_raw = config.get("Labels")
        builder_labels = (
            {str(k): str(v) for k, v in labels_raw.items()} if isinstance(labels_raw, dict) else {}
        )
        try:
            s2i.check_scripts_url(action.scripts_url)
        except s2i.S2IError as e:
            raise StepError(str(e)) from e
        downloadable = await self._probe_scripts(
            s2i.download_bases(action.scripts_url, builder_labels)
        )
        try:
            generated = s2i.generate(
                s2i.Inputs(
                    builder_image=action.builder_image,
                    builder_user=str(config.get("User") or ""),
                    builder_labels=builder_labels,
                    builder_workdir=str(config.get("WorkingDir") or ""),
                    scripts_url=action.scripts_url,
                    source_scripts=source_scripts,
                    downloadable=downloadable,
                    environment_file=environment,
                    env=[(k, resolve(v, workspace, self._outputs)) for k, v in action.env],
                    labels=[(k, resolve(v, workspace, self._outputs)) for k, v in action.labels],
                    incremental=action.incremental,
                    previous_image=previous,
                    injections=[self._injection(i) for i in action.injections],
                )
            )
        except s2i.S2IError as e:
            raise StepError(str(e)) from e
        for note in generated.notes:
            self._line(f"    {note}")
        self._line("    Generated Dockerfile:")
        for line in generated.text.splitlines():
            self._line(f"    | {line}")
        self._write(action.output, generated.text.encode(), 0o644)

    def _injection(self, item: S2IInput) -> s2i.Injection:
        """The file names of an S2I input's directory (the same rules as CopyInto: a Job's
        volume keys are symlinks that must stay inside it, ``..`` entries are the kubelet's
        bookkeeping)."""
        source = self._input_source(item.source)
        files = tuple(name for name, _ in _input_files(source))
        return s2i.Injection(
            mount=item.mount,
            destination_dir=item.destination_dir,
            files=files,
            remove=item.remove,
            what=item.what,
        )

    def _input_source(self, source: str) -> Path:
        if os.path.isabs(source):
            # A Secret or ConfigMap volume the pod mounts (planning.jobs).
            return Path(os.path.realpath(source))
        return self._inside(self._path(source))

    async def _probe_scripts(self, bases: tuple[str, ...]) -> dict[str, frozenset[str]]:
        """Which S2I scripts each http(s) location serves (s2i downloads each and treats a
        missing one as absent); buildah ADDs the ones found."""
        if not bases:
            return {}
        import aiohttp  # only S2I builds with script URLs need an HTTP client

        found: dict[str, frozenset[str]] = {}
        timeout = aiohttp.ClientTimeout(total=SCRIPT_PROBE_SECONDS)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=True) as session:
            for base in bases:
                names: set[str] = set()
                for name in s2i.SCRIPT_NAMES:
                    url = f"{base}/{name}"
                    try:
                        async with session.get(url) as response:
                            body = await response.content.read(1)
                            status = response.status
                    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                        # Unreachable: asking for the other scripts there would only wait.
                        self._line(f"    {redact(base)}: could not be fetched ({e!r})")
                        break
                    if status == 200 and body:
                        names.add(name)
                    else:
                        self._line(f"    {name}: not at {redact(url)} (HTTP {status})")
                found[base] = frozenset(names)
        return found

    def _merge_auth_files(self, action: MergeAuthFiles) -> None:
        workspace = str(self.workspace)
        auths: dict[str, Any] = {}
        for arg in action.files:
            auths.update(_read_auths(resolve(arg, workspace, self._outputs)))
        for arg, repository in action.scoped:
            entry = _credentials_for(
                _read_auths(resolve(arg, workspace, self._outputs)), repository
            )
            if entry is not None:
                auths[repository] = entry
        self._write(action.output, json.dumps({"auths": auths}).encode(), 0o600)

    async def _previous_image(self, action: GenerateS2IDockerfile) -> str | None:
        """The image id of the last pushed output, or None when there is none yet."""
        if action.pull_previous:
            argv = [resolve(a, str(self.workspace), self._outputs) for a in action.pull_previous]
            code, _, err = await self._collect(argv, action.buildah)
            if code != 0:
                last = err.decode("utf-8", "replace").strip().splitlines()[-1:]
                self._line(
                    f"    no previous image {action.previous_image} to restore artifacts "
                    f"from ({redact(last[0]) if last else 'pull failed'})"
                )
                return None
        code, out, _ = await self._collect(
            [*self._buildah_argv(action.buildah), "inspect", "--type", "image",
             "--format", "{{.FromImageID}}", action.previous_image],
            action.buildah,
        )  # fmt: skip
        image_id = out.decode().strip()
        return image_id if code == 0 and image_id else None

    async def _image_config(self, b: Buildah, image: str) -> dict[str, Any]:
        """The OCI config (User, Labels, Entrypoint...) of a local image."""
        code, out, err = await self._collect(
            [*self._buildah_argv(b), "inspect", "--type", "image", image], b
        )
        if code != 0:
            raise StepError(
                f"buildah inspect {image} {_status(code)}: "
                + redact(err.decode("utf-8", "replace").strip()[-500:])
            )
        try:
            doc = json.loads(out)
            config = doc["OCIv1"].get("config") or {}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise StepError(f"buildah inspect {image}: unexpected output") from e
        return config if isinstance(config, dict) else {}

    async def _run_in_image(self, action: RunInImage) -> None:
        image = resolve(action.image, str(self.workspace), self._outputs)
        argv = list(action.argv)
        if not argv:
            config = await self._image_config(action.buildah, image)
            argv = [str(x) for x in config.get("Entrypoint") or []]
            if not action.args and action.default_command:
                argv += [str(x) for x in config.get("Cmd") or []]
            if not argv:
                raise StepError(f"{image} has no entrypoint or command to run")
        argv += list(action.args)
        base = self._buildah_argv(action.buildah)
        code, out, err = await self._collect(
            [*base, "from", "--pull-never", "--quiet", image], action.buildah
        )
        if code != 0:
            raise StepError(
                f"buildah from {_status(code)}: "
                + redact(err.decode("utf-8", "replace").strip()[-500:])
            )
        container = out.decode().strip().splitlines()[-1]
        try:
            run: list[Arg] = [*base, "run", "--isolation", action.buildah.isolation]
            for name, value in action.env:
                run += ["--env", f"{name}={resolve(value, str(self.workspace), self._outputs)}"]
            for source, destination in action.mounts:
                host = resolve(source, str(self.workspace), self._outputs)
                run += ["--volume", f"{host}:{destination}:ro"]
            run += [container, "--", *argv]
            await self._command(Command(argv=tuple(run), env=action.buildah.env))
        finally:
            # The container is a full copy of the image with vfs: never leave it behind.
            await asyncio.shield(self._collect([*base, "rm", container], action.buildah))

    def _buildah_argv(self, b: Buildah) -> list[str]:
        return [resolve(a, str(self.workspace), self._outputs) for a in b.argv]

    async def _collect(self, argv: list[str], b: Buildah) -> tuple[int, bytes, bytes]:
        """Run a helper command quietly: (exit status, stdout, stderr)."""
        env = dict(self._env)
        env.update({k: resolve(v, str(self.workspace), self._outputs) for k, v in b.env.items()})
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=self.workspace,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except FileNotFoundError as e:
            raise StepError(f"{argv[0]} is not installed") from e
        self._proc = proc
        if self._on_spawn is not None:
            self._on_spawn(proc.pid)
        try:
            out, err = await proc.communicate()
        finally:
            self._proc = None
        if self._stop_cause is not None:
            raise StepError(self._stop_cause.value)
        return proc.returncode or 0, out, err

    def _is_regular_inside(self, path: Path, root: Path) -> bool:
        """True for a regular file that, symlinks resolved, stays inside ``root``."""
        if not path.is_file():
            return False
        real = Path(os.path.realpath(path))
        if root not in real.parents:
            raise StepError(f"{path.relative_to(root)} points outside the source")
        return True

    def _check_inside(self, action: CheckInside) -> None:
        root = self._inside(self._path(action.root))
        for rel in action.paths:
            path = Path(self._path(rel))
            if not path.exists():
                raise StepError(f"{_user_path(rel, action.root)} does not exist")
            real = Path(os.path.realpath(path))
            if real != root and root not in real.parents:
                raise StepError(f"{_user_path(rel, action.root)} points outside the source")

    # Files -----------------------------------------------------------------------------
    def _path(self, rel: str) -> str:
        try:
            return workspace_path(str(self.workspace), rel)
        except ValueError as e:
            raise StepError(str(e)) from e

    def _inside(self, path: str, *, create: bool = False) -> Path:
        """``path`` with symlinks resolved, refused when that leaves the workspace."""
        if create:
            Path(path).mkdir(parents=True, exist_ok=True)
        real = Path(os.path.realpath(path))
        if real != self.workspace and self.workspace not in real.parents:
            raise StepError(
                f"{Path(path).relative_to(self.workspace)} points outside the workspace"
            )
        return real

    def _write(self, rel: str, data: bytes, mode: int) -> None:
        target = Path(self._path(rel))
        final = self._inside(str(target.parent), create=True) / target.name
        if final.is_symlink():
            # A symlink committed at this path must not redirect our write (it could point
            # anywhere on the host): the file we write replaces it.
            final.unlink()
        _write_file(final, data, mode)

    # Processes ---------------------------------------------------------------------------
    async def _kill_current(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            _signal_group(proc.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._kill_grace):
                    await proc.wait()
        # SIGKILL the group even when the leader exited: its helpers may not have.
        _signal_group(proc.pid, signal.SIGKILL)
        if proc.returncode is None:
            await proc.wait()
        await _wait_group_gone(proc.pid, self._kill_grace)

    async def _watch_deadline(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._line(f"--> Deadline of {seconds:g}s exceeded; stopping the build")
        await self.stop(StopCause.DEADLINE)

    # Log -----------------------------------------------------------------------------------
    def _line(self, text: str) -> None:
        self._log_bytes(text.encode("utf-8", "replace") + b"\n")

    def _log_bytes(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        safe = redact(text)
        if safe.strip():
            self._tail.append(safe.rstrip())
        self._emit_raw(safe.encode("utf-8") if safe != text else line)


def to_outcome(plan: Plan, result: RunResult, *, deadline_seconds: int | None = None) -> Outcome:
    """The executor's Outcome for a finished run."""
    if result.stopped is StopCause.CANCELLED:
        return Cancelled()
    if result.stopped is StopCause.DEADLINE:
        deadline = deadline_seconds or plan.deadline_seconds
        return Failed(
            reason=Reason.EXCEEDED_RETRY_TIMEOUT,
            message=f"{Reason.EXCEEDED_RETRY_TIMEOUT.message} "
            f"(completionDeadlineSeconds={deadline})",
            log_snippet=result.snippet,
        )
    if result.failure is not None:
        reason = result.failure.step.reason
        return Failed(
            reason=reason,
            message=f"{reason.message} {result.failure.message}.",
            log_snippet=result.snippet,
        )
    return Succeeded(
        digest=result.outputs.get(OutputName.DIGEST, "") if plan.image else "",
        image_reference=plan.image,
    )


def _summary(plan: Plan, result: RunResult) -> str:
    if result.stopped is StopCause.CANCELLED:
        return "--> Build cancelled"
    if result.stopped is StopCause.DEADLINE:
        return "--> Build stopped: deadline exceeded"
    if result.failure is not None:
        return f"--> Build failed ({result.failure.step.reason.value}): {result.failure.message}"
    if plan.image:
        return f"--> Pushed {plan.image}@{result.outputs.get(OutputName.DIGEST, '')}"
    return "--> Build complete (no output image)"


async def _pump(stream: asyncio.StreamReader, sink: Callable[[bytes], None]) -> None:
    """Feed ``stream`` to ``sink`` line by line (very long lines are cut into pieces)."""
    pending = b""
    while chunk := await stream.read(_READ_CHUNK):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            sink(line + b"\n")
        while len(pending) > _MAX_LINE:
            sink(pending[:_MAX_LINE] + b"\n")
            pending = pending[_MAX_LINE:]
    if pending:
        sink(pending + b"\n")


def _input_files(source: Path) -> list[tuple[str, Path]]:
    """(key, real file) of a secret's or config map's directory: a directory the executor
    wrote, or a Job's volume, whose layout is key -> ..data/key -> ..<timestamp>/key; a
    key is a regular file, or a symlink that stays inside the volume."""
    found: list[tuple[str, Path]] = []
    for entry in sorted(source.iterdir()):
        if entry.name.startswith(".."):
            continue
        real = Path(os.path.realpath(entry))
        if entry.is_symlink() and source not in real.parents:
            continue
        if real.is_file():
            found.append((entry.name, real))
    return found


def _read_auths(path: str) -> dict[str, Any]:
    """The ``auths`` of a registry auth file (``.dockercfg`` form, a bare map, accepted)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as e:
        raise StepError(f"{os.path.basename(path)} is not a registry auth file") from e
    if isinstance(doc, dict) and isinstance(doc.get("auths"), dict):
        return dict(doc["auths"])
    return dict(doc) if isinstance(doc, dict) else {}


def _credentials_for(entries: Mapping[str, Any], repository: str) -> Any:
    """The entry of an auth file that containers/image would use for ``repository``: the
    most specific key (``host/ns/repo`` over ``host/ns`` over ``host``) of the same
    registry, Docker Hub's several names counting as one; None when none matches."""
    host, _, path = repository.partition("/")
    best: Any = None
    best_length = -1
    for key, entry in entries.items():
        key_host, key_path = _split_auth_key(key)
        if _registry_name(key_host) != _registry_name(host):
            continue
        if key_path and path != key_path and not path.startswith(key_path + "/"):
            continue
        if len(key_path) > best_length:
            best, best_length = entry, len(key_path)
    return best


def _split_auth_key(key: str) -> tuple[str, str]:
    """An auth file key (``host``, ``host/ns/repo``, ``https://host/v1/``) as host, path."""
    for scheme in ("https://", "http://"):
        if key.startswith(scheme):
            key = key[len(scheme) :]
    host, _, path = key.partition("/")
    path = path.strip("/")
    # The legacy endpoint paths (docker login's https://index.docker.io/v1/) name no repository.
    return host, "" if path in ("v1", "v2") else path


def _registry_name(host: str) -> str:
    # Hosts compare case-insensitively, Docker Hub's names as one.
    return references.canonical_registry(host.lower())


def _copy_out_of_image(root: Path, source: str, target: Path) -> int:
    """Copy ``source`` (absolute in the image rooted at ``root``) into the directory
    ``target``; StepError when the path is missing or goes through a symlink."""
    contents = source.endswith("/.")
    parts = [p for p in source.strip("/").split("/") if p not in ("", ".")]
    current = root
    for part in parts:
        current = current / part
        if current.is_symlink():
            raise StepError(f"{source}: goes through a symlink in the image")
        if not current.exists():
            raise StepError(f"{source}: no such file or directory in the image")
    if not current.is_dir():
        _copy_entry(current, target / current.name)
        return 1
    destination = target if contents or not parts else target / current.name
    destination.mkdir(exist_ok=True)
    count = 0
    for dirpath, dirnames, filenames in os.walk(current):
        here = Path(dirpath)
        rel = here.relative_to(current)
        (destination / rel).mkdir(exist_ok=True)
        for name in [*dirnames, *filenames]:
            entry = here / name
            if entry.is_symlink() or not entry.is_dir():
                _copy_entry(entry, destination / rel / name)
                count += 1
    return count


def _copy_entry(source: Path, destination: Path) -> None:
    """One file or symlink, never following links; device files and FIFOs are skipped."""
    if destination.is_symlink() or destination.exists():
        destination.unlink()
    if source.is_symlink():
        os.symlink(os.readlink(source), destination)
    elif source.is_file():
        with source.open("rb") as src:
            _write_file(destination, src.read(), source.stat().st_mode & 0o777)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        os.fchmod(f.fileno(), mode)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _wait_group_gone(pgid: int, within: float) -> None:
    """Wait until no process of group ``pgid`` exists (zombies reaped by their parents)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        await asyncio.sleep(0.02)


def _command_name(argv: list[str]) -> str:
    """``buildah build``, ``git fetch``: the program and its subcommand, for messages."""
    words = [os.path.basename(argv[0])]
    args = iter(argv[1:])
    for arg in args:
        if arg in _OPTIONS_WITH_VALUE:
            next(args, None)
        elif not arg.startswith("-"):
            words.append(arg)
            break
    return " ".join(words)


def _status(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


def _user_path(rel: str, root: str) -> str:
    """A workspace path as the BuildConfig author knows it (relative to the repository)."""
    prefix = root.rstrip("/") + "/"
    return rel[len(prefix) :] if rel.startswith(prefix) else rel


# Command line ----------------------------------------------------------------------------


class _FileListener:
    """Writes what the run learns to files next to the workspace (read by a Job's owner)."""

    def __init__(self, outputs_dir: Path) -> None:
        self.outputs_dir = outputs_dir

    async def running(self) -> None:
        pass

    async def revision(self, revision: SourceRevision) -> None:
        _write_json(self.outputs_dir / "revision.json", revision.to_dict())

    async def stage(self, stage: Stage) -> None:
        pass


def _write_json(path: Path, doc: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc) + "\n")


async def _main_async(plan: Plan, workdir: Path) -> RunResult:
    out = sys.stdout.buffer

    def emit(data: bytes) -> None:
        out.write(data)
        out.flush()

    run = PlanRun(plan, workdir, emit=emit, listener=_FileListener(workdir / "outputs"))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(run.stop()))
    return await run.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m triggerd.runner", description="Run a triggerd build plan."
    )
    parser.add_argument("plan", type=Path, help="plan JSON written by triggerd")
    parser.add_argument("workdir", type=Path, help="the build's workspace directory")
    parser.add_argument(
        "--result",
        type=Path,
        help="where to write the result JSON (default WORKDIR/outputs/result.json)",
    )
    args = parser.parse_args(argv)
    try:
        plan = Plan.from_dict(json.loads(args.plan.read_text(encoding="utf-8")))
    except (OSError, ValueError, PlanFormatError) as e:
        print(f"triggerd.runner: cannot load {args.plan}: {e}", file=sys.stderr)
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    result_path = args.result or args.workdir / "outputs" / "result.json"
    result = asyncio.run(_main_async(plan, args.workdir))
    _write_json(result_path, result.to_dict())
    if result.succeeded:
        return 0
    return 3 if result.stopped is not None else 1


if __name__ == "__main__":
    sys.exit(main())
