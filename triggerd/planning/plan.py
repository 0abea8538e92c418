"""A build plan: the ordered, JSON-serialisable list of what to run for one build (pure).

:mod:`triggerd.planning.buildah` renders a Build into a :class:`Plan`; the local executor
runs it on the host and the Kubernetes executor embeds the same JSON in a Job that runs
``python -m triggerd.runner``. Both run it through :mod:`triggerd.runner`, so the meaning of
every action lives in exactly two places: the data and pure helpers here, the I/O there.

A step is one action tagged with the stage it belongs to and the Reason to report if it
fails. Actions are either a :class:`Command` (an argv, never a shell) or one of a few
builtins the runner performs in Python. Arguments that are only known at run time are typed
values, not template strings: :class:`InWorkspace` (a path under the per-build workspace,
which every relative path in a plan is) and :class:`Captured` (an output an earlier step
produced, such as the commit id). Plans never hold secret values: credentials are referred
to by the path of a file the executor provides.

No I/O here.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from triggerd.model.builds import Reason, StageName
from triggerd.model.specs import SourceControlUser, SourceRevision

FORMAT_VERSION = 1


class PlanFormatError(ValueError):
    """A plan document is not one this version of triggerd can run."""


class MissingOutput(LookupError):
    """An argument refers to an output no earlier step produced."""


class OutputName(StrEnum):
    """Values steps produce for later steps and for the executor's report."""

    COMMIT = "revision.commit"
    AUTHOR_NAME = "revision.author.name"
    AUTHOR_EMAIL = "revision.author.email"
    AUTHOR = "revision.author"  # "Name <email>", as OpenShift's commit.author label
    COMMITTER_NAME = "revision.committer.name"
    COMMITTER_EMAIL = "revision.committer.email"
    DATE = "revision.date"
    MESSAGE = "revision.message"
    DIGEST = "image.digest"
    IMAGE_ID = "image.id"


class Capture(StrEnum):
    """How a command's stdout is turned into outputs (instead of going to the log)."""

    REVISION = "revision"


#: ``git log -1 --format=`` for :attr:`Capture.REVISION`: NUL-separated because names and
#: subjects may contain anything else. The subject (%s) is what OpenShift records.
REVISION_FORMAT = "%H%x00%an%x00%ae%x00%cn%x00%ce%x00%ad%x00%s"
_REVISION_FIELDS = (
    OutputName.COMMIT,
    OutputName.AUTHOR_NAME,
    OutputName.AUTHOR_EMAIL,
    OutputName.COMMITTER_NAME,
    OutputName.COMMITTER_EMAIL,
    OutputName.DATE,
    OutputName.MESSAGE,
)
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def parse_captured(capture: Capture, stdout: str) -> dict[OutputName, str]:
    """The outputs a capturing command's stdout yields; ValueError when it is malformed."""
    if capture is Capture.REVISION:
        fields = stdout.rstrip("\n").split("\x00")
        if len(fields) != len(_REVISION_FIELDS) or not re.fullmatch(
            r"[0-9a-f]{40}|[0-9a-f]{64}", fields[0]
        ):
            raise ValueError(f"unexpected git log output: {stdout[:200]!r}")
        out = dict(zip(_REVISION_FIELDS, fields, strict=True))
        name, email = out[OutputName.AUTHOR_NAME], out[OutputName.AUTHOR_EMAIL]
        out[OutputName.AUTHOR] = f"{name} <{email}>" if email else name
        return out
    raise AssertionError(capture)


def revision_from_outputs(outputs: Mapping[OutputName, str]) -> SourceRevision | None:
    """The SourceRevision the captured outputs describe, or None before the capture."""
    commit = outputs.get(OutputName.COMMIT)
    if not commit:
        return None

    def user(name: OutputName, email: OutputName) -> SourceControlUser | None:
        if not outputs.get(name) and not outputs.get(email):
            return None
        return SourceControlUser(name=outputs.get(name, ""), email=outputs.get(email, ""))

    return SourceRevision(
        commit=commit,
        author=user(OutputName.AUTHOR_NAME, OutputName.AUTHOR_EMAIL),
        committer=user(OutputName.COMMITTER_NAME, OutputName.COMMITTER_EMAIL),
        message=outputs.get(OutputName.MESSAGE, ""),
    )


