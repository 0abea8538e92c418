"""What the image change runtime needs from a store of image streams and trigger states.

Two stores implement :class:`ImageStreamStore`: :class:`~triggerd.images.streams_store.
StreamsStore` (a SQLite file of one process) and :class:`~triggerd.images.streams_kubernetes.
KubernetesStreamsStore` (``imagestreams.triggerd.dev`` custom resources and the BuildConfigs'
``status.imageChangeTriggers``, shared by every replica). The runtime and the web layer talk
to this protocol only. No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from triggerd.imagechange import TriggerState
from triggerd.model import imagestreams
from triggerd.model import meta as metas

#: ``status.tags[].conditions[].type`` of an import's outcome (OpenShift's TagEventCondition)
IMPORT_SUCCESS = "ImportSuccess"


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportFailure:
    """Why the last import of a stream tag failed (OpenShift's ``ImportSuccess`` False)."""

    tag: str
    reason: str  # NotFound, Unauthorized, InternalError
    message: str
    time: datetime

    def to_condition(self) -> dict[str, str]:
        """``status.tags[].conditions[]`` entry, in OpenShift's TagEventCondition shape."""
        return {
            "type": IMPORT_SUCCESS,
            "status": "False",
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": metas.format_time(self.time),
        }

    @classmethod
    def from_condition(cls, tag: str, condition: Mapping[str, Any]) -> ImportFailure | None:
        """The failure an ``ImportSuccess: False`` condition records (None for any other)."""
        if condition.get("type") != IMPORT_SUCCESS or condition.get("status") != "False":
            return None
        when = condition.get("lastTransitionTime")
        parsed = metas.parse_time(when) if isinstance(when, str) else None
        if parsed is None:
            return None
        return cls(
            tag=tag,
            reason=str(condition.get("reason") or ""),
            message=str(condition.get("message") or ""),
            time=parsed,
        )


class ImageStreamStore(Protocol):
    """ImageStreams (spec as the user wrote it, server-owned history and import conditions)
    and the ImageChange trigger states of BuildConfigs (``status.imageChangeTriggers``).

    Errors are :mod:`triggerd.errors`: NotFound, AlreadyExists, Conflict (a stale
    ``expected_resource_version``), TemporaryError."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def list_streams(
        self, namespace: str | None = None
    ) -> list[imagestreams.ImageStream]: ...

    async def get_stream(self, namespace: str, name: str) -> imagestreams.ImageStream: ...

    async def create_stream(
        self, stream: imagestreams.ImageStream, *, now: datetime
    ) -> imagestreams.ImageStream: ...

    async def replace_stream(
        self, stream: imagestreams.ImageStream, *, expected_resource_version: str | None = None
    ) -> imagestreams.ImageStream:
        """Replace the spec; the server-owned history is kept."""
        ...

    async def delete_stream(self, namespace: str, name: str) -> None: ...

    async def set_import_failure(
        self, namespace: str, stream: str, tag: str, failure: ImportFailure | None
    ) -> None:
        """Record (or, with None, clear after a successful import) a tag's import failure."""
        ...

    async def import_failures(self, namespace: str, stream: str) -> dict[str, ImportFailure]: ...

    async def record_tag(
        self, namespace: str, name: str, tag: str, event: imagestreams.TagEvent
    ) -> tuple[imagestreams.ImageStream, bool]:
        """Add a history item atomically; False when it already was the newest."""
        ...

    async def trigger_states(self, namespace: str, config: str) -> dict[int, TriggerState]: ...

    async def put_trigger_states(
        self, namespace: str, config: str, states: Iterable[TriggerState]
    ) -> None:
        """Store these states (by trigger index); the config's other states stay."""
        ...

    async def delete_trigger_states(self, namespace: str, config: str) -> None: ...
