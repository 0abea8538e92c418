"""The storage interface every backend implements (SQLite now, Kubernetes resources later).

The store is the only place that decides what is durable. Every write method returns only
after the data is committed to stable storage, because the web layer answers 2xx on the
strength of that return. Build numbers come from the BuildConfig's ``status.lastVersion``,
bumped in the same transaction that inserts the Build, so two concurrent instantiations can
never share a number. Writes with ``expected_resource_version`` fail with Conflict when
another writer got there first.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from triggerd.model.buildconfigs import BuildConfig
from triggerd.model.builds import Build, Phase

#: Makes build ``number`` of the given (freshly read) BuildConfig. Called inside the store's
#: transaction, so it must be pure and quick; raising aborts the whole transaction.
BuildFactory = Callable[[BuildConfig, int], Build]


@dataclass(frozen=True, slots=True, kw_only=True)
class NewBuild:
    namespace: str
    config_name: str
    make: BuildFactory


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """A webhook delivery id, recorded with what it created so redeliveries start nothing."""

    key: str  # provider-qualified id, e.g. "github:72d3162e-cc78-11e3-81ab-4c9367dc0958"
    received: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Instantiated:
    builds: tuple[Build, ...]
    #: True when the delivery was seen before: ``builds`` are the ones it created then
    #: (as they are now), and nothing new was created.
    duplicate: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildQuery:
    namespace: str | None = None
    config_name: str | None = None
    #: label equality requirements (``a=b,c=d``; the web layer parses selectors into this)
    labels: Mapping[str, str] = field(default_factory=dict)
    #: labels that must be absent / present (``!a`` / ``a``) and set-based ``a in (x,y)``
    label_absent: frozenset[str] = frozenset()
    label_present: frozenset[str] = frozenset()
    label_in: Mapping[str, frozenset[str]] = field(default_factory=dict)
    label_not_in: Mapping[str, frozenset[str]] = field(default_factory=dict)
    phases: frozenset[Phase] = frozenset()
    limit: int | None = None
    #: opaque token from a previous page
    continue_token: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    builds: tuple[Build, ...]
    continue_token: str | None = None
    resource_version: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueSummary:
    """What waits to start: the number of New builds, and the configs that have any,
    ordered by their oldest New build (the scheduler's fairness order)."""

    total: int
    configs: tuple[tuple[str, str], ...]


class Store(Protocol):
    async def open(self) -> None:
        """Create or migrate the schema; must be called once before use."""

    async def close(self) -> None: ...

    # BuildConfigs -------------------------------------------------------------------------
    async def list_buildconfigs(self, namespace: str | None = None) -> list[BuildConfig]: ...

    async def get_buildconfig(self, namespace: str, name: str) -> BuildConfig:
        """Raise NotFound when absent."""

    async def create_buildconfig(self, config: BuildConfig) -> BuildConfig:
        """Insert with a new uid, resourceVersion and creationTimestamp; AlreadyExists if taken.

        ``status.lastVersion`` starts at the given value (an exported config keeps its count).
        """

    async def replace_buildconfig(
        self, config: BuildConfig, *, expected_resource_version: str | None = None
    ) -> BuildConfig:
        """Replace the user's part; keeps uid, creationTimestamp and lastVersion as stored.

        NotFound when absent; Conflict when ``expected_resource_version`` is given and stale.
        """

    async def delete_buildconfig(self, namespace: str, name: str) -> None:
        """Delete the config and all its builds (as ``oc delete bc`` cascades); NotFound."""

    # Builds -------------------------------------------------------------------------------
    async def instantiate(
        self,
        requests: Sequence[NewBuild],
        *,
        delivery: Delivery | None = None,
        queue_limit: int = 0,
    ) -> Instantiated:
        """Create one build per request, atomically, and record ``delivery`` with them.

        With ``queue_limit`` > 0, raise QueueFull when the New builds plus these would pass
        it; checked after the duplicate lookup (a redelivery is answered, not refused) and
        in the same transaction as the insert (concurrent callers cannot all slip past).

        For each request: read the config (NotFound aborts everything), bump its lastVersion,
        call ``make(config_with_new_last_version, number)``, insert the Build. When
        ``delivery`` is given and already recorded, create nothing and return the builds it
        created originally with ``duplicate=True``. Concurrent calls with the same delivery
        key never both create builds.
        """

    async def delivered(self, key: str) -> tuple[Build, ...] | None:
        """The builds the delivery ``key`` created (as they are now, pruned ones left out),
        or None when it is not recorded. A read only: for a delivery that would start
        nothing now, whose earlier delivery may have started builds. Only deliveries that
        created builds are recorded (by :meth:`instantiate`)."""

    async def queue_summary(self) -> QueueSummary:
        """The New builds in summary, cheaply (the scheduler asks on every pass)."""

    async def get_build(self, namespace: str, name: str) -> Build:
        """Raise NotFound when absent."""

    async def list_builds(self, query: BuildQuery) -> Page:
        """Builds matching ``query``, oldest first (namespace, config, number)."""

    async def update_build(
        self, build: Build, *, expected_resource_version: str | None = None
    ) -> Build:
        """Store a new version of an existing build (status changes); returns it with its new
        resourceVersion. NotFound when absent; Conflict when the expected version is stale."""

    async def delete_builds(self, namespace: str, names: Sequence[str]) -> None:
        """Delete these builds (pruning); absent names are ignored."""

    async def prune_deliveries(self, older_than: datetime) -> int:
        """Forget delivery records received before ``older_than``; returns how many."""

    async def binary_inputs_in_use(self, digests: Collection[str]) -> set[str]:
        """Which of these upload digests some stored build still names in its
        ``triggerd.dev/binary-input`` annotation (the others may be deleted)."""
