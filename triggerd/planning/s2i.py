"""Source-to-image as a Dockerfile, the way OpenShift 4 builds ``sourceStrategy`` (pure).

The S2I strategy has no builder of its own: the planner (:mod:`triggerd.planning.buildah`)
adds a runner step that inspects the builder image and the fetched source, then calls
:func:`generate` here with what it found, and buildah builds the Dockerfile this returns.
The Dockerfile starts FROM the builder image, copies the source to ``/tmp/src`` owned by
the assemble user, switches to that user, runs ``assemble`` and sets ``run`` as the CMD.
With ``incremental: true`` and a previous image, an extra first stage runs that image's
``save-artifacts`` (when there is one: OpenShift's ``[ -s save-artifacts ]`` guard) and the
main stage copies the result to ``/tmp/artifacts``, where assemble scripts look for it.

Each script (assemble, run, save-artifacts) is looked up on its own, first found wins
(s2i's order): ``sourceStrategy.scripts`` (an ``image:///dir`` path in the builder, trusted
as s2i does, or an http(s) URL that serves the script: the runner asks), the source's
``.s2i/bin/NAME``, then the builder's ``io.openshift.s2i.scripts-url`` label.

``source.secrets`` and ``source.configMaps`` go where OpenShift 4 puts them for S2I: at
``destinationDir`` relative to the builder image's working directory. They reach the build
only as read-only mounts of the assemble RUN, which copies them in, runs assemble and, for
secrets, removes the copies before the step ends, so no layer ever holds a secret (OpenShift
COPYs them in a layer of their own and deletes them in a later one).

No I/O here: callers pass in what they read.
"""

from __future__ import annotations

import posixpath
import shlex
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
#: The artifacts stage's own directory (a fresh one: the previous image has /tmp/artifacts
#: from its own build): save-artifacts' tar stream and what it unpacks to.
SAVE_DIR = "/tmp/triggerd-save"  # noqa: S108
#: s2i's working directory for builder images that do not set one.
DEFAULT_WORKDIR = "/opt/app-root/src"
#: OpenShift's user for images whose user is root or unset (an arbitrary non-root uid).
DEFAULT_USER = "1001"
ARTIFACTS_STAGE = "triggerd-artifacts"
_URL_SCHEMES = ("http://", "https://")
_IMAGE_SCHEME = "image://"


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
class Injection:
    """A secret or config map for assemble: the files ``files`` of the read-only mount
    ``mount`` are copied to ``destination_dir`` (relative to the builder's working
    directory); ``remove`` (secrets) deletes the copies again once assemble is done."""

    mount: str
    destination_dir: str
    files: tuple[str, ...]
    remove: bool
    what: str  # for the log: 'secret "name"'


@dataclass(frozen=True, slots=True, kw_only=True)
class Inputs:
    """Everything :func:`generate` needs, gathered by the runner at build time."""

    builder_image: str
    builder_user: str  # the image config's User ("" when unset)
    builder_labels: Mapping[str, str]
    builder_workdir: str = ""  # the image config's WorkingDir ("" when unset)
    scripts_url: str = ""  # sourceStrategy.scripts
    source_scripts: frozenset[str] = frozenset()  # names present in .s2i/bin
    #: http(s) script base URL → the script names it serves (the runner asked each)
    downloadable: Mapping[str, frozenset[str]] | None = None
    environment_file: str | None = None  # content of .s2i/environment
    env: Sequence[tuple[str, str]] = ()  # sourceStrategy.env and build metadata, resolved
    labels: Sequence[tuple[str, str]] = ()  # image labels, resolved
    incremental: bool = False
    previous_image: str | None = None  # image id/reference of the last build's output
    injections: Sequence[Injection] = ()


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


def working_dir(image_workdir: str) -> str:
    """Where injected inputs are relative to: the builder's WORKDIR, s2i's default without."""
    if not image_workdir.strip():
        return DEFAULT_WORKDIR
    return posixpath.normpath(posixpath.join("/", image_workdir.strip()))


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


def is_download_url(url: str) -> bool:
    return url.startswith(_URL_SCHEMES)


