"""Dockerfile text edits a Docker-strategy build makes before buildah runs (pure).

OpenShift edits a build's Dockerfile, and so does triggerd: the last ``FROM`` is replaced by
``spec.strategy.dockerStrategy.from`` when that is set; the strategy's ``env`` is inserted
as an ``ENV`` line right after every ``FROM`` so ``RUN`` steps see it (buildah's ``--env``
only sets the final image's config, which is not what OpenShift does); the image labels are
appended as one ``LABEL`` line (buildah turns each ``--label`` flag into a build step of its
own, and with the vfs driver every step copies the whole root filesystem). The planner
decides *what* to change; the runner applies these functions to the checked-out file.
Everything else in the file (comments, blank lines, continuations, heredocs, line endings)
is kept byte for byte.

This module only transforms strings: it never reads or writes files.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_ESCAPE = "\\"
_DIRECTIVE = re.compile(r"^#\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(.*?)\s*$")
_KNOWN_DIRECTIVES = frozenset({"escape", "syntax", "check"})
_HEREDOC = re.compile(r"<<(-?)([\"']?)([A-Za-z_][A-Za-z0-9_]*)\2")
_HEREDOC_INSTRUCTIONS = frozenset({"RUN", "COPY", "ADD"})
# What an ENV key may be once written by us: no quoting rules to get wrong.
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


class DockerfileError(ValueError):
    """The Dockerfile cannot be edited as asked (no FROM, a malformed FROM, a bad env)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Instruction:
    """One instruction: its physical line span ``[start, end)`` and its logical text."""

    keyword: str  # upper case, e.g. "FROM"
    arguments: str  # the logical line after the keyword, continuations joined
    start: int
    end: int  # exclusive; covers continuation lines but not heredoc bodies
    body_end: int  # exclusive; also covers heredoc bodies that follow the instruction


@dataclass(frozen=True, slots=True, kw_only=True)
class From:
    """A parsed ``FROM [--flag=value ...] image [AS name]``."""

    flags: tuple[str, ...]
    image: str
    alias: str | None

    def render(self) -> str:
        words = ["FROM", *self.flags, self.image]
        if self.alias is not None:
            words += ["AS", self.alias]
        return " ".join(words)


@dataclass(frozen=True, slots=True, kw_only=True)
class Parsed:
    lines: tuple[str, ...]  # physical lines with their endings
    escape: str
    instructions: tuple[Instruction, ...]


def parse(text: str) -> Parsed:
    """Split ``text`` into instructions, honouring the escape directive, continuations,
    comments inside continuations and heredoc bodies (whose lines are not instructions)."""
    lines = tuple(text.splitlines(keepends=True))
    escape = _escape_directive(lines)
    instructions: list[Instruction] = []
    i = 0
    while i < len(lines):
        content = _strip_eol(lines[i]).strip()
        if not content or content.startswith("#"):
            i += 1
            continue
        start = i
        parts: list[str] = []
        while True:
            current = _strip_eol(lines[i]).rstrip()
            if current.endswith(escape):
                parts.append(current[: -len(escape)])
                i += 1
                # Comment and blank lines inside a continued instruction are dropped by
                # the Dockerfile parser; skip them the same way.
                while i < len(lines) and (
                    not _strip_eol(lines[i]).strip()
                    or _strip_eol(lines[i]).lstrip().startswith("#")
                ):
                    i += 1
                if i >= len(lines):
                    break
                continue
            parts.append(current)
            i += 1
            break
        end = i
        words = "".join(parts).strip().split(None, 1)
        if not words:
            continue  # a lone continuation character: nothing to parse
        keyword = words[0].upper()
        arguments = words[1].strip() if len(words) > 1 else ""
        if keyword in _HEREDOC_INSTRUCTIONS:
            i = _skip_heredocs(lines, i, arguments)
        instructions.append(
            Instruction(keyword=keyword, arguments=arguments, start=start, end=end, body_end=i)
        )
    return Parsed(lines=lines, escape=escape, instructions=tuple(instructions))


def parse_from(instruction: Instruction) -> From:
    """Parse the arguments of a FROM instruction."""
    if instruction.keyword != "FROM":
        raise DockerfileError(f"not a FROM instruction: {instruction.keyword}")
    words = instruction.arguments.split()
    flags = tuple(w for w in words if w.startswith("--"))
    rest = [w for w in words if not w.startswith("--")]
    # Flags must come before the image; anything else is a syntax error buildah would reject.
    if words[: len(flags)] != list(flags):
        raise DockerfileError(f"malformed FROM line: FROM {instruction.arguments}")
    if len(rest) == 1:
        return From(flags=flags, image=rest[0], alias=None)
    if len(rest) == 3 and rest[1].upper() == "AS":
        return From(flags=flags, image=rest[0], alias=rest[2])
    raise DockerfileError(f"malformed FROM line: FROM {instruction.arguments}")


def froms(text: str) -> list[From]:
    """Every FROM of the Dockerfile, in order."""
    return [parse_from(ins) for ins in parse(text).instructions if ins.keyword == "FROM"]


def last_from(text: str) -> From | None:
    """The FROM of the final stage (the one OpenShift's ``from`` replaces), if any."""
    found = froms(text)
    return found[-1] if found else None


