"""Image change triggering at run time: watches, notifications, and the builds they start.

The I/O side of :mod:`triggerd.imagechange`. It keeps an index from watched image (a
registry tag or an ImageStreamTag) to the BuildConfigs whose ImageChange triggers name it,
feeds the distinct registry tags to :class:`~triggerd.images.watcher.TagWatcher`, takes
registry notifications (confirming any digest it cannot trust with a HEAD), records new
images in image streams (imports and builds that output to an ImageStreamTag), and for
every affected BuildConfig asks :func:`triggerd.imagechange.decide` what to do, under a
per-config lock so a notification and a poll of the same move start one build.

Dedup is OpenShift's: a trigger fires iff the image differs from its lastTriggeredImageID.
Every Build records what its config's triggers resolved to (an annotation written in the
same store write as the build), and the states are corrected from the builds before each
decision, so neither a crash between creating a build and writing its state nor a change
of leader starts a build twice. With leader election only the leader polls, follows
BuildConfig changes and starts image change builds. With the Kubernetes store the streams
and trigger states are shared by every replica (:mod:`triggerd.images.streams_kubernetes`):
every replica follows the streams' watch to keep its index current (and serves the
ImageStream API), while only the leader imports, records and evaluates; a new leader
catches up on what happened while nobody led. It takes the engine as a parameter and never
reaches into its internals; it never parses provider JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from triggerd import imagechange
from triggerd.engine import Engine, StartRequest
from triggerd.errors import (
    Conflict,
    FieldError,
    Invalid,
    NotFound,
    PermanentError,
    TemporaryError,
)
from triggerd.image_events import ImagePush, Notification, tag_key
from triggerd.images import references, streams_store
from triggerd.images import watch_metrics as metrics
from triggerd.images.registry_client import (
    Credentials,
    RegistryAuthError,
    RegistryClient,
    TagNotFound,
    load_docker_config,
)
from triggerd.images.streams_base import ImageStreamStore, ImportFailure
from triggerd.images.streams_store import StreamsStore
from triggerd.images.watcher import PollResult, TagWatcher
from triggerd.model import buildconfigs, imagestreams, requests
from triggerd.model.builds import Build, Phase, Reason
from triggerd.model.specs import ObjectReference, ReferenceKind
from triggerd.settings import Settings
from triggerd.store import base as stores

log = logging.getLogger(__name__)

ConfigId = tuple[str, str]
#: Registry notification ids remembered, so a registry's retry of an event already acted
#: on starts nothing (a retry is not a new push: a tag moved back to an earlier digest is).
HANDLED_DELIVERIES = 10_000
#: A config that could not act on a new image stream item (its store busy) is evaluated
#: again after this long, doubling up to the cap: the item is recorded, so nothing else
#: would report it again before the next stream change.
REEVALUATE_FIRST_SECONDS = 1.0
REEVALUATE_MAX_SECONDS = 300.0
#: OpenShift's ImportSuccess reasons, by what the registry answered.
_IMPORT_REASONS = {
    PollResult.NOT_FOUND: "NotFound",
    PollResult.AUTH_ERROR: "Unauthorized",
}


class ImageChangeRuntime:
    """Owns the tag watcher and the watched-image index; the engine owns builds."""

    def __init__(
        self,
        engine: Engine,
        *,
        streams: ImageStreamStore,
        client: RegistryClient,
        initial_build: bool = True,
        stream_registry: str | None = None,
        watcher: TagWatcher | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        reevaluate_after: float = REEVALUATE_FIRST_SECONDS,
    ) -> None:
        self.engine = engine
        self.reevaluate_after = reevaluate_after
        self.streams = streams
        self.client = client
        self.initial_build = initial_build
        self.stream_registry = stream_registry
        self._monotonic = monotonic
        self.watcher = watcher or TagWatcher(
            client.head_digest,
            self.on_poll_change,
            on_error=self._on_watch_error,
            default_interval=engine.settings.image_poll_interval_seconds,
            clock=monotonic,
        )
        self._by_key: dict[str, set[ConfigId]] = {}
        self._config_watches: dict[ConfigId, tuple[imagechange.WatchedImage, ...]] = {}
        #: the GitHub triggers of the indexed configs: a registry delivery signed with one's
        #: secret may act for that config only (see :meth:`handle_push`)
        self._github_hooks: dict[ConfigId, tuple[buildconfigs.WebHookTrigger, ...]] = {}
        #: registry tag → config → image a delivery signed with that config's own secret
        #: named, not confirmed with the registry: it counts for that config alone, until
        #: a confirmed digest of the tag arrives
        self._vouched: dict[str, dict[ConfigId, str]] = {}
        self._imports: dict[str, set[tuple[str, str, str]]] = {}
        self._stream_watches: dict[
            tuple[str, str], dict[str, tuple[references.ImageReference, float | None]]
        ] = {}
        self._locks: dict[ConfigId, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: configs to evaluate again after a temporary failure (see _reevaluate_later)
        self._reevaluations: dict[ConfigId, asyncio.Task[None]] = {}
        self._poll_task: asyncio.Task[None] | None = None
        self._follow_task: asyncio.Task[None] | None = None
        self._streams_task: asyncio.Task[None] | None = None
        #: with a shared stream store: each stream as this replica last handled it, to
        #: tell what a change (its own, another replica's, kubectl's) changed
        self._seen_streams: dict[tuple[str, str], imagestreams.ImageStream] = {}
        #: spec and annotations of each config as last evaluated from the config watch, so
        #: status-only changes (a lastVersion bump, trigger states) evaluate nothing
        self._config_marks: dict[ConfigId, str] = {}
        self._poll = True
        self._handled: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._opened = False
        self._started = False

    # Life cycle ---------------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        """Whether this replica acts on images (always, without leader election)."""
        leadership = self.engine.leadership
        return leadership is None or leadership.is_leader

    @property
    def shared(self) -> bool:
        """Whether the stream store is shared by several replicas (Kubernetes): changes
        then also come from elsewhere, through its watch, and only the leader imports."""
        return hasattr(self.streams, "watch_streams")

    async def _ensure_open(self) -> None:
        # The engine loads BuildConfig files inside its own start(), before this runtime is
        # started: the hooks it calls then must find the stream store open.
        if not self._opened:
            self._opened = True
            try:
                await self.streams.open()
            except BaseException:
                # Not open (the ImageStream CRD missing, the API down): the next caller,
                # start() included, tries again and hears why.
                self._opened = False
                raise

    async def start(self, *, poll: bool = True) -> None:
        """Open the stream store, index every config and stream; poll if this replica leads."""
        await self._ensure_open()
        self._started = True
        self._poll = poll
        await self._reindex()
        watch = getattr(self.engine.store, "watch_buildconfigs", None)
        if watch is not None and self.engine.leadership is not None:
            # BuildConfigs applied with kubectl never pass through any engine: every replica
            # follows them (its index answers notifications); only the leader acts on them.
            # include_invalid: a config that turns unparseable (kubectl skips our checks)
            # must leave the index, or its image keeps naming a config nobody can read.
            self._follow_task = asyncio.create_task(
                self._follow_configs(lambda: watch(include_invalid=True)),
                name="image change config watch",
            )
        watch_streams = getattr(self.streams, "watch_streams", None)
        if watch_streams is not None:
            # Streams changed through another replica's API, by kubectl, or recorded by a
            # previous leader: every replica keeps its index current, the leader acts.
            self._streams_task = asyncio.create_task(
                self._follow_streams(watch_streams), name="image stream watch"
            )
        if self.is_leader:
            self._lead()

    async def _reindex(self) -> None:
        for config in await self.engine.store.list_buildconfigs():
            self._index_config(config)
        listed = await self.streams.list_streams()
        for gone in set(self._stream_watches) - {(s.namespace, s.name) for s in listed}:
            self._unindex_stream(gone)
            self._seen_streams.pop(gone, None)
        for stream in listed:
            self._index_stream(stream)
            self._seen_streams[(stream.namespace, stream.name)] = stream
        self._sync_watches()

    def _lead(self) -> None:
        if self._poll and self._poll_task is None:
            self._poll_task = asyncio.create_task(self.watcher.run_forever(), name="tag watcher")
        if self.shared:
            self._background(self._catch_up())

    async def _catch_up(self) -> None:
        """On taking the lead over a shared store: what the previous leader may not have
        done, or what happened while nobody led. A spec tag never imported is imported
        once; an output the previous leader did not record in its stream is recorded; a
        config watching an ImageStreamTag is evaluated against the stream as it is now
        (its trigger states and builds say what was built already, so nothing is built
        twice, and an image recorded just before the previous leader stopped still starts
        its build)."""
        await self._safely(self._record_missed_outputs())
        for stream in list(self._seen_streams.values()):
            if not self.is_leader:
                return  # stepped down meanwhile: the next leader catches up
            for tag in stream.tags:
                if (
                    tag.from_ref is not None
                    and not tag.scheduled
                    and not stream.history.get(tag.name)
                ):
                    await self._safely(self.import_once(stream.namespace, stream.name, tag.name))
        for ident, watches in sorted(self._config_watches.items()):
            if any(w.key.startswith(imagechange.ISTAG_PREFIX) for w in watches):
                await self._evaluate_or_later(ident)

    async def _record_missed_outputs(self) -> None:
        """The newest Complete build of each config that outputs to an ImageStreamTag:
        when its digest is not in the tag's history and it ended after the newest item
        was recorded (its leader went away between the two writes), record it now. An
        older build is never put on top of a newer image."""
        if not self.stream_registry:
            return
        for config in await self.engine.store.list_buildconfigs():
            to = config.spec.output.to
            if to is None or to.kind is not ReferenceKind.IMAGE_STREAM_TAG:
                continue
            query = stores.BuildQuery(
                namespace=config.namespace,
                config_name=config.name,
                phases=frozenset({Phase.COMPLETE}),
            )
            done = [b async for b in self.engine.all_builds(query) if b.status.output_digest]
            if not done:
                continue
            newest = max(done, key=lambda b: b.number)
            out = newest.spec.output.to
            ended = newest.status.completion_timestamp
            if out is None or out.kind is not ReferenceKind.IMAGE_STREAM_TAG or ended is None:
                continue
            stream_name, _, tag = out.name.partition(":")
            try:
                stream = await self.streams.get_stream(
                    out.namespace or config.namespace, stream_name
                )
            except NotFound:
                continue
            items = stream.history.get(tag, ())
            if any(item.image == newest.status.output_digest for item in items):
                continue
            if items and items[0].created >= ended:
                continue
            log.info("recording %s/%s in its image stream (missed at a change of leader)",
                     newest.namespace, newest.name)  # fmt: skip
            await self.build_finished(newest)

    async def _evaluate(self, namespace: str, name: str) -> None:
        """Decide for a stored config with the images known now (read afresh)."""
        try:
            config = await self.engine.store.get_buildconfig(namespace, name)
        except NotFound:
            return
        await self.trigger(config, {}, observed_at=None)

    async def _safely(self, work: Any) -> None:
        """Run ``work``; log what goes wrong (one config's or stream's trouble must not
        stop the others)."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except (TemporaryError, PermanentError, Conflict, Invalid) as e:
            log.warning("image change: %s", e)
        except Exception:
            log.exception("image change work failed")

    async def _stop_polling(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
        self._poll_task = None

    async def on_leadership(self, leader: bool) -> None:
        """LeaderElector callback (wired by server.py): only the leader polls registries,
        follows BuildConfig changes and starts image change builds."""
        if not self._started:
            return
        if leader:
            await self._reindex()
            self._lead()
        else:
            await self._stop_polling()
            # The next leader's catch-up evaluates them.
            await self._cancel_reevaluations()
            # What this replica saw while leading is stale by the time it leads again.
            self.watcher.forget_digests()

    async def stop(self) -> None:
        await self._stop_polling()
        await self._cancel_reevaluations()
        for task in (self._follow_task, self._streams_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._follow_task = self._streams_task = None
        await self.drain()
        if self._opened:
            await self.streams.close()
            self._opened = False
        self._started = False
        await self.client.close()

    async def drain(self) -> None:
        """Wait for notifications being handled in the background (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _reevaluate_later(self, ident: ConfigId) -> None:
        """Evaluate the config again, with backoff, until it can act: it missed a new
        image stream item for a temporary reason. One pending evaluation per config is
        enough, since each reads the streams afresh."""
        pending = self._reevaluations.get(ident)
        if pending is not None and not pending.done():
            return
        task = asyncio.create_task(self._reevaluate(ident), name=f"reevaluate {ident}")
        self._reevaluations[ident] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._reevaluations.get(ident) is done:
                del self._reevaluations[ident]

        task.add_done_callback(forget)

    async def _reevaluate(self, ident: ConfigId) -> None:
        delay = self.reevaluate_after
        while True:
            await asyncio.sleep(delay)
            if not self.is_leader:
                return  # the next leader's catch-up evaluates it
            if await self._try_evaluate(ident):
                return
            delay = min(delay * 2, REEVALUATE_MAX_SECONDS)

    async def _try_evaluate(self, ident: ConfigId) -> bool:
        """Evaluate the config against the images known now; False when it failed for a
        reason worth trying again (a store busy), True when done or hopeless (retrying
        cannot help an unreadable config until it changes, which evaluates it)."""
        try:
            await self._evaluate(*ident)
        except asyncio.CancelledError:
            raise
        except (Invalid, Conflict, PermanentError) as e:
            log.warning("%s/%s: image stream change not acted on: %s", *ident, e)
        except Exception as e:
            log.warning("%s/%s: image stream change not acted on yet: %s", *ident, e)
            return False
        return True

    async def _evaluate_or_later(self, ident: ConfigId) -> None:
        """Evaluate now; if that fails for now, again later: what it missed (a stream
        item) is not reported a second time."""
        if not await self._try_evaluate(ident):
            self._reevaluate_later(ident)

    async def _cancel_reevaluations(self) -> None:
        tasks = list(self._reevaluations.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _background(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow_configs(self, watch: Callable[[], AsyncIterator[Any]]) -> None:
        while True:
            try:
                async for event in watch():
                    # One config's trouble (a store write failing) must not restart the
                    # watch for everyone.
                    await self._safely(self._config_event(event))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("following BuildConfigs for image change triggers failed")
                await asyncio.sleep(1.0)

    async def _config_event(self, event: Any) -> None:
        """One event of the store's BuildConfig watch (``include_invalid``: ``config`` is
        None for a stored object triggerd cannot parse)."""
        ident = (event.namespace, event.name)
        if event.type == "DELETED":
            self._config_marks.pop(ident, None)
            await self.config_deleted(*ident)
            return
        if event.config is None:
            # Unreadable now: nothing can be decided for it, so it leaves the index (its
            # trigger states stay: once fixed it must not rebuild what it already built).
            self._config_marks.pop(ident, None)
            self._unindex_config(ident)
            self._sync_watches()
            return
        mark = _config_mark(event.config)
        if self._config_marks.get(ident) == mark:
            return  # its status changed (a build's number, trigger states)
        self._config_marks[ident] = mark
        await self.config_changed(event.config, created=False)

    async def _follow_streams(self, watch: Callable[[], AsyncIterator[Any]]) -> None:
        while True:
            try:
                async for event in watch():
                    if event.stream is None:  # deleted, or stored unreadable by kubectl
                        await self.stream_deleted(event.namespace, event.name)
                    else:
                        await self._safely(self._stream_seen(event.stream))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("following image streams failed")
                await asyncio.sleep(1.0)

    # Index --------------------------------------------------------------------------------
    def _index_config(self, config: buildconfigs.BuildConfig) -> None:
        ident = (config.namespace, config.name)
        watched = imagechange.watched_images(config)
        self._unindex_config(ident, keep={w.key for w in watched})
        if not watched:
            return
        self._config_watches[ident] = watched
        for w in watched:
            self._by_key.setdefault(w.key, set()).add(ident)
        hooks = tuple(
            t.webhook
            for t in config.triggers
            if t.type is buildconfigs.TriggerType.GITHUB and t.webhook is not None
        )
        if hooks:
            self._github_hooks[ident] = hooks

    def _unindex_config(self, ident: ConfigId, keep: Collection[str] = ()) -> None:
        """Drop the config from the index; what its secret vouched for stays for the
        tags in ``keep`` (it is being indexed again and still watches them)."""
        self._github_hooks.pop(ident, None)
        for w in self._config_watches.pop(ident, ()):
            users = self._by_key.get(w.key)
            if users is not None:
                users.discard(ident)
                if not users:
                    del self._by_key[w.key]
            vouched = None if w.key in keep else self._vouched.get(w.key)
            if vouched is not None:
                vouched.pop(ident, None)
                if not vouched:
                    del self._vouched[w.key]

    def github_signers(self) -> list[tuple[ConfigId, buildconfigs.WebHookTrigger]]:
        """The GitHub triggers of the configs that watch images, from the index (no store
        read): whose secrets may sign a GitHub registry delivery, each for its own config
        only. A config that watches no image has nothing such a delivery could fire."""
        return [(ident, hook) for ident, hooks in self._github_hooks.items() for hook in hooks]

    def _index_stream(self, stream: imagestreams.ImageStream) -> None:
        ident = (stream.namespace, stream.name)
        self._unindex_stream(ident)
        wanted: dict[str, tuple[references.ImageReference, float | None]] = {}
        for tag in stream.tags:
            if tag.from_ref is None or not tag.scheduled:
                continue
            try:
                ref = references.parse(tag.from_ref.name)
            except ValueError:
                continue
            key = tag_key(ref)
            wanted[key] = (ref, tag.interval)
            self._imports.setdefault(key, set()).add((stream.namespace, stream.name, tag.name))
        self._stream_watches[ident] = wanted

    def _unindex_stream(self, ident: tuple[str, str]) -> None:
        self._stream_watches.pop(ident, None)
        for key in list(self._imports):
            targets = {t for t in self._imports[key] if (t[0], t[1]) != ident}
            if targets:
                self._imports[key] = targets
            else:
                del self._imports[key]

    def _sync_watches(self) -> None:
        """One watch per distinct registry tag, at the shortest interval anyone asked for."""
        wanted: dict[str, tuple[references.ImageReference, float | None]] = {}

        def add(key: str, ref: references.ImageReference, interval: float | None) -> None:
            current = wanted.get(key)
            if current is None or (interval or 1e18) < (current[1] or 1e18):
                wanted[key] = (ref, interval)

        for watches in self._config_watches.values():
            for w in watches:
                if w.from_ref.kind is ReferenceKind.DOCKER_IMAGE:
                    add(w.key, references.parse(w.from_ref.name), w.interval)
        for stream_wanted in self._stream_watches.values():
            for key, (ref, interval) in stream_wanted.items():
                add(key, ref, interval)
        self.watcher.set_watches(wanted)

    # Config and stream changes (wired from the engine / API) ------------------------------
    async def check_buildconfig(self, config: buildconfigs.BuildConfig) -> None:
        """Refuse (Invalid, 422) bad ImageChange triggers and build chains that loop."""
        errors = imagechange.check_triggers(config)
        if not errors and imagechange.could_close_cycle(config):
            cycle = imagechange.find_cycle(await self.engine.store.list_buildconfigs(), config)
            if cycle:
                errors.append(
                    FieldError(
                        "spec.triggers",
                        "the ImageChange triggers and outputs form a build cycle: "
                        + " → ".join(cycle),
                    )
                )
        if errors:
            raise Invalid(buildconfigs.KIND, config.name, errors)

    async def config_changed(self, config: buildconfigs.BuildConfig, *, created: bool) -> None:
        """Re-index a stored config and evaluate its triggers against the images known now.

        A new config builds once when its images resolve (unless a ConfigChange build
        already used them); a changed one (unpaused, a trigger now naming a tag already
        watched) builds when an image differs from what its trigger last started.
        """
        self._index_config(config)
        if not self._started:
            return  # start() indexes every stored config and polls their images first
        self._sync_watches()
        if (config.namespace, config.name) in self._config_watches:
            await self.trigger(config, {}, observed_at=None)

    async def config_deleted(self, namespace: str, name: str) -> None:
        self._unindex_config((namespace, name))
        self._sync_watches()
        await self._ensure_open()
        await self.streams.delete_trigger_states(namespace, name)

    async def stream_changed(
        self,
        stream: imagestreams.ImageStream,
        previous: imagestreams.ImageStream | None = None,
    ) -> None:
        """A stream was created or replaced: (re)start its scheduled imports and import,
        once, every tag whose ``from`` is new (OpenShift imports a spec tag on create and
        when it changes, scheduled or not).

        With a shared store ``previous`` is not needed: what this replica saw last is
        compared, whichever of this call and the store's watch comes first acts, and only
        the leader imports (a follower's API only stores the stream)."""
        if self.shared:
            await self._stream_seen(stream)
            return
        self._index_stream(stream)
        self._sync_watches()
        await self._import_new_tags(stream, previous)

    async def _import_new_tags(
        self, stream: imagestreams.ImageStream, previous: imagestreams.ImageStream | None
    ) -> None:
        before = {t.name: t.from_ref for t in previous.tags} if previous is not None else {}
        for tag in stream.tags:
            if tag.from_ref is None:
                continue
            key = tag_key(references.parse(tag.from_ref.name))
            digest = self.watcher.last_digest(key)
            if tag.scheduled and digest:
                await self._import(stream.namespace, stream.name, tag.name, key, digest, None)
            elif not tag.scheduled and before.get(tag.name) != tag.from_ref:
                self._background(self.import_once(stream.namespace, stream.name, tag.name))

    async def _stream_seen(self, stream: imagestreams.ImageStream) -> None:
        """A shared stream as it is now (from this replica's API or the store's watch):
        index it; on the leader, import what its spec changed and evaluate the configs
        watching a tag whose newest image changed (read afresh from the store, so a late
        event can never start a build on an image that is no longer the newest)."""
        ident = (stream.namespace, stream.name)
        before = self._seen_streams.get(ident)
        self._seen_streams[ident] = stream
        self._index_stream(stream)
        self._sync_watches()
        if not self.is_leader:
            return
        if before is None or before.tags != stream.tags:
            await self._import_new_tags(stream, before)
        for tag, items in sorted(stream.history.items()):
            newest = before.latest(tag) if before is not None else None
            if items and (newest is None or newest.image != items[0].image):
                key = imagechange.istag_key(stream.namespace, stream.name, tag)
                for ident in sorted(self._by_key.get(key, ())):
                    await self._evaluate_or_later(ident)

    async def import_once(self, namespace: str, stream: str, tag: str) -> None:
        """Import a spec tag's ``from`` now; a failure goes into the tag's conditions."""
        try:
            current = await self.streams.get_stream(namespace, stream)
        except NotFound:
            return
        spec = next((t for t in current.tags if t.name == tag), None)
        if spec is None or spec.from_ref is None:
            return
        ref = references.parse(spec.from_ref.name)
        try:
            digest = await self.client.head_digest(ref)
        except (PermanentError, TemporaryError) as e:
            reason = (
                "NotFound"
                if isinstance(e, TagNotFound)
                else "Unauthorized"
                if isinstance(e, RegistryAuthError)
                else "InternalError"
            )
            await self._import_failed(namespace, stream, tag, reason, str(e))
            return
        await self._import(namespace, stream, tag, tag_key(ref), digest, None)

    async def _import_failed(
        self, namespace: str, stream: str, tag: str, reason: str, message: str
    ) -> None:
        log.info("import of %s/%s:%s failed: %s", namespace, stream, tag, message)
        failure = ImportFailure(tag=tag, reason=reason, message=message, time=self.engine.clock())
        await self.streams.set_import_failure(namespace, stream, tag, failure)

    async def stream_deleted(self, namespace: str, name: str) -> None:
        self._unindex_stream((namespace, name))
        self._seen_streams.pop((namespace, name), None)
        self._sync_watches()

    async def build_finished(self, build: Build) -> None:
        """A complete build that output to an ImageStreamTag adds the image to the stream."""
        await self._ensure_open()
        to = build.spec.output.to
        digest = build.status.output_digest
        if build.phase is not Phase.COMPLETE or to is None or not digest:
            return
        if to.kind is not ReferenceKind.IMAGE_STREAM_TAG or not self.stream_registry:
            return
        stream, _, tag = to.name.partition(":")
        namespace = to.namespace or build.namespace
        image = imagestreams.repository(self.stream_registry, namespace, stream)
        await self.record_stream_image(namespace, stream, tag, digest, f"{image}@{digest}", None)

    async def resolve_request(
        self,
        namespace: str,
        name: str,
        request: requests.BuildRequest,
        config: buildconfigs.BuildConfig | None = None,
    ) -> requests.BuildRequest:
        """Resolve what a new build of ``name`` uses, as OpenShift does at instantiation.

        An ImageStreamTag strategy ``from`` (Docker, Source or Custom) is pinned to the
        stream's newest image (refused, naming the stream tag, while it has none); an
        ImageStreamTag output must name an existing stream (OpenShift's
        InvalidOutputReference). A build not started by an image change records what every
        ImageChange trigger resolves to now, so that image does not start another build.
        ``config`` is the caller's copy when it has one (a webhook's, from the repository
        index): reading it from the store again would cost every delivery a store read.
        """
        await self._ensure_open()
        if config is None:
            config = await self.engine.store.get_buildconfig(namespace, name)
        await self._check_output(config)
        ref, path = imagechange.strategy_from(config)
        pinned: str | None = None
        if request.from_image is None and ref is not None:
            if ref.kind is ReferenceKind.IMAGE_STREAM_TAG:
                pinned = await self._stream_image(ref, namespace, path)
                request = replace(request, from_image=imagechange.pinned_from(pinned))
        elif request.from_image is not None and not imagechange.is_image_change(request):
            return request  # the caller chose the image; the triggers did not resolve it
        if imagechange.is_image_change(request):
            return request
        watched = imagechange.watched_images(config)
        if not watched:
            return request
        known = await self._known_images(config)
        if pinned is not None:
            for w in watched:
                if w.is_strategy_from:
                    known[w.key] = pinned
        return imagechange.annotate(request, imagechange.resolved_images(config, known))

    async def _stream_image(self, ref: ObjectReference, namespace: str, path: str) -> str:
        stream_name, _, tag = ref.name.partition(":")
        stream_ns = ref.namespace or namespace
        try:
            stream = await self.streams.get_stream(stream_ns, stream_name)
        except NotFound as e:
            raise Conflict(
                f"{path} names ImageStreamTag {stream_ns}/{ref.name}, "
                "but that image stream does not exist"
            ) from e
        latest = stream.latest(tag)
        if latest is None:
            raise Conflict(
                f"ImageStreamTag {stream_ns}/{ref.name} has no image yet; build or import one first"
            )
        return latest.docker_image_reference

    async def _check_output(self, config: buildconfigs.BuildConfig) -> None:
        to = config.spec.output.to
        if to is None or to.kind is not ReferenceKind.IMAGE_STREAM_TAG:
            return
        stream_name = to.name.partition(":")[0]
        stream_ns = to.namespace or config.namespace
        try:
            await self.streams.get_stream(stream_ns, stream_name)
        except NotFound as e:
            reason = Reason.INVALID_OUTPUT_REFERENCE
            raise Conflict(
                f"{reason.value}: spec.output.to names ImageStreamTag {stream_ns}/{to.name}, "
                f"but image stream {stream_ns}/{stream_name} does not exist; create it first"
            ) from e

    async def status_entries(self, config: buildconfigs.BuildConfig) -> list[dict[str, Any]]:
        """``status.imageChangeTriggers`` for the API, with any watch error as message."""
        await self._ensure_open()
        return imagechange.status_entries(config, await self._states(config, write=False))

    async def _states(
        self, config: buildconfigs.BuildConfig, *, write: bool
    ) -> dict[int, imagechange.TriggerState]:
        """The trigger states: exported, stored here, corrected by the config's builds."""
        local = {
            **imagechange.read_states(config),
            **await self.streams.trigger_states(config.namespace, config.name),
        }
        query = stores.BuildQuery(namespace=config.namespace, config_name=config.name)
        built = imagechange.states_from_builds([b async for b in self.engine.all_builds(query)])
        states = imagechange.reconcile(config, local, built)
        changed = [s for i, s in states.items() if local.get(i) != s]
        if write and changed:
            await self.streams.put_trigger_states(config.namespace, config.name, changed)
        return states

    # Events -------------------------------------------------------------------------------
    def submit(
        self,
        notification: Notification,
        *,
        trusted: bool,
        signers: frozenset[ConfigId] | None = None,
    ) -> int:
        """Handle a notification in the background; returns how many pushes it carries.

        The hook answers at once: confirming a digest can take a registry round trip.
        ``signers``: see :meth:`handle_push`.
        """
        observed = self._monotonic()
        for push in notification.pushes:
            self._background(self._handle_safely(push, observed, trusted=trusted, signers=signers))
        return len(notification.pushes)

    async def _handle_safely(
        self,
        push: ImagePush,
        observed: float,
        *,
        trusted: bool,
        signers: frozenset[ConfigId] | None,
    ) -> None:
        try:
            await self.handle_push(push, observed, trusted=trusted, signers=signers)
        except (TemporaryError, PermanentError) as e:
            log.warning("registry notification for %s not acted on: %s", push.key, e)
        except Exception:
            log.exception("registry notification for %s failed", push.key)

    def watches(self, key: str, signers: frozenset[ConfigId] | None = None) -> bool:
        """Whether anything watches ``key``; with ``signers``, whether one of them does."""
        if signers is not None:
            return not signers.isdisjoint(self._by_key.get(key, ()))
        return key in self._by_key or key in self._imports

    async def handle_push(
        self,
        push: ImagePush,
        observed_at: float,
        *,
        trusted: bool,
        signers: frozenset[ConfigId] | None = None,
    ) -> None:
        """A tag moved (notification or poll): confirm the digest if needed, then act.

        A notification the registry repeats (the same event id: distribution retries until
        it gets a 2xx) is acted on once; a new push of an earlier digest is a new event.

        ``signers``: the delivery was authenticated with these configs' own secrets (a
        GitHub trigger's), not a server-wide one. Whoever holds a config's secret can sign
        anything, so only what one of them watches is acted on, and a ``trusted`` digest
        is believed for them alone; everything else watching the tag (other tenants'
        configs, stream imports) acts on the digest the registry confirms with a HEAD.
        """
        key = push.key
        if not self.watches(key, signers):
            return
        handled = (push.source.value, push.delivery_id, key) if push.delivery_id else None
        if handled is not None and handled in self._handled:
            return
        if signers is not None and push.digest != self.watcher.last_digest(key):
            if trusted and push.digest:
                await self._fire_vouched(key, push, signers, observed_at)
                others = self._by_key.get(key, set()) - signers
                if not others and key not in self._imports:
                    self._remember(handled)
                    return
            trusted = False  # the others hear of the move only as the registry confirms it
        digest = push.digest if trusted and push.digest else None
        if digest is None:
            digest = await self.client.head_digest(push.reference)
        previous = self.watcher.last_digest(key)
        self.watcher.note_digest(key, digest)
        if previous != digest:
            metrics.DIGESTS_SEEN.labels(push.source.value).inc()
        try:
            await self._moved(key, push.reference, digest, observed_at)
        except BaseException:
            # Not acted on everywhere: the next poll must see the move again (and a
            # redelivery must not be taken for a repeat).
            if self.watcher.last_digest(key) == digest:
                self.watcher.note_digest(key, previous)
            raise
        self._remember(handled)

    def _remember(self, handled: tuple[str, str, str] | None) -> None:
        if handled is not None:
            self._handled[handled] = None
            while len(self._handled) > HANDLED_DELIVERIES:
                self._handled.popitem(last=False)

    async def _fire_vouched(
        self, key: str, push: ImagePush, signers: frozenset[ConfigId], observed_at: float
    ) -> None:
        """Fire the signing configs watching ``key`` with the digest their own secret
        vouched for. The watcher is not told (the digest is not confirmed), so the
        image counts for those configs alone (:meth:`_known_images`) until the registry
        confirms a digest of the tag."""
        assert push.digest is not None
        image_id = str(push.reference.with_digest(push.digest))
        done = True
        for ident in sorted(self._by_key.get(key, set()) & signers):
            self._vouched.setdefault(key, {})[ident] = image_id
            done = await self._fire_one(ident, key, image_id, observed_at) and done
        if not done:
            raise TemporaryError(f"{key} moving to {push.digest} was not acted on; retried")

    async def on_poll_change(self, push: ImagePush, observed_at: float) -> None:
        assert push.digest is not None
        await self._moved(push.key, push.reference, push.digest, observed_at)

    async def _moved(
        self, key: str, ref: references.ImageReference, digest: str, observed_at: float | None
    ) -> None:
        """Fire every config watching ``key`` and import into every stream tag that does,
        each on its own: one that fails leaves the others alone. Raises TemporaryError at
        the end when something is worth retrying, so the caller (the watcher, a
        notification) reports this move again; those that acted dedupe then."""
        image_id = str(ref.with_digest(digest))
        # Confirmed: it supersedes what any config's own secret vouched for.
        self._vouched.pop(key, None)
        done = await self._fire(key, image_id, observed_at)
        for namespace, stream, tag in sorted(self._imports.get(key, ())):
            try:
                await self._import(namespace, stream, tag, key, digest, observed_at)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("import of %s into %s/%s:%s failed", key, namespace, stream, tag)
                done = False
        if not done:
            raise TemporaryError(f"{key} moving to {digest} was not acted on everywhere; retried")

    async def _import(
        self,
        namespace: str,
        stream: str,
        tag: str,
        key: str,
        digest: str,
        observed_at: float | None,
    ) -> None:
        ref = references.parse(key)
        await self.record_stream_image(
            namespace, stream, tag, digest, str(ref.with_digest(digest)), observed_at
        )
        await self.streams.set_import_failure(namespace, stream, tag, None)

    async def record_stream_image(
        self,
        namespace: str,
        stream: str,
        tag: str,
        digest: str,
        image_ref: str,
        observed_at: float | None,
    ) -> None:
        """Add the image to the stream's tag history; a new item fires its watchers."""
        event = imagestreams.TagEvent(
            docker_image_reference=image_ref, image=digest, created=self.engine.clock()
        )
        try:
            updated, changed = await self.streams.record_tag(namespace, stream, tag, event)
        except NotFound:
            log.info("image stream %s/%s is gone; %s not recorded", namespace, stream, image_ref)
            return
        seen = self._seen_streams.get((namespace, stream))
        if seen is not None:
            # Its watch event then finds nothing new to fire. Only the history: a spec
            # change this replica has not handled yet must still look new to it.
            self._seen_streams[(namespace, stream)] = replace(seen, history=updated.history)
        if changed:
            # Each watcher is decided on its own. The item is recorded, so no retry of the
            # move would report it again: one that failed for now is evaluated again later.
            key = imagechange.istag_key(namespace, stream, tag)
            for ident in sorted(self._by_key.get(key, ())):
                if not await self._fire_one(ident, key, image_ref, observed_at):
                    self._reevaluate_later(ident)

    async def _fire(self, key: str, image_id: str, observed_at: float | None) -> bool:
        """Decide for every config watching ``key``; False when one failed in a way worth
        retrying (see :meth:`_fire_one`)."""
        done = True
        for ident in sorted(self._by_key.get(key, ())):
            done = await self._fire_one(ident, key, image_id, observed_at) and done
        return done

    async def _fire_one(
        self, ident: ConfigId, key: str, image_id: str, observed_at: float | None
    ) -> bool:
        """Decide for one config, isolated from the others watching the same image.

        A config triggerd cannot read (stored by kubectl, Invalid) or whose build cannot
        be made is logged and skipped: retrying cannot help until it changes, and a change
        evaluates it again. A temporary failure (or a bug) returns False: its trigger did
        not fire, so the move must be reported again."""
        namespace, name = ident
        try:
            config = await self.engine.store.get_buildconfig(namespace, name)
            await self.trigger(config, {key: image_id}, observed_at=observed_at)
        except asyncio.CancelledError:
            raise
        except NotFound:
            return True
        except (Invalid, Conflict, PermanentError) as e:
            log.warning("%s/%s: %s not acted on: %s", namespace, name, image_id, e)
            return True
        except TemporaryError as e:
            log.warning("%s/%s: %s not acted on yet: %s", namespace, name, image_id, e)
            return False
        except Exception:
            log.exception("%s/%s: acting on %s failed", namespace, name, image_id)
            return False
        return True

    async def trigger(
        self,
        config: buildconfigs.BuildConfig,
        images: Mapping[str, str],
        *,
        observed_at: float | None,
    ) -> Build | None:
        """Decide for ``config`` with every image it watches as now known; start ≤ 1 build.

        Under the config's lock, so a notification and a poll of one move decide one after
        the other and the second sees the first's build. Only the leader acts.
        """
        if not self.is_leader:
            return None
        ident = (config.namespace, config.name)
        async with self._locks.setdefault(ident, asyncio.Lock()):
            resolved = {**await self._known_images(config), **images}
            if not any(w.key in resolved for w in imagechange.watched_images(config)):
                return None  # nothing resolved yet: nothing can fire
            states = await self._states(config, write=True)
            decision = imagechange.decide(
                config,
                states,
                resolved,
                now=self.engine.clock(),
                initial_build=self.initial_build,
            )
            return await self._start(config, decision, observed_at)

    async def _start(
        self,
        config: buildconfigs.BuildConfig,
        decision: imagechange.Decision,
        observed_at: float | None,
    ) -> Build | None:
        """Start the ONE build ``decision`` asks for, then store the trigger states (the
        build itself records them too: see :meth:`_states`)."""
        if decision.request is None:
            if decision.states:
                await self.streams.put_trigger_states(
                    config.namespace, config.name, decision.states
                )
            return None
        try:
            result = await self.engine.start_builds(
                [
                    StartRequest(
                        namespace=config.namespace,
                        config_name=config.name,
                        request=decision.request,
                        config=config,
                    )
                ]
            )
        except (Conflict, Invalid) as e:
            # Cannot be instantiated (an output stream that does not exist, a stream tag
            # without an image): the triggers say why; a later image or change retries.
            log.info("%s/%s: image change build not created: %s", config.namespace, config.name, e)
            current = await self.streams.trigger_states(config.namespace, config.name)
            await self.streams.put_trigger_states(
                config.namespace,
                config.name,
                [
                    replace(
                        current.get(i) or imagechange.TriggerState(index=i), message=str(e)[:1000]
                    )
                    for i in decision.fired
                ],
            )
            return None
        await self.streams.put_trigger_states(config.namespace, config.name, decision.states)
        if observed_at is not None:
            metrics.TRIGGER_LATENCY.observe(max(0.0, self._monotonic() - observed_at))
        return result.builds[0] if result.builds else None

    async def _known_images(self, config: buildconfigs.BuildConfig) -> dict[str, str]:
        known: dict[str, str] = {}
        for w in imagechange.watched_images(config):
            if w.from_ref.kind is ReferenceKind.IMAGE_STREAM_TAG:
                stream_name, _, tag = w.from_ref.name.partition(":")
                try:
                    stream = await self.streams.get_stream(
                        w.from_ref.namespace or config.namespace, stream_name
                    )
                except NotFound:
                    continue
                latest = stream.latest(tag)
                if latest is not None:
                    known[w.key] = latest.docker_image_reference
            else:
                vouched = self._vouched.get(w.key, {}).get((config.namespace, config.name))
                digest = self.watcher.last_digest(w.key)
                if vouched:
                    known[w.key] = vouched
                elif digest:
                    known[w.key] = str(references.parse(w.from_ref.name).with_digest(digest))
        return known

    async def _on_watch_error(self, key: str, message: str) -> None:
        """Put a watch error (auth, scope, missing tag) on every trigger that watches it
        and on every stream tag importing it; an empty message clears it."""
        for namespace, name in sorted(self._by_key.get(key, ())):
            watched = [w for w in self._config_watches.get((namespace, name), ()) if w.key == key]
            states = await self.streams.trigger_states(namespace, name)
            updates = [
                replace(
                    states.get(w.index) or imagechange.TriggerState(index=w.index), message=message
                )
                for w in watched
            ]
            await self.streams.put_trigger_states(namespace, name, updates)
        reason = self.watcher.last_error_reason(key)
        for namespace, stream, tag in sorted(self._imports.get(key, ())):
            if not message:
                await self.streams.set_import_failure(namespace, stream, tag, None)
            else:
                label = _IMPORT_REASONS.get(reason, "InternalError") if reason else "InternalError"
                await self._import_failed(namespace, stream, tag, label, message)


def _config_mark(config: buildconfigs.BuildConfig) -> str:
    """What a config's triggers depend on: its spec and annotations (pausing)."""
    return json.dumps(
        [config.raw.get("spec"), dict(config.meta.annotations)], sort_keys=True, default=str
    )


def registry_access(
    settings: Settings,
) -> tuple[Callable[[str], bool], Callable[[str], Credentials | None]]:
    """``insecure`` and ``credentials`` lookups for a RegistryClient, from the settings'
    ``registries`` map (``insecure``, ``authFile``: a docker config JSON read once)."""
    loaded: dict[str, dict[str, Credentials]] = {}

    def insecure(host: str) -> bool:
        return settings.registry(host).insecure

    def credentials(host: str) -> Credentials | None:
        path = settings.registry(host).auth_file
        if not path:
            return None
        if path not in loaded:
            loaded[path] = load_docker_config(path)
        return loaded[path].get(host)

    return insecure, credentials


def create_runtime(
    engine: Engine,
    session: aiohttp.ClientSession | None = None,
    *,
    stream_registry: str | None = None,
    initial_build: bool = True,
) -> ImageChangeRuntime:
    """The runtime server.py wires: registry access per ``settings.registries``, polling
    at ``settings.imagePollInterval``, and streams where the engine keeps its state:
    ImageStream custom resources (and the BuildConfigs' status) with the Kubernetes
    store, which every replica shares, else ``<dataDir>/imagestreams.db``."""
    insecure, credentials = registry_access(engine.settings)
    return ImageChangeRuntime(
        engine,
        streams=stream_store_for(engine, stream_registry),
        client=RegistryClient(session, insecure=insecure, credentials=credentials),
        initial_build=initial_build,
        stream_registry=stream_registry,
    )


def stream_store_for(engine: Engine, stream_registry: str | None) -> ImageStreamStore:
    """The stream store that goes with the engine's store."""
    # Imported here, as server.py imports the stores (this module is light: the Kubernetes
    # client itself is loaded only when a Kube connects).
    from triggerd.store.kubernetes import KubernetesStore

    if isinstance(engine.store, KubernetesStore):
        from triggerd.images.streams_kubernetes import KubernetesStreamsStore

        return KubernetesStreamsStore(
            engine.store.kube, engine.store.namespace, registry=stream_registry
        )
    return StreamsStore(Path(engine.settings.data_dir) / streams_store.FILE_NAME)
