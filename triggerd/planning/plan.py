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
    """``prefix`` + the absolute path of ``path`` inside the build's workspace."""

    path: str
    prefix: str = ""


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
        return arg.prefix + workspace_path(workspace, arg.path)
    if arg.output not in outputs:
        raise MissingOutput(f"no step produced {arg.output.value}")
    return arg.prefix + outputs[arg.output]


def show(arg: Arg, outputs: Mapping[OutputName, str]) -> str:
    """How ``arg`` appears in the build log: workspace paths relative, outputs resolved
    when known, URLs without credentials."""
    if isinstance(arg, str):
        return redact(arg)
    if isinstance(arg, InWorkspace):
        return arg.prefix + arg.path
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


Action = Command | MakeDirectory | WriteFile | EditDockerfile | CheckInside | ReadOutput


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
        return {"path": arg.path, "prefix": arg.prefix}
    return {"output": arg.output.value, "prefix": arg.prefix}


def _arg_from_json(doc: Any) -> Arg:
    if isinstance(doc, str):
        return doc
    if isinstance(doc, Mapping):
        prefix = str(doc.get("prefix", ""))
        if "path" in doc:
            return InWorkspace(path=str(doc["path"]), prefix=prefix)
        if "output" in doc:
            return Captured(output=OutputName(doc["output"]), prefix=prefix)
    raise PlanFormatError(f"malformed argument {doc!r}")


def _step_to_dict(step: Step) -> dict[str, Any]:
    a = step.action
    action: dict[str, Any]
    if isinstance(a, Command):
        action = {"kind": "command", "argv": [_arg_to_json(x) for x in a.argv]}
        if a.env:
            action["env"] = {k: _arg_to_json(v) for k, v in a.env.items()}
        if a.capture is not None:
            action["capture"] = a.capture.value
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
    else:
        raise PlanFormatError(f"unknown action kind {kind!r}")
    return Step(stage=StageName(doc["stage"]), reason=Reason(doc["reason"]), action=action)