def replace_last_from(text: str, image: str) -> str:
    """``text`` with the image of its last FROM replaced by ``image``; flags such as
    ``--platform`` and the stage name (``AS name``) are kept."""
    return edit(text, from_image=image)


def insert_env_after_from(text: str, env: Sequence[tuple[str, str]]) -> str:
    """``text`` with ``ENV`` for ``env`` inserted after every FROM (OpenShift's semantics)."""
    return edit(text, env=env)


def append_labels(text: str, labels: Sequence[tuple[str, str]]) -> str:
    """``text`` with one ``LABEL`` instruction for ``labels`` at the end (as OpenShift does:
    one instruction is one build step, where a ``--label`` flag per label costs a step each)."""
    return edit(text, labels=labels)


def edit(
    text: str,
    *,
    from_image: str | None = None,
    env: Sequence[tuple[str, str]] = (),
    labels: Sequence[tuple[str, str]] = (),
) -> str:
    """Apply the edits at once: replace the last FROM's image, add ENV after each FROM and
    append the labels."""
    parsed = parse(text)
    from_indexes = [n for n, ins in enumerate(parsed.instructions) if ins.keyword == "FROM"]
    if not from_indexes:
        raise DockerfileError("the Dockerfile has no FROM instruction")
    if not env and from_image is None:
        from_indexes = []  # only labels to add: leave every FROM as it is
    env_line = format_env(env, parsed.escape) if env else None
    out: list[str] = []
    cursor = 0
    for n in from_indexes:
        ins = parsed.instructions[n]
        out.extend(parsed.lines[cursor : ins.start])
        span = parsed.lines[ins.start : ins.end]
        eol = _eol(span[-1]) if span else "\n"
        if from_image is not None and n == from_indexes[-1]:
            parsed_from = parse_from(ins)
            replaced = From(flags=parsed_from.flags, image=from_image, alias=parsed_from.alias)
            out.append(replaced.render() + (eol or ("\n" if env_line else "")))
        else:
            out.extend(span)
            if env_line and not eol:
                out.append("\n")
        if env_line:
            out.append(env_line + (eol or "\n"))
        cursor = ins.end
    out.extend(parsed.lines[cursor:])
    if labels:
        if out and not _eol(out[-1]):
            out.append("\n")
        out.append(format_labels(labels, parsed.escape) + "\n")
    return "".join(out)


def format_env(env: Sequence[tuple[str, str]], escape: str = DEFAULT_ESCAPE) -> str:
    """One ``ENV k="v" ...`` line whose values are taken literally (no ``$`` expansion)."""
    for name, value in env:
        check_env(name, value)
    return "ENV " + " ".join(f"{name}={quote(value, escape)}" for name, value in env)


def format_labels(labels: Sequence[tuple[str, str]], escape: str = DEFAULT_ESCAPE) -> str:
    """One ``LABEL "k"="v" ...`` line whose keys and values are taken literally."""
    for name, value in labels:
        check_label(name, value)
    return "LABEL " + " ".join(
        f"{quote(name, escape)}={quote(value, escape)}" for name, value in labels
    )


def quote(value: str, escape: str = DEFAULT_ESCAPE) -> str:
    """``value`` as a double-quoted Dockerfile word: no variable expansion, no splitting."""
    return '"' + "".join(escape + c if c in ('"', "$", escape) else c for c in value) + '"'


def check_env(name: str, value: str) -> None:
    """Raise DockerfileError when ``name``/``value`` cannot be written as one ENV word."""
    if not _ENV_NAME.match(name):
        raise DockerfileError(
            f"environment variable name {name!r} must be letters, digits, '_', '.' or '-'"
        )
    if any(c in value for c in "\n\r\x00"):
        raise DockerfileError(f"the value of environment variable {name} must be one line")


def check_label(name: str, value: str) -> None:
    """Raise DockerfileError when a label cannot be written into a LABEL instruction."""
    if not name or any(c in name for c in "\n\r\x00"):
        raise DockerfileError(f"label name {name!r} must be non-empty and one line")
    if any(c in value for c in "\n\r\x00"):
        raise DockerfileError(f"the value of label {name} must be one line")


def _escape_directive(lines: Sequence[str]) -> str:
    escape = DEFAULT_ESCAPE
    for line in lines:
        match = _DIRECTIVE.match(_strip_eol(line).strip())
        if not match or match.group(1).lower() not in _KNOWN_DIRECTIVES:
            break  # directives are only recognised before anything else
        if match.group(1).lower() == "escape" and match.group(2) in ("\\", "`"):
            escape = match.group(2)
    return escape


def _skip_heredocs(lines: Sequence[str], i: int, arguments: str) -> int:
    for match in _HEREDOC.finditer(arguments):
        strip_tabs, word = match.group(1) == "-", match.group(3)
        while i < len(lines):
            body = _strip_eol(lines[i])
            i += 1
            if (body.lstrip("\t") if strip_tabs else body) == word:
                break
    return i


def _strip_eol(line: str) -> str:
    return line.rstrip("\r\n")


def _eol(line: str) -> str:
    return line[len(line.rstrip("\r\n")) :]