def strip_credentials(url: str) -> str:
    """``url`` without its user information, for labels and other published places."""
    return _URL_CREDENTIALS.sub("", url)


def redact(text: str) -> str:
    """``text`` with credentials in URLs (``https://user:token@host``) hidden, for logs."""
    return _URL_CREDENTIALS.sub("***@", text)


# Arguments -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class InWorkspace:
    """``prefix`` + the absolute path of ``path`` inside the build's workspace + ``suffix``."""

    path: str
    prefix: str = ""
    suffix: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Captured:
    """``prefix`` + an output produced by an earlier step."""

    output: OutputName
    prefix: str = ""


Arg = str | InWorkspace | Captured


def resolve(arg: Arg, workspace: str, outputs: Mapping[OutputName, str]) -> str:
    """The concrete string for ``arg`` in a run whose workspace is the absolute ``workspace``."""
    if isinstance(arg, str):
        return arg
    if isinstance(arg, InWorkspace):
        return arg.prefix + workspace_path(workspace, arg.path) + arg.suffix
    if arg.output not in outputs:
        raise MissingOutput(f"no step produced {arg.output.value}")
    return arg.prefix + outputs[arg.output]


def show(arg: Arg, outputs: Mapping[OutputName, str]) -> str:
    """How ``arg`` appears in the build log: workspace paths relative, outputs resolved
    when known, URLs without credentials."""
    if isinstance(arg, str):
        return redact(arg)
    if isinstance(arg, InWorkspace):
        return arg.prefix + arg.path + arg.suffix
    value = outputs.get(arg.output, "${" + arg.output.value + "}")
    return redact(arg.prefix + value)


def workspace_path(workspace: str, path: str) -> str:
    """Join a plan path onto the workspace; plan paths never leave it lexically."""
    joined = posixpath.normpath(posixpath.join(workspace, path))
    if joined != workspace and not joined.startswith(workspace.rstrip("/") + "/"):
        raise ValueError(f"path {path!r} leaves the workspace")
    return joined


