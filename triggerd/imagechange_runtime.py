"""Image change triggering at run time: watches, notifications, and the builds they start.

The I/O side of :mod:`triggerd.imagechange`. It keeps an index from watched image (a
registry tag or an ImageStreamTag) to the BuildConfigs whose ImageChange triggers name it,
feeds the distinct registry tags to :class:`~triggerd.images.watcher.TagWatcher`, takes
registry notifications (confirming any digest it cannot trust with a HEAD), records new
images in image streams (imports and builds that output to an ImageStreamTag), and for
every affected BuildConfig asks :func:`triggerd.imagechange.decide` what to do. A build is
started through the engine with a delivery key derived from (config, fired image ids), so
the same digest can never start a second build even across a crash; trigger states are
then written to :class:`~triggerd.images.streams_store.StreamsStore`. It takes the engine
as a parameter and never reaches into its internals; it never parses provider JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
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
from triggerd.images.registry_client import Credentials, RegistryClient, load_docker_config
from triggerd.images.streams_store import StreamsStore
from triggerd.images.watcher import TagWatcher
from triggerd.model import buildconfigs, imagestreams, requests
from triggerd.model.builds import Build, Phase
from triggerd.model.specs import ReferenceKind
from triggerd.settings import Settings
from triggerd.store import base as stores

log = logging.getLogger(__name__)

ConfigId = tuple[str, str]
DELIVERY_PREFIX = "imagechange:"


def delivery_key(namespace: str, name: str, fired: Mapping[int, str]) -> str:
    """The build store's dedup key for "these triggers of this config saw these images"."""
    text = "|".join(f"{i}={fired[i]}" for i in sorted(fired))
    digest = hashlib.sha256(text.encode()).hexdigest()[:40]
    return f"{DELIVERY_PREFIX}{namespace}/{name}:{digest}"


