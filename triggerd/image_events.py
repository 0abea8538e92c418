"""Neutral image events: a tag in a registry now points at (maybe) a new manifest.

The registry notification parsers (:mod:`triggerd.intake.registries`) and the tag watcher
(:mod:`triggerd.images.watcher`) both produce :class:`ImagePush` values; the image-change
decision (:mod:`triggerd.imagechange`) reads only these. A push is a hint: ``digest`` is set
only when the sender is trusted to name it, otherwise the runtime confirms the tag with a
registry HEAD. Plain frozen data: never I/O, never the clock, never BuildConfigs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from triggerd.images import references


class RegistryKind(StrEnum):
    """Which notification dialect a push came in (the ``{kind}`` of /hooks/registry/{kind})."""

    DISTRIBUTION = "distribution"
    HARBOR = "harbor"
    DOCKERHUB = "dockerhub"
    QUAY = "quay"
    GITHUB = "github"
    #: found by polling the registry, not notified
    POLL = "poll"


@dataclass(frozen=True, slots=True, kw_only=True)
class ImagePush:
    """One tag pushed; ``digest`` is None when the notification does not carry one."""

    source: RegistryKind
    delivery_id: str | None
    registry: str
    repository: str
    tag: str
    digest: str | None
    media_type: str | None = None

    @property
    def reference(self) -> references.ImageReference:
        """The tag reference (``registry/repository:tag``), normalised."""
        return references.ImageReference(
            registry=self.registry, repository=self.repository, tag=self.tag
        )

    @property
    def key(self) -> str:
        """The watched-tag key, the same string :func:`tag_key` makes from a reference."""
        return f"{self.registry}/{self.repository}:{self.tag}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification:
    """What one delivery said: the tag pushes it carries and how many events it ignored."""

    source: RegistryKind
    pushes: tuple[ImagePush, ...]
    ignored: int = 0


def tag_key(reference: references.ImageReference) -> str:
    """``registry/repository:tag`` of a tag reference (the digest, if any, is dropped)."""
    return f"{reference.registry}/{reference.repository}:{reference.tag or 'latest'}"