# Actions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """Run ``argv`` (no shell) in the workspace with ``env`` added to the runner's
    environment; stdout and stderr go to the build log unless ``capture`` is set, in which
    case stdout is parsed into outputs."""

    argv: tuple[Arg, ...]
    env: Mapping[str, Arg] = field(default_factory=dict)
    capture: Capture | None = None
    #: Run instead when this fails and ``fallback_marker`` is in its last output lines
    #: (a build whose registry layer-cache push failed is retried without the cache).
    fallback: tuple[Arg, ...] = ()
    fallback_marker: str = ""

    def describe(self, outputs: Mapping[OutputName, str]) -> str:
        return shlex.join(show(a, outputs) for a in self.argv)


@dataclass(frozen=True, slots=True, kw_only=True)
class MakeDirectory:
    path: str

    def describe(self, outputs: Mapping[OutputName, str]) -> str:
        return f"create directory {self.path}"


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteFile:
    """Write ``content`` to ``path`` (parents created, a symlink there replaced)."""

    path: str
    content: str
    mode: int = 0o644

    def describe(self, outputs: Mapping[OutputName, str]) -> str:
        return f"write {self.path}"


@dataclass(frozen=True, slots=True, kw_only=True)
class EditDockerfile:
    """Read the Dockerfile at ``path``, apply :func:`triggerd.planning.dockerfile.edit`,
    write the result to ``output`` (outside the build context, which stays as fetched)."""

    path: str
    output: str
    from_image: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, Arg], ...] = ()

    def describe(self, outputs: Mapping[OutputName, str]) -> str:
        parts = []
        if self.from_image is not None:
            parts.append(f"replace the last FROM with {self.from_image}")
        if self.env:
            parts.append("add ENV " + " ".join(name for name, _ in self.env) + " after FROM")
        if self.labels:
            parts.append(f"add {len(self.labels)} labels")
        return f"{self.path} -> {self.output}: " + "; ".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckInside:
    """Fail unless every path exists and, symlinks resolved, stays inside ``root``: a
    repository must not point a build at files elsewhere on the machine."""

    root: str
    paths: tuple[str, ...]

    def describe(self, outputs: Mapping[OutputName, str]) -> str:
        return f"check that {', '.join(self.paths)} stay inside {self.root}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadOutput:
    """Read the (stripped) content of ``path`` into an output."""

    path: str
    output: OutputName

    def describe(self, outputs: Mapping[OutputName, str]) -> str:
        return f"read {self.output.value} from {self.path}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Buildah:
    """How a builtin action calls buildah: the global argv (storage options) and the
    environment (registries.conf, TMPDIR) the planner gives every buildah command."""

    argv: tuple[Arg, ...]
    env: Mapping[str, Arg] = field(default_factory=dict)
    isolation: str = "chroot"


@dataclass(frozen=True, slots=True, kw_only=True)
class S2IInput:
    """A source secret or config map of an S2I build: the directory ``source`` (one file
    per key: a workspace path the executor wrote, or where a Job mounted the volume) is
    mounted read-only at ``mount`` for the build's RUN steps, and the assemble step copies
    its files to ``destination_dir`` under the builder's working directory (and, with
    ``remove``, deletes the copies again after assemble)."""

    source: str
    mount: str
    destination_dir: str
    remove: bool
    what: str  # for the log: 'secret "name"', never a value


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerateS2IDockerfile:
    """Inspect the builder image (its user and scripts label) and the source (``.s2i/bin``,
    ``.s2i/environment``), optionally pull the previous output image for an incremental
    build, then write :func:`triggerd.planning.s2i.generate`'s Dockerfile to ``output`` and
    the build log. Keeps planning pure: what the image holds is only known at run time."""

    buildah: Buildah
    context: str
    output: str
    builder_image: str
    scripts_url: str = ""
    env: tuple[tuple[str, Arg], ...] = ()
    labels: tuple[tuple[str, Arg], ...] = ()
    incremental: bool = False
    #: The previous image to restore artifacts from and the argv that pulls it (a failed
    #: pull means there is none yet: not an error).
    previous_image: str = ""
    pull_previous: tuple[Arg, ...] = ()
    injections: tuple[S2IInput, ...] = ()

    def describe(self, outputs: Mapping[OutputName, str]) -> str:
        extra = f", incremental from {self.previous_image}" if self.incremental else ""
        return f"generate the source-to-image Dockerfile for {self.builder_image}{extra}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunInImage:
    """Run a command in a new working container of ``image`` (never pulled: it is the
    image just built or one an earlier step pulled), then remove the container.

    ``argv`` empty means the image's entrypoint followed by ``args`` (OpenShift's
    postCommit with args alone), or by the image's CMD when ``args`` is empty too and
    ``default_command`` is set (a custom builder runs as its image says).
    """

    buildah: Buildah
    image: Arg
    argv: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    default_command: bool = False
    env: tuple[tuple[str, Arg], ...] = ()
    #: Read-only bind mounts: (file or directory on the host, destination in the container).
    mounts: tuple[tuple[Arg, str], ...] = ()

    def describe(self, outputs: Mapping[OutputName, str]) -> str:
        if self.argv:
            command = shlex.join(self.argv + self.args)
        elif self.args:
            command = "<entrypoint> " + shlex.join(self.args)
        else:
            command = "<entrypoint> <cmd>"
        if self.env:
            command = "with " + " ".join(name for name, _ in self.env) + " set: " + command
        return f"run {redact(command)} in a container of {show(self.image, outputs)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtractArchive:
    """Unpack the build's uploaded input (:mod:`triggerd.planning.archives` rules) into
    ``destination``; with ``as_file`` the upload is that one file instead."""

    archive: str  # absolute: the stored upload lives outside the workspace
    destination: str
    as_file: str = ""
    max_size: int
    max_files: int

    def describe(self, outputs: Mapping[OutputName, str]) -> str:
        if self.as_file:
            return f"place the uploaded file as {self.destination}/{self.as_file}"
        return f"unpack the uploaded archive into {self.destination}"


@dataclass(frozen=True, slots=True, kw_only=True)
class CopyInto:
    """Copy the regular files of the directory ``source`` (a secret's or config map's
    keys) into ``destination`` inside the workspace. ``source`` is a workspace path the
    executor filled (host) or an absolute path where the executor mounted the volume (a
    Job's Secret/ConfigMap volume: its keys are symlinks into the volume, followed only
    while they stay inside it)."""

    source: str
    destination: str
    what: str  # for the log: 'secret "name"', never a value

    def describe(self, outputs: Mapping[OutputName, str]) -> str:
        return f"copy {self.what} into {self.destination}"


@dataclass(frozen=True, slots=True, kw_only=True)
class CopyFromImage:
    """Copy ``paths`` ((absolute path in the image, workspace destination directory)) out
    of a local image: a working container is mounted, read, unmounted and removed.

    A path ending in ``/.`` copies the directory's contents, otherwise the file or the
    directory itself (OpenShift's rule). Symlinks are copied as links, never followed;
    device files are skipped.
    """

    buildah: Buildah
    image: str
    paths: tuple[tuple[str, str], ...]

    def describe(self, outputs: Mapping[OutputName, str]) -> str:
        listed = ", ".join(f"{src} -> {dst}" for src, dst in self.paths)
        return f"copy from {self.image}: {listed}"


@dataclass(frozen=True, slots=True, kw_only=True)
class MergeAuthFiles:
    """Write one registry auth file (containers-auth.json) for a buildah command that
    needs several credentials: every entry of ``files``, then for each ``(file,
    repository)`` of ``scoped`` that file's credentials for the repository's registry,
    stored under the repository itself (the most specific key wins in containers/image).
    ``buildah build`` takes one --authfile for its pulls and its --cache-to push."""

    output: str
    files: tuple[Arg, ...] = ()
    scoped: tuple[tuple[Arg, str], ...] = ()

    def describe(self, outputs: Mapping[OutputName, str]) -> str:
        scopes = ", ".join(repository for _, repository in self.scoped)
        return f"write {self.output}: registry credentials" + (
            f" (push credentials for {scopes})" if scopes else ""
        )


Action = (
    Command
    | MergeAuthFiles
    | CopyFromImage
    | CopyInto
    | ExtractArchive
    | MakeDirectory
    | WriteFile
    | EditDockerfile
    | CheckInside
    | ReadOutput
    | GenerateS2IDockerfile
    | RunInImage
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    stage: StageName
    reason: Reason  # reported when this step fails
    action: Action


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    steps: tuple[Step, ...]
    image: str = ""  # the pushed reference, "" when the build has no output
    deadline_seconds: int | None = None  # spec.completionDeadlineSeconds

    @property
    def stages(self) -> tuple[StageName, ...]:
        """Stage names in the order they first occur."""
        seen: list[StageName] = []
        for step in self.steps:
            if step.stage not in seen:
                seen.append(step.stage)
        return tuple(seen)

    def commands(self) -> list[Command]:
        return [s.action for s in self.steps if isinstance(s.action, Command)]

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "version": FORMAT_VERSION,
            "image": self.image,
            "steps": [_step_to_dict(s) for s in self.steps],
        }
        if self.deadline_seconds is not None:
            doc["deadlineSeconds"] = self.deadline_seconds
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Plan:
        if not isinstance(doc, Mapping) or doc.get("version") != FORMAT_VERSION:
            raise PlanFormatError(f"expected a plan of version {FORMAT_VERSION}")
        try:
            deadline = doc.get("deadlineSeconds")
            return cls(
                steps=tuple(_step_from_dict(s) for s in doc["steps"]),
                image=str(doc.get("image", "")),
                deadline_seconds=int(deadline) if deadline is not None else None,
            )
        except PlanFormatError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise PlanFormatError(f"malformed plan: {e!r}") from e


# Serialisation ---------------------------------------------------------------------------


def _arg_to_json(arg: Arg) -> Any:
    if isinstance(arg, str):
        return arg
    if isinstance(arg, InWorkspace):
        doc = {"path": arg.path, "prefix": arg.prefix}
        if arg.suffix:
            doc["suffix"] = arg.suffix
        return doc
    return {"output": arg.output.value, "prefix": arg.prefix}


def _arg_from_json(doc: Any) -> Arg:
    if isinstance(doc, str):
        return doc
    if isinstance(doc, Mapping):
        prefix = str(doc.get("prefix", ""))
        if "path" in doc:
            return InWorkspace(
                path=str(doc["path"]), prefix=prefix, suffix=str(doc.get("suffix", ""))
            )
        if "output" in doc:
            return Captured(output=OutputName(doc["output"]), prefix=prefix)
    raise PlanFormatError(f"malformed argument {doc!r}")


def _buildah_to_json(b: Buildah) -> dict[str, Any]:
    return {
        "argv": [_arg_to_json(x) for x in b.argv],
        "env": {k: _arg_to_json(v) for k, v in b.env.items()},
        "isolation": b.isolation,
    }


def _buildah_from_json(doc: Mapping[str, Any]) -> Buildah:
    return Buildah(
        argv=tuple(_arg_from_json(x) for x in doc["argv"]),
        env={str(k): _arg_from_json(v) for k, v in (doc.get("env") or {}).items()},
        isolation=str(doc.get("isolation", "chroot")),
    )


def _pairs_to_json(pairs: tuple[tuple[str, Arg], ...]) -> list[list[Any]]:
    return [[k, _arg_to_json(v)] for k, v in pairs]


def _pairs_from_json(doc: Any) -> tuple[tuple[str, Arg], ...]:
    return tuple((str(k), _arg_from_json(v)) for k, v in doc or [])


def _step_to_dict(step: Step) -> dict[str, Any]:
    a = step.action
    action: dict[str, Any]
    if isinstance(a, Command):
        action = {"kind": "command", "argv": [_arg_to_json(x) for x in a.argv]}
        if a.env:
            action["env"] = {k: _arg_to_json(v) for k, v in a.env.items()}
        if a.capture is not None:
            action["capture"] = a.capture.value
        if a.fallback:
            action["fallback"] = [_arg_to_json(x) for x in a.fallback]
            action["fallbackMarker"] = a.fallback_marker
    elif isinstance(a, MakeDirectory):
        action = {"kind": "mkdir", "path": a.path}
    elif isinstance(a, WriteFile):
        action = {"kind": "write", "path": a.path, "content": a.content, "mode": a.mode}
    elif isinstance(a, EditDockerfile):
        action = {
            "kind": "editDockerfile",
            "path": a.path,
            "output": a.output,
            "env": [list(e) for e in a.env],
            "labels": [[k, _arg_to_json(v)] for k, v in a.labels],
        }
        if a.from_image is not None:
            action["from"] = a.from_image
    elif isinstance(a, CheckInside):
        action = {"kind": "checkInside", "root": a.root, "paths": list(a.paths)}
    elif isinstance(a, GenerateS2IDockerfile):
        action = {
            "kind": "generateS2IDockerfile",
            "buildah": _buildah_to_json(a.buildah),
            "context": a.context,
            "output": a.output,
            "builderImage": a.builder_image,
            "scriptsURL": a.scripts_url,
            "env": _pairs_to_json(a.env),
            "labels": _pairs_to_json(a.labels),
            "incremental": a.incremental,
            "previousImage": a.previous_image,
            "pullPrevious": [_arg_to_json(x) for x in a.pull_previous],
            "injections": [
                {"source": i.source, "mount": i.mount, "destinationDir": i.destination_dir,
                 "remove": i.remove, "what": i.what}
                for i in a.injections
            ],
        }  # fmt: skip
    elif isinstance(a, CopyFromImage):
        action = {
            "kind": "copyFromImage",
            "buildah": _buildah_to_json(a.buildah),
            "image": a.image,
            "paths": [list(x) for x in a.paths],
        }
    elif isinstance(a, CopyInto):
        action = {
            "kind": "copyInto",
            "source": a.source,
            "destination": a.destination,
            "what": a.what,
        }
    elif isinstance(a, ExtractArchive):
        action = {
            "kind": "extractArchive",
            "archive": a.archive,
            "destination": a.destination,
            "asFile": a.as_file,
            "maxSize": a.max_size,
            "maxFiles": a.max_files,
        }
    elif isinstance(a, MergeAuthFiles):
        action = {
            "kind": "mergeAuthFiles",
            "output": a.output,
            "files": [_arg_to_json(x) for x in a.files],
            "scoped": [[_arg_to_json(f), r] for f, r in a.scoped],
        }
    elif isinstance(a, RunInImage):
        action = {
            "kind": "runInImage",
            "buildah": _buildah_to_json(a.buildah),
            "image": _arg_to_json(a.image),
            "argv": list(a.argv),
            "args": list(a.args),
            "defaultCommand": a.default_command,
            "env": _pairs_to_json(a.env),
            "mounts": [[_arg_to_json(m[0]), m[1]] for m in a.mounts],
        }
    else:
        action = {"kind": "readOutput", "path": a.path, "output": a.output.value}
    return {"stage": step.stage.value, "reason": step.reason.value, "action": action}


def _step_from_dict(doc: Mapping[str, Any]) -> Step:
    a = doc["action"]
    kind = a["kind"]
    action: Action
    if kind == "command":
        capture = a.get("capture")
        action = Command(
            argv=tuple(_arg_from_json(x) for x in a["argv"]),
            env={str(k): _arg_from_json(v) for k, v in (a.get("env") or {}).items()},
            capture=Capture(capture) if capture is not None else None,
            fallback=tuple(_arg_from_json(x) for x in a.get("fallback") or []),
            fallback_marker=str(a.get("fallbackMarker", "")),
        )
    elif kind == "mkdir":
        action = MakeDirectory(path=str(a["path"]))
    elif kind == "write":
        action = WriteFile(path=str(a["path"]), content=str(a["content"]), mode=int(a["mode"]))
    elif kind == "editDockerfile":
        from_image = a.get("from")
        action = EditDockerfile(
            path=str(a["path"]),
            output=str(a["output"]),
            from_image=str(from_image) if from_image is not None else None,
            env=tuple((str(k), str(v)) for k, v in a.get("env") or []),
            labels=tuple((str(k), _arg_from_json(v)) for k, v in a.get("labels") or []),
        )
    elif kind == "checkInside":
        action = CheckInside(root=str(a["root"]), paths=tuple(str(p) for p in a["paths"]))
    elif kind == "readOutput":
        action = ReadOutput(path=str(a["path"]), output=OutputName(a["output"]))
    elif kind == "generateS2IDockerfile":
        action = GenerateS2IDockerfile(
            buildah=_buildah_from_json(a["buildah"]),
            context=str(a["context"]),
            output=str(a["output"]),
            builder_image=str(a["builderImage"]),
            scripts_url=str(a.get("scriptsURL", "")),
            env=_pairs_from_json(a.get("env")),
            labels=_pairs_from_json(a.get("labels")),
            incremental=bool(a.get("incremental", False)),
            previous_image=str(a.get("previousImage", "")),
            pull_previous=tuple(_arg_from_json(x) for x in a.get("pullPrevious") or []),
            injections=tuple(
                S2IInput(
                    source=str(i["source"]),
                    mount=str(i["mount"]),
                    destination_dir=str(i.get("destinationDir", "")),
                    remove=bool(i.get("remove", True)),
                    what=str(i.get("what", "input")),
                )
                for i in a.get("injections") or []
            ),
        )
    elif kind == "copyFromImage":
        action = CopyFromImage(
            buildah=_buildah_from_json(a["buildah"]),
            image=str(a["image"]),
            paths=tuple((str(x[0]), str(x[1])) for x in a["paths"]),
        )
    elif kind == "copyInto":
        action = CopyInto(
            source=str(a["source"]), destination=str(a["destination"]), what=str(a["what"])
        )
    elif kind == "extractArchive":
        action = ExtractArchive(
            archive=str(a["archive"]),
            destination=str(a["destination"]),
            as_file=str(a.get("asFile", "")),
            max_size=int(a["maxSize"]),
            max_files=int(a["maxFiles"]),
        )
    elif kind == "mergeAuthFiles":
        action = MergeAuthFiles(
            output=str(a["output"]),
            files=tuple(_arg_from_json(x) for x in a.get("files") or []),
            scoped=tuple((_arg_from_json(x[0]), str(x[1])) for x in a.get("scoped") or []),
        )
    elif kind == "runInImage":
        action = RunInImage(
            buildah=_buildah_from_json(a["buildah"]),
            image=_arg_from_json(a["image"]),
            argv=tuple(str(x) for x in a.get("argv") or []),
            args=tuple(str(x) for x in a.get("args") or []),
            default_command=bool(a.get("defaultCommand", False)),
            env=_pairs_from_json(a.get("env")),
            mounts=tuple((_arg_from_json(m[0]), str(m[1])) for m in a.get("mounts") or []),
        )
    else:
        raise PlanFormatError(f"unknown action kind {kind!r}")
    return Step(stage=StageName(doc["stage"]), reason=Reason(doc["reason"]), action=action)