async def start_image_change_build(
    engine: Engine,
    streams: StreamsStore,
    config: buildconfigs.BuildConfig,
    decision: imagechange.Decision,
    *,
    observed_at: float | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> Build | None:
    """Start the ONE build ``decision`` asks for and record the trigger states.

    The build and the delivery record commit in one build-store transaction; a repeat of
    the same (config, images) returns the existing build and creates nothing.
    """
    if decision.request is None:
        if decision.states:
            await streams.put_trigger_states(config.namespace, config.name, decision.states)
        return None
    fired = {
        s.index: s.last_triggered_image_id for s in decision.states if s.index in decision.fired
    }
    result = await engine.start_builds(
        [
            StartRequest(
                namespace=config.namespace, config_name=config.name, request=decision.request
            )
        ],
        delivery=stores.Delivery(
            key=delivery_key(config.namespace, config.name, fired), received=engine.clock()
        ),
    )
    if result.duplicate:
        # These images already started their build (a late or repeated event for an older
        # digest): the recorded states are newer, keep them.
        return result.builds[0] if result.builds else None
    await streams.put_trigger_states(config.namespace, config.name, decision.states)
    if observed_at is not None:
        metrics.TRIGGER_LATENCY.observe(max(0.0, monotonic() - observed_at))
    return result.builds[0] if result.builds else None


class ImageChangeRuntime:
    """Owns the tag watcher and the watched-image index; the engine owns builds."""

    def __init__(
        self,
        engine: Engine,
        *,
        streams: StreamsStore,
        client: RegistryClient,
        initial_build: bool = True,
        stream_registry: str | None = None,
        watcher: TagWatcher | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
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
        self._imports: dict[str, set[tuple[str, str, str]]] = {}
        self._stream_watches: dict[
            tuple[str, str], dict[str, tuple[references.ImageReference, float | None]]
        ] = {}
        self._locks: dict[ConfigId, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._poll_task: asyncio.Task[None] | None = None
        self._opened = False
        self._started = False

    # Life cycle ---------------------------------------------------------------------------
    async def _ensure_open(self) -> None:
        # The engine loads BuildConfig files inside its own start(), before this runtime is
        # started: the hooks it calls then must find the stream store open.
        if not self._opened:
            self._opened = True
            await self.streams.open()

    async def start(self, *, poll: bool = True) -> None:
        """Open the stream store, index every config and stream, start polling."""
        await self._ensure_open()
        self._started = True
        for config in await self.engine.store.list_buildconfigs():
            self._index_config(config)
        for stream in await self.streams.list_streams():
            self._index_stream(stream)
        self._sync_watches()
        if poll:
            self._poll_task = asyncio.create_task(self.watcher.run_forever(), name="tag watcher")

    async def stop(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
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

    # Index --------------------------------------------------------------------------------
    def _index_config(self, config: buildconfigs.BuildConfig) -> None:
        ident = (config.namespace, config.name)
        self._unindex_config(ident)
        watched = imagechange.watched_images(config)
        self._config_watches[ident] = watched
        for w in watched:
            self._by_key.setdefault(w.key, set()).add(ident)

    def _unindex_config(self, ident: ConfigId) -> None:
        for w in self._config_watches.pop(ident, ()):
            users = self._by_key.get(w.key)
            if users is not None:
                users.discard(ident)
                if not users:
                    del self._by_key[w.key]

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
        """Re-index a stored config; a new one builds once when its images resolve."""
        self._index_config(config)
        if not self._started:
            return  # start() indexes every stored config and polls their images first
        self._sync_watches()
        if created:
            await self.trigger(config, {}, observed_at=None)

    async def config_deleted(self, namespace: str, name: str) -> None:
        self._unindex_config((namespace, name))
        self._sync_watches()
        await self._ensure_open()
        await self.streams.delete_trigger_states(namespace, name)

    async def stream_changed(self, stream: imagestreams.ImageStream) -> None:
        self._index_stream(stream)
        self._sync_watches()
        for tag in stream.tags:
            if tag.scheduled and tag.from_ref is not None:
                key = tag_key(references.parse(tag.from_ref.name))
                digest = self.watcher.last_digest(key)
                if digest:
                    await self._import(stream.namespace, stream.name, tag.name, key, digest, None)

    async def stream_deleted(self, namespace: str, name: str) -> None:
        self._unindex_stream((namespace, name))
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
        self, namespace: str, name: str, request: requests.BuildRequest
    ) -> requests.BuildRequest:
        """Pin an ImageStreamTag strategy ``from`` to the stream's newest image.

        A build started by hand (or by a webhook) of a config FROM an ImageStreamTag must
        build on a concrete image, as OpenShift resolves it; without any image yet the
        request is refused with a message naming the stream tag.
        """
        if request.from_image is not None:
            return request
        await self._ensure_open()
        config = await self.engine.store.get_buildconfig(namespace, name)
        docker = config.spec.strategy.docker
        ref = docker.from_image if docker is not None else None
        if ref is None or ref.kind is not ReferenceKind.IMAGE_STREAM_TAG:
            return request
        stream_name, _, tag = ref.name.partition(":")
        stream_ns = ref.namespace or namespace
        try:
            stream = await self.streams.get_stream(stream_ns, stream_name)
        except NotFound as e:
            raise Conflict(
                f"spec.strategy.dockerStrategy.from names ImageStreamTag {stream_ns}/{ref.name}, "
                "but that image stream does not exist"
            ) from e
        latest = stream.latest(tag)
        if latest is None:
            raise Conflict(
                f"ImageStreamTag {stream_ns}/{ref.name} has no image yet; build or import one first"
            )
        return replace(request, from_image=imagechange.pinned_from(latest.docker_image_reference))

    async def status_entries(self, config: buildconfigs.BuildConfig) -> list[dict[str, Any]]:
        """``status.imageChangeTriggers`` for the API, with any watch error as message."""
        await self._ensure_open()
        states = {
            **imagechange.read_states(config),
            **await self.streams.trigger_states(config.namespace, config.name),
        }
        return imagechange.status_entries(config, states)

    # Events -------------------------------------------------------------------------------
    def submit(self, notification: Notification, *, trusted: bool) -> int:
        """Handle a notification in the background; returns how many pushes it carries.

        The hook answers at once: confirming a digest can take a registry round trip.
        """
        observed = self._monotonic()
        for push in notification.pushes:
            task = asyncio.create_task(self._handle_safely(push, observed, trusted=trusted))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(notification.pushes)

    async def _handle_safely(self, push: ImagePush, observed: float, *, trusted: bool) -> None:
        try:
            await self.handle_push(push, observed, trusted=trusted)
        except (TemporaryError, PermanentError) as e:
            log.warning("registry notification for %s not acted on: %s", push.key, e)
        except Exception:
            log.exception("registry notification for %s failed", push.key)

    def watches(self, key: str) -> bool:
        return key in self._by_key or key in self._imports

    async def handle_push(self, push: ImagePush, observed_at: float, *, trusted: bool) -> None:
        """A tag moved (notification or poll): confirm the digest if needed, then act."""
        key = push.key
        if not self.watches(key):
            return
        digest = push.digest if trusted and push.digest else None
        if digest is None:
            digest = await self.client.head_digest(push.reference)
        previous = self.watcher.last_digest(key)
        self.watcher.note_digest(key, digest)
        if previous != digest:
            metrics.DIGESTS_SEEN.labels(push.source.value).inc()
        await self._moved(key, push.reference, digest, observed_at)

    async def on_poll_change(self, push: ImagePush, observed_at: float) -> None:
        assert push.digest is not None
        await self._moved(push.key, push.reference, push.digest, observed_at)

    async def _moved(
        self, key: str, ref: references.ImageReference, digest: str, observed_at: float | None
    ) -> None:
        image_id = str(ref.with_digest(digest))
        await self._fire(key, image_id, observed_at)
        for namespace, stream, tag in sorted(self._imports.get(key, ())):
            await self._import(namespace, stream, tag, key, digest, observed_at)

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
            _, changed = await self.streams.record_tag(namespace, stream, tag, event)
        except NotFound:
            log.info("image stream %s/%s is gone; %s not recorded", namespace, stream, image_ref)
            return
        if changed:
            await self._fire(imagechange.istag_key(namespace, stream, tag), image_ref, observed_at)

    async def _fire(self, key: str, image_id: str, observed_at: float | None) -> None:
        for namespace, name in sorted(self._by_key.get(key, ())):
            try:
                config = await self.engine.store.get_buildconfig(namespace, name)
            except NotFound:
                continue
            await self.trigger(config, {key: image_id}, observed_at=observed_at)

    async def trigger(
        self,
        config: buildconfigs.BuildConfig,
        images: Mapping[str, str],
        *,
        observed_at: float | None,
    ) -> Build | None:
        """Decide for ``config`` with every image it watches as now known; start ≤ 1 build."""
        ident = (config.namespace, config.name)
        async with self._locks.setdefault(ident, asyncio.Lock()):
            resolved = {**await self._known_images(config), **images}
            states = {
                **imagechange.read_states(config),
                **await self.streams.trigger_states(config.namespace, config.name),
            }
            decision = imagechange.decide(
                config,
                states,
                resolved,
                now=self.engine.clock(),
                initial_build=self.initial_build,
            )
            return await start_image_change_build(
                self.engine,
                self.streams,
                config,
                decision,
                observed_at=observed_at,
                monotonic=self._monotonic,
            )

    async def trigger_index(
        self, config: buildconfigs.BuildConfig, index: int, digest: str
    ) -> Build | None:
        """The engine-facing form: trigger ``index`` of ``config`` saw ``digest``."""
        for w in imagechange.watched_images(config):
            if w.index != index:
                continue
            if w.from_ref.kind is ReferenceKind.IMAGE_STREAM_TAG:
                raise PermanentError(
                    "an ImageStreamTag trigger is fired by its stream, not a digest"
                )
            image_id = str(references.parse(w.from_ref.name).with_digest(digest))
            return await self.trigger(config, {w.key: image_id}, observed_at=None)
        raise NotFound("ImageChange trigger", f"{config.name}[{index}]")

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
                digest = self.watcher.last_digest(w.key)
                if digest:
                    known[w.key] = str(references.parse(w.from_ref.name).with_digest(digest))
        return known

    async def _on_watch_error(self, key: str, message: str) -> None:
        """Put a watch error (auth, scope, missing tag) on every trigger that watches it."""
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


def configs_watching(configs: Iterable[buildconfigs.BuildConfig], key: str) -> list[ConfigId]:
    """Which configs watch ``key`` (for callers without a runtime index, e.g. the CLI)."""
    return [
        (c.namespace, c.name)
        for c in configs
        if any(w.key == key for w in imagechange.watched_images(c))
    ]


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
    """The runtime server.py wires: streams in ``<dataDir>/imagestreams.db``, registry
    access per ``settings.registries``, polling at ``settings.imagePollInterval``."""
    insecure, credentials = registry_access(engine.settings)
    return ImageChangeRuntime(
        engine,
        streams=StreamsStore(Path(engine.settings.data_dir) / streams_store.FILE_NAME),
        client=RegistryClient(session, insecure=insecure, credentials=credentials),
        initial_build=initial_build,
        stream_registry=stream_registry,
    )
