"""Parsing and normalising container image references (pure).

A reference such as ``127.0.0.1:5000/team/app:v1`` or ``busybox`` is split into registry,
repository, tag and digest, with Docker Hub short names normalised to
``docker.io/library/...`` so that two spellings of one image compare equal. No I/O here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
#: Docker Hub's other names (docker login writes ``https://index.docker.io/v1/``).
DOCKER_HUB_ALIASES = frozenset({"index.docker.io", "registry-1.docker.io"})

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-fA-F0-9]{32,}$")
_HOST = re.compile(r"^(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$")


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageReference:
    """One image reference, normalised."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def with_digest(self, digest: str) -> ImageReference:
        """The same repository pinned to ``digest`` (the tag is dropped, as a pin must be)."""
        return ImageReference(registry=self.registry, repository=self.repository, digest=digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse(text: str) -> ImageReference:
    """Parse ``text`` into a reference; raise ValueError naming what is wrong."""
    if not text or text != text.strip():
        raise ValueError("image reference must be a non-empty string without spaces")
    rest = text
    digest: str | None = None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.match(digest):
            raise ValueError(f"invalid digest {digest!r} in image reference {text!r}")
    registry = DOCKER_HUB
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        if not _HOST.match(first):
            raise ValueError(f"invalid registry host {first!r} in image reference {text!r}")
        registry, rest = first, remainder
    tag: str | None = None
    last_slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > last_slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.match(tag):
            raise ValueError(f"invalid tag {tag!r} in image reference {text!r}")
    registry = canonical_registry(registry)
    if registry == DOCKER_HUB and "/" not in rest:
        rest = f"library/{rest}"
    if not _REPOSITORY.match(rest):
        raise ValueError(
            f"invalid repository {rest!r} in image reference {text!r}: "
            "use lowercase letters, digits and separators"
        )
    if tag is None and digest is None:
        tag = "latest"
    return ImageReference(registry=registry, repository=rest, tag=tag, digest=digest)


def canonical_registry(host: str) -> str:
    """``host`` as references name its registry: Docker Hub's aliases are ``docker.io``."""
    return DOCKER_HUB if host.lower() in DOCKER_HUB_ALIASES else host