def check_scripts_url(url: str) -> None:
    """sourceStrategy.scripts must be ``image:///dir`` or an http(s) URL."""
    if url and not (url.startswith(_IMAGE_SCHEME) or is_download_url(url)):
        raise S2IError(f"sourceStrategy.scripts {url!r} must be an image:///path or an http(s) URL")
    if any(c in url for c in ' \n\r\t"'):
        raise S2IError(f"script URL {url!r} must not contain spaces or quotes")


def download_bases(scripts_url: str, builder_labels: Mapping[str, str]) -> tuple[str, ...]:
    """The http(s) script locations to ask which scripts they serve, in lookup order."""
    bases = [scripts_url.rstrip("/"), builder_labels.get(SCRIPTS_URL_LABEL, "").rstrip("/")]
    return tuple(dict.fromkeys(b for b in bases if is_download_url(b)))


def resolve_scripts(
    scripts_url: str,
    source_scripts: frozenset[str],
    builder_labels: Mapping[str, str],
    downloadable: Mapping[str, frozenset[str]] | None = None,
) -> dict[str, Script]:
    """Where each script comes from (names with no source at all are left out).

    Per script, first found: the scripts URL, ``.s2i/bin``, the builder's label. An
    ``image://`` location is trusted to hold every script (s2i does the same; a missing
    save-artifacts is caught by the guard in the Dockerfile); an http(s) location holds the
    scripts ``downloadable`` says it served.
    """
    served = downloadable or {}
    label_url = builder_labels.get(SCRIPTS_URL_LABEL, "").rstrip("/")
    locations = [
        (scripts_url.rstrip("/"), None),
        ("", SOURCE_SCRIPTS_DIR),
        (label_url, None),
    ]
    found: dict[str, Script] = {}
    for name in SCRIPT_NAMES:
        for base, source_dir in locations:
            if source_dir is not None:
                if name in source_scripts:
                    found[name] = Script(
                        name=name,
                        origin=ScriptOrigin.SOURCE,
                        location=posixpath.join(source_dir, name),
                    )
                    break
                continue
            if base.startswith(_IMAGE_SCHEME):
                found[name] = Script(
                    name=name,
                    origin=ScriptOrigin.IMAGE,
                    location=posixpath.join(base[len(_IMAGE_SCHEME) :] or "/", name),
                )
                break
            if is_download_url(base) and name in served.get(base, frozenset()):
                found[name] = Script(name=name, origin=ScriptOrigin.URL, location=f"{base}/{name}")
                break
    return found


def generate(inputs: Inputs) -> Generated:
    """The Dockerfile for an S2I build; S2IError when assemble or run cannot be found."""
    check_scripts_url(inputs.scripts_url)
    base_url = inputs.scripts_url.rstrip("/")
    if is_download_url(base_url) and not (inputs.downloadable or {}).get(base_url):
        # s2i fails the same way: a scripts URL that serves nothing is a mistake.
        raise S2IError(f"could not download any scripts from {base_url}")
    scripts = resolve_scripts(
        inputs.scripts_url, inputs.source_scripts, inputs.builder_labels, inputs.downloadable
    )
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
    workdir = working_dir(inputs.builder_workdir)
    _check_one_line(workdir, "builder image WorkingDir")
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
        notes.append(f"incremental: restoring artifacts from {inputs.previous_image}")
        lines += _artifacts_stage(inputs.previous_image, scripts[SAVE_ARTIFACTS], user)
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
        lines.append(_copy_script(script, user))
    as_root: list[str] = []
    downloaded = [s.path_in_image for s in copied if s.origin is ScriptOrigin.URL]
    if downloaded:
        # Downloaded files are 0600; the assemble user must be able to run them.
        as_root.append("chmod 0755 " + " ".join(downloaded))
    destinations = _injection_destinations(inputs.injections, workdir)
    for directory in destinations:
        # The assemble user copies the inputs in: it must be able to write there.
        q = shlex.quote(directory)
        as_root.append(f"mkdir -p {q} && chown {user}:0 {q}")
    if as_root:
        lines.append("RUN " + " && ".join(as_root))
    if restore:
        lines.append(
            f"COPY --from={ARTIFACTS_STAGE} --chown={user}:0 "
            f"{SAVE_DIR}/artifacts {ARTIFACTS_DESTINATION}"
        )
    lines.append(f"USER {user}")
    lines.append("RUN " + _assemble_command(scripts[ASSEMBLE], inputs.injections, workdir))
    for injection in inputs.injections:
        target = posixpath.normpath(posixpath.join(workdir, injection.destination_dir))
        fate = "removed after assemble" if injection.remove else "kept"
        notes.append(f"{injection.what}: {len(injection.files)} files in {target}, {fate}")
    lines.append(f"CMD {scripts[RUN].path_in_image}")
    return Generated(text="\n".join(lines) + "\n", user=user, scripts=scripts, notes=tuple(notes))


