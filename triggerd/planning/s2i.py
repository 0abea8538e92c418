"""Source-to-image as a Dockerfile, the way OpenShift 4 builds ``sourceStrategy`` (pure).

The S2I strategy has no builder of its own: the planner (:mod:`triggerd.planning.buildah`)
adds a runner step that inspects the builder image and the fetched source, then calls
:func:`generate` here with what it found, and buildah builds the Dockerfile this returns.
The Dockerfile starts FROM the builder image, copies the source to ``/tmp/src`` owned by
the assemble user, switches to that user, runs ``assemble`` and sets ``run`` as the CMD.
With ``incremental: true`` and a previous image, an extra first stage runs that image's
``save-artifacts`` and the main stage copies the result to ``/tmp/artifacts``, where
assemble scripts look for it.

Each script (assemble, run, save-artifacts) is looked up on its own, first found wins:
``sourceStrategy.scripts`` (an ``image:///dir`` path in the builder, or an http(s) URL
that buildah downloads with ADD), the source's ``.s2i/bin/NAME``, then the builder's
``io.openshift.s2i.scripts-url`` label (``image:///usr/libexec/s2i``).

No I/O here: callers pass in what they read.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from triggerd.planning import dockerfile

ASSEMBLE = "assemble"
RUN = "run"
SAVE_ARTIFACTS = "save-artifacts"
SCRIPT_NAMES = (ASSEMBLE, RUN, SAVE_ARTIFACTS)
#: The builder label naming where its scripts are.
SCRIPTS_URL_LABEL = "io.openshift.s2i.scripts-url"
#: Where the source scripts in a repository live.
SOURCE_SCRIPTS_DIR = ".s2i/bin"
#: Environment file in the repository: KEY=VALUE lines.
SOURCE_ENVIRONMENT_FILE = ".s2i/environment"
#: Where the builder's assemble finds the source, the restored artifacts, and the scripts
#: that did not come from the builder image. Paths inside the image (S2I's contract), not
#: on this host.
SOURCE_DESTINATION = "/tmp/src"  # noqa: S108
ARTIFACTS_DESTINATION = "/tmp/artifacts"  # noqa: S108
SCRIPTS_DESTINATION = "/tmp/scripts"  # noqa: S108
#: OpenShift's user for images whose user is root or unset (an arbitrary non-root uid).
DEFAULT_USER = "1001"
ARTIFACTS_STAGE = "triggerd-artifacts"


class S2IError(ValueError):
    """The builder image and source together cannot make an S2I build; says why."""


class ScriptOrigin(StrEnum):
    IMAGE = "image"  # a path inside the builder image
    URL = "url"  # downloaded by buildah (ADD)
    SOURCE = "source"  # .s2i/bin in the repository


@dataclass(frozen=True, slots=True, kw_only=True)
class Script:
    name: str
    origin: ScriptOrigin
    location: str  # image path, URL, or path relative to the build context

    @property
    def path_in_image(self) -> str:
        """Where the script is when the image runs it."""
        if self.origin is ScriptOrigin.IMAGE:
            return self.location
        return posixpath.join(SCRIPTS_DESTINATION, self.name)


@dataclass(frozen=True, slots=True, kw_only=True)
class Inputs:
    """Everything :func:`generate` needs, gathered by the runner at build time."""

    builder_image: str
    builder_user: str  # the image config's User ("" when unset)
    builder_labels: Mapping[str, str]
    scripts_url: str = ""  # sourceStrategy.scripts
    source_scripts: frozenset[str] = frozenset()  # names present in .s2i/bin
    environment_file: str | None = None  # content of .s2i/environment
    env: Sequence[tuple[str, str]] = ()  # sourceStrategy.env and build metadata, resolved
    labels: Sequence[tuple[str, str]] = ()  # image labels, resolved
    incremental: bool = False
    previous_image: str | None = None  # image id/reference of the last build's output


@dataclass(frozen=True, slots=True, kw_only=True)
class Generated:
    text: str
    user: str
    scripts: Mapping[str, Script]
    notes: tuple[str, ...] = ()  # for the build log: what was decided and why


def assemble_user(image_user: str) -> str:
    """The user assemble runs as: the image's own, or 1001 when that is root or unset.

    A ``user:group`` keeps only the user (the group is 0, as OpenShift's arbitrary uids).
    """
    user = image_user.split(":", 1)[0].strip()
    if user in ("", "0", "root"):
        return DEFAULT_USER
    return user


def parse_environment_file(text: str) -> list[tuple[str, str]]:
    """``.s2i/environment``: ``KEY=VALUE`` per line, blank lines and ``#`` comments ignored.

    Raises S2IError naming the line for anything else.
    """
    result: list[tuple[str, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise S2IError(f"{SOURCE_ENVIRONMENT_FILE} line {number}: expected KEY=VALUE")
        try:
            dockerfile.check_env(name.strip(), value)
        except dockerfile.DockerfileError as e:
            raise S2IError(f"{SOURCE_ENVIRONMENT_FILE} line {number}: {e}") from e
        result.append((name.strip(), value))
    return result


def resolve_scripts(
    scripts_url: str, source_scripts: frozenset[str], builder_labels: Mapping[str, str]
) -> dict[str, Script]:
    """Where each script comes from (names with no source at all are left out)."""
    label_url = builder_labels.get(SCRIPTS_URL_LABEL, "").rstrip("/")
    found: dict[str, Script] = {}
    for name in SCRIPT_NAMES:
        if scripts_url:
            found[name] = _from_url(name, scripts_url)
        elif name in source_scripts:
            found[name] = Script(
                name=name,
                origin=ScriptOrigin.SOURCE,
                location=posixpath.join(SOURCE_SCRIPTS_DIR, name),
            )
        elif label_url:
            found[name] = _from_url(name, label_url)
    return found


def generate(inputs: Inputs) -> Generated:
    """The Dockerfile for an S2I build; S2IError when assemble or run cannot be found."""
    scripts = resolve_scripts(inputs.scripts_url, inputs.source_scripts, inputs.builder_labels)
    for required in (ASSEMBLE, RUN):
        if required not in scripts:
            raise S2IError(
                f"no {required} script: set sourceStrategy.scripts, add "
                f"{SOURCE_SCRIPTS_DIR}/{required} to the source, or use a builder image "
                f"with the {SCRIPTS_URL_LABEL} label"
            )
    for script in scripts.values():
        if script.origin is ScriptOrigin.URL and any(c in script.location for c in ' \n\t"'):
            raise S2IError(f"script URL {script.location!r} must not contain spaces or quotes")
    user = assemble_user(inputs.builder_user)
    if any(c in user for c in " \n\t\"'"):
        raise S2IError(f"builder image user {inputs.builder_user!r} is not a valid user")
    notes: list[str] = [f"assemble runs as user {user}"]
    for script in scripts.values():
        notes.append(f"{script.name}: {script.origin.value} {script.location}")

    env: list[tuple[str, str]] = []
    if inputs.environment_file is not None:
        env += parse_environment_file(inputs.environment_file)
    # The BuildConfig's env wins over the repository's file, as in OpenShift.
    env += list(inputs.env)
    try:
        for name, value in env:
            dockerfile.check_env(name, value)
        for name, value in inputs.labels:
            dockerfile.check_label(name, value)
    except dockerfile.DockerfileError as e:
        raise S2IError(str(e)) from e

    lines: list[str] = ["# Generated by triggerd from spec.strategy.sourceStrategy"]
    restore = inputs.incremental and inputs.previous_image is not None
    if inputs.incremental and inputs.previous_image is None:
        notes.append("incremental: no previous image, building from scratch")
    elif restore and SAVE_ARTIFACTS not in scripts:
        notes.append("incremental: no save-artifacts script, building from scratch")
        restore = False
    if restore:
        assert inputs.previous_image is not None
        save = scripts[SAVE_ARTIFACTS]
        notes.append(f"incremental: restoring artifacts from {inputs.previous_image}")
        lines += [
            f"FROM {inputs.previous_image} AS {ARTIFACTS_STAGE}",
            "USER root",
            f"RUN mkdir -p {ARTIFACTS_DESTINATION} && chown {user}:0 {ARTIFACTS_DESTINATION}",
            f"USER {user}",
            # save-artifacts writes a tar stream to stdout (the S2I contract).
            f"RUN cd {ARTIFACTS_DESTINATION} && {save.path_in_image} | tar -x -f - "
            f"-C {ARTIFACTS_DESTINATION}",
            "",
        ]
    lines.append(f"FROM {inputs.builder_image}")
    labels = [
        ("io.openshift.build.image", inputs.builder_image),
        *(
            [(SCRIPTS_URL_LABEL, "image://" + posixpath.dirname(scripts[RUN].location))]
            if scripts[RUN].origin is ScriptOrigin.IMAGE
            else []
        ),
        *inputs.labels,
    ]
    lines.append(dockerfile.format_labels(labels))
    if env:
        lines.append(dockerfile.format_env(list(dict(env).items())))
    lines.append("USER root")
    lines.append(f"COPY --chown={user}:0 . {SOURCE_DESTINATION}")
    copied = [s for s in scripts.values() if s.origin is not ScriptOrigin.IMAGE]
    for script in copied:
        verb = "ADD" if script.origin is ScriptOrigin.URL else "COPY"
        lines.append(f"{verb} --chown={user}:0 {script.location} {script.path_in_image}")
    if any(s.origin is ScriptOrigin.URL for s in copied):
        # Downloaded files are 0600; the assemble user must be able to run them.
        lines.append(
            "RUN chmod 0755 "
            + " ".join(s.path_in_image for s in copied if s.origin is ScriptOrigin.URL)
        )
    if restore:
        lines.append(
            f"COPY --from={ARTIFACTS_STAGE} --chown={user}:0 "
            f"{ARTIFACTS_DESTINATION} {ARTIFACTS_DESTINATION}"
        )
    lines.append(f"USER {user}")
    lines.append(f"RUN {scripts[ASSEMBLE].path_in_image}")
    lines.append(f"CMD {scripts[RUN].path_in_image}")
    return Generated(text="\n".join(lines) + "\n", user=user, scripts=scripts, notes=tuple(notes))


def _from_url(name: str, base: str) -> Script:
    if base.startswith("image://"):
        return Script(
            name=name,
            origin=ScriptOrigin.IMAGE,
            location=posixpath.join(base[len("image://") :] or "/", name),
        )
    return Script(name=name, origin=ScriptOrigin.URL, location=f"{base}/{name}")
