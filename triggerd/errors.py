"""The domain error tree shared by every stage of triggerd.

Pure stages raise these; only the web layer (and the CLI) turn them into HTTP statuses and
exit codes. Messages are written for the person who sent the bad input: they name the field,
header or object that was wrong and never contain a secret.
"""

from __future__ import annotations

from dataclasses import dataclass


class TriggerdError(Exception):
    """Base of all domain errors."""


class BadSignature(TriggerdError):
    """A webhook or notification failed verification (maps to 401)."""


class Unauthorized(TriggerdError):
    """A management API call lacked a valid bearer token (maps to 401)."""


class MalformedPayload(TriggerdError):
    """A request body or required header could not be understood (maps to 400)."""


class UnsupportedEvent(TriggerdError):
    """A provider event type triggerd does not handle (maps to 400, naming the event)."""


class UnsupportedMediaType(TriggerdError):
    """A content type triggerd does not accept (maps to 415)."""


class PayloadTooLarge(TriggerdError):
    """A body over the configured cap (maps to 413)."""


class NotFound(TriggerdError):
    """The named object does not exist (maps to 404)."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f'{kind} "{name}" not found')
        self.kind = kind
        self.name = name


class Conflict(TriggerdError):
    """A write lost against a concurrent one, or the state forbids it (maps to 409)."""


class AlreadyExists(Conflict):
    """Create of an object whose name is taken (maps to 409 AlreadyExists)."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f'{kind} "{name}" already exists')
        self.kind = kind
        self.name = name


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with one field, addressed by its path (``spec.source.contextDir``)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class Invalid(TriggerdError):
    """An object failed validation; every problem is listed (maps to 422)."""

    def __init__(self, kind: str, name: str, causes: list[FieldError]) -> None:
        detail = "; ".join(str(c) for c in causes)
        super().__init__(f'{kind} "{name}" is invalid: {detail}')
        self.kind = kind
        self.name = name
        self.causes = causes


class BadRequest(TriggerdError):
    """A request that is well-formed but not acceptable as a whole (maps to 400)."""


class TemporaryError(TriggerdError):
    """A failure worth retrying after ``delay`` seconds (store busy, disk full: maps to 503)."""

    def __init__(self, message: str, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class QueueFull(TemporaryError):
    """The build queue is at its configured limit (maps to 429 with Retry-After)."""


class PermanentError(TriggerdError):
    """A failure that retrying will not mend."""