def _copy_script(script: Script, user: str) -> str:
    verb = "ADD" if script.origin is ScriptOrigin.URL else "COPY"
    return f"{verb} --chown={user}:0 {script.location} {script.path_in_image}"


def _artifacts_stage(previous_image: str, save: Script, user: str) -> list[str]:
    """The stage that runs the previous image's save-artifacts (or the one from the source
    or a URL, copied in: the previous image need not have it) into SAVE_DIR/artifacts."""
    lines = [f"FROM {previous_image} AS {ARTIFACTS_STAGE}", "USER root"]
    prepare = [f"mkdir -p {SAVE_DIR}/artifacts && chown -R {user}:0 {SAVE_DIR}"]
    if save.origin is not ScriptOrigin.IMAGE:
        lines.append(_copy_script(save, user))
        prepare.append(f"chmod 0755 {save.path_in_image}")
    lines.append("RUN " + " && ".join(prepare))
    lines.append(f"USER {user}")
    script, tar = save.path_in_image, f"{SAVE_DIR}/artifacts.tar"
    # save-artifacts writes a tar stream to stdout (the S2I contract); an image without the
    # script, or one that saves nothing, leaves an empty directory.
    lines.append(
        f"RUN if [ -s {script} ]; then {script} > {tar}; fi && "
        f"if [ -s {tar} ]; then tar -x -f {tar} -C {SAVE_DIR}/artifacts; fi"
    )
    lines.append("")
    return lines


def _injection_destinations(injections: Sequence[Injection], workdir: str) -> list[str]:
    found: list[str] = []
    for injection in injections:
        if injection.destination_dir.startswith("/") or ".." in injection.destination_dir.split(
            "/"
        ):
            raise S2IError(
                f"{injection.what}: destinationDir {injection.destination_dir!r} must be a "
                "relative path"
            )
        directory = posixpath.normpath(posixpath.join(workdir, injection.destination_dir))
        _check_one_line(directory, f"{injection.what} destinationDir")
        if directory not in found:
            found.append(directory)
    return found


def _assemble_command(assemble: Script, injections: Sequence[Injection], workdir: str) -> str:
    """The assemble RUN: plain, or copying the inputs in first and removing the secrets'
    copies after assemble in the same step, whatever assemble's exit status."""
    if not injections:
        return assemble.path_in_image
    copy: list[str] = []
    remove: list[str] = []
    for injection in injections:
        directory = posixpath.normpath(posixpath.join(workdir, injection.destination_dir))
        for name in injection.files:
            _check_one_line(name, f"{injection.what} key")
            if not name or "/" in name or name in (".", ".."):
                raise S2IError(f"{injection.what}: bad key {name!r}")
            source = shlex.quote(posixpath.join(injection.mount, name))
            target = shlex.quote(posixpath.join(directory, name))
            copy.append(f"cp {source} {target}")
            if injection.remove:
                remove.append(target)
    parts = ["set -e", *copy, "status=0", f"{assemble.path_in_image} || status=$?"]
    if remove:
        parts.append("rm -f " + " ".join(remove))
    parts.append('exit "$status"')
    return "; ".join(parts)


def _check_one_line(value: str, what: str) -> None:
    if any(c in value for c in "\n\r\x00"):
        raise S2IError(f"{what} {value!r} must be one line")
