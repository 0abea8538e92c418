"""The orchestrator: the one place that wires intake, store, scheduling and executors.

Requests (REST, CLI, webhooks) come in through the methods here; each is validated, written
to the store (durably, before the caller answers), and then the scheduler is woken. The
scheduler loop asks :mod:`triggerd.scheduling` what to start or cancel, moves builds through
:mod:`triggerd.lifecycle`, runs them on the executor and persists every report. It also
recovers builds a crash left behind, prunes history and reloads BuildConfig files.
Pure decisions stay in the stage modules; this module only carries them out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from triggerd import lifecycle, manifests, matching, metrics, policies, scheduling
from triggerd.errors import BadRequest, Conflict, Invalid, NotFound, TemporaryError
from triggerd.executors import base as executors
from triggerd.model import buildconfigs, builds, requests
from triggerd.model import meta as metas
from triggerd.model.buildconfigs import RunPolicy
from triggerd.model.builds import Build, Phase, Reason
from triggerd.model.specs import SourceRevision
from triggerd.settings import Settings
from triggerd.store import base as stores

log = logging.getLogger(__name__)

#: Reasons that are triggerd's or the platform's fault rather than the build's: phase Error.
ERROR_REASONS = frozenset(
    {Reason.SERVER_RESTARTED, Reason.BUILD_POD_DELETED, Reason.CANNOT_CREATE_BUILD_POD}
)
CONFIG_CHANGE_CAUSE = "Build configuration change"
PAGE_SIZE = 500
UNFINISHED = frozenset({Phase.NEW, Phase.PENDING, Phase.RUNNING})
ACTIVE = frozenset({Phase.PENDING, Phase.RUNNING})


class ImageChangeHooks(Protocol):
    """What the engine tells image change triggering (triggerd.imagechange_runtime)."""

    async def check_buildconfig(self, config: buildconfigs.BuildConfig) -> None: ...

    async def config_changed(self, config: buildconfigs.BuildConfig, *, created: bool) -> None: ...

    async def config_deleted(self, namespace: str, name: str) -> None: ...

    async def build_finished(self, build: Build) -> None: ...

    async def resolve_request(
        self,
        namespace: str,
        name: str,
        request: requests.BuildRequest,
        config: buildconfigs.BuildConfig | None = None,
    ) -> requests.BuildRequest: ...

    async def status_entries(self, config: buildconfigs.BuildConfig) -> list[dict[str, Any]]: ...


class LogSink(Protocol):
    def delete(self, namespace: str, name: str) -> None: ...


class InputSink(Protocol):
    """Where binary builds' uploads are kept (triggerd.inputs.BinaryInputs)."""

    def kept(self) -> list[str]: ...

    def release(self, digests: Iterable[str]) -> list[str]: ...


class Leadership(Protocol):
    """Leader election (triggerd.leader.LeaderElector): who may schedule and run builds."""

    @property
    def is_leader(self) -> bool: ...


#: BuildConfigs from files applied at once: enough to fill the store's commit groups.
FILE_APPLY_CONCURRENCY = 64

#: How often the leader forgets old delivery ids and removes uploads no build uses.
HOUSEKEEPING_SECONDS = 3600.0

#: How often a leader looks for builds another replica created (no in-process wake then).
SHARED_STORE_POLL_SECONDS = 2.0
#: While every run slot is taken, new builds cannot start: the queue depth gauge is then
#: refreshed at most this often instead of on every new build.
QUEUE_DEPTH_REFRESH_SECONDS = 1.0

#: How often a read-modify-write of a build may lose a race before the caller hears of it.
REWRITE_ATTEMPTS = 20

#: How long a ``path`` secret's file is trusted before it is read again (rotation).
SECRET_FILE_CACHE_SECONDS = 5.0

#: A final state the store would not take (API down) is written again after this long.
FINISH_RETRY_SECONDS = 1.0
FINISH_RETRY_MAX_SECONDS = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class StartRequest:
    namespace: str
    config_name: str
    request: requests.BuildRequest
    #: create the build only if it gets this number (the store numbers atomically), else
    #: Conflict: a config's first build is started once however many callers try
    expect_number: int | None = None
    #: the config as the caller found it (a webhook, in the repository index), so that
    #: resolving the request reads no store; the store still numbers from its own copy
    config: buildconfigs.BuildConfig | None = None


class AlreadyBuilt(Conflict):
    """A StartRequest's expected number was taken: someone started that build already."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Skipped:
    """A StartRequest that was not carried out, and why (a binary config without upload)."""

    start: StartRequest
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Started:
    """What :meth:`Engine.start_builds` did: the store's answer, and the starts skipped."""

    builds: tuple[Build, ...]
    #: the delivery was seen before: ``builds`` are the ones it created then
    duplicate: bool = False
    skipped: tuple[Skipped, ...] = ()


class Engine:
    def __init__(
        self,
        *,
        settings: Settings,
        store: stores.Store,
        executor: executors.Executor,
        logs: LogSink,
        clock: Callable[[], datetime] = metas.now,
        leadership: Leadership | None = None,
        inputs: InputSink | None = None,
    ) -> None:
        self.settings = settings
        #: None: uploads are never removed (tests, or no binary builds here)
        self.inputs = inputs
        self._housekeeping_task: asyncio.Task[None] | None = None
        #: None: this process always leads (one machine). Else only the leader schedules,
        #: runs, recovers and prunes; every replica serves the API and webhooks.
        self.leadership = leadership
        self._watch_task: asyncio.Task[None] | None = None
        self._secrets_task: asyncio.Task[None] | None = None
        self._secret_names: set[str] = set()
        self.store = store
        self.executor = executor
        self.logs = logs
        self.clock = clock
        self._wake = asyncio.Event()
        # A pass that found every run slot taken leaves the scheduler "saturated": new
        # queued builds alone then start nothing, so they do not cost a pass each (at a
        # thousand webhooks a second those passes were a fifth of triggerd's CPU). Only a
        # change that can free a slot (a build ending, a cancel, a retry) runs a pass.
        self._saturated = False
        self._slot_change = True
        self._depth_refreshed = -QUEUE_DEPTH_REFRESH_SECONDS
        self._changed = asyncio.Condition()
        self._running: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self.repo_index = matching.RepoIndex()
        #: set by server.py once the image change runtime exists; None: no image triggers
        self.image_change: ImageChangeHooks | None = None
        #: a store that watches BuildConfigs (Kubernetes): configs applied with kubectl
        #: come in through the watch, and the leader starts every new config's first build
        self._configs_watched = hasattr(store, "watch_buildconfigs")
        #: the last version of each config the watch reported (to tell user changes from
        #: status changes) and the configs it could not accept, with why
        self._watched: dict[tuple[str, str], buildconfigs.BuildConfig] = {}
        self._unaccepted: dict[tuple[str, str], str] = {}
        #: ``path`` secrets read from files: name -> (read at, key -> value)
        self._secret_files: dict[str, tuple[float, dict[str, str]]] = {}
        #: builds whose cancel this leader has passed on to the executor
        self._cancels_sent: set[tuple[str, str]] = set()

    # Life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the store, recover what a crash left, load config files, start scheduling."""
        await self.store.open()
        for config in await self.store.list_buildconfigs():
            self.repo_index.put(config)
            self._secret_names.update(_secret_names(config))
        if self.leadership is None:
            await self.recover()
        if self.settings.build_configs:
            await self.load_buildconfig_files(self.settings.build_configs)
        watch = getattr(self.store, "watch_buildconfigs", None)
        if watch is not None:
            # `kubectl apply` of a BuildConfig reaches every replica's repository index.
            self._watch_task = asyncio.create_task(
                self._follow_configs(lambda: watch(include_invalid=True)), name="bc watch"
            )
        if hasattr(self.store, "refresh_secrets"):
            await self.store.refresh_secrets(self._secret_names)
            self._secrets_task = asyncio.create_task(self._refresh_secrets(), name="secrets")
        if self.leadership is None or self.leadership.is_leader:
            await self._lead()

    async def on_leadership(self, leader: bool) -> None:
        """LeaderElector callback: start leading (recover, schedule) or stop (Jobs go on;
        the next leader adopts them).

        Starting may fail half-way (the store unreachable during recovery): the elector
        then calls ``on_leadership(False)`` and tries again, so every step here may run
        more than once — recover skips builds already followed, first builds are numbered.
        """
        if leader:
            if self._loop_task is not None or self._stopping:
                return
            await self.recover()
            if self._configs_watched:
                await self._sweep_configs()
            await self._lead()
        else:
            await self._stop_leading()

    def _leads(self) -> bool:
        return self.leadership is None or self.leadership.is_leader

    async def _lead(self) -> None:
        # The first pass runs before anything else, so what it sees on disk is settled.
        await self._housekeep_once()
        self._loop_task = asyncio.create_task(self._schedule_forever(), name="scheduler")
        self._housekeeping_task = asyncio.create_task(
            self._housekeep_forever(), name="housekeeping"
        )
        self.wake()

    async def _housekeep_forever(self) -> None:
        while not self._stopping:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            await self._housekeep_once()

    async def _housekeep_once(self) -> None:
        try:
            await self.housekeeping()
        except Exception:
            # Nothing here is urgent: the next interval tries again.
            log.exception("housekeeping failed; retrying at the next interval")

    async def housekeeping(self) -> None:
        """Forget delivery ids older than deliveryRetention (redeliveries after that start
        builds again, as documented) and remove uploads no stored build names."""
        retention = timedelta(seconds=self.settings.delivery_retention_seconds)
        forgotten = await self.store.prune_deliveries(self.clock() - retention)
        if forgotten:
            log.info("forgot %d delivery id(s) older than deliveryRetention", forgotten)
        if self.inputs is not None:
            kept = await asyncio.to_thread(self.inputs.kept)
            await self._release_inputs(set(kept))

    async def _release_inputs(self, digests: set[str]) -> None:
        """Remove the uploads among ``digests`` that no stored build names any more."""
        if self.inputs is None or not digests:
            return
        unused = digests - await self.store.binary_inputs_in_use(digests)
        if unused:
            await asyncio.to_thread(self.inputs.release, unused)

    async def _stop_leading(self) -> None:
        for task in (self._loop_task, self._housekeeping_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._loop_task = self._housekeeping_task = None
        self._cancels_sent.clear()
        running = list(self._running.values())
        for run in running:
            run.cancel()
        for run in running:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run

    async def _follow_configs(self, watch: Callable[[], AsyncIterator[Any]]) -> None:
        while not self._stopping:
            try:
                async for event in watch():
                    try:
                        await self._config_event(event)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        # One config's trouble must not stop the others' updates.
                        log.exception("handling a BuildConfig change failed")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("watching BuildConfigs failed; retrying")
                await asyncio.sleep(1.0)

    async def _config_event(self, event: Any) -> None:
        """A BuildConfig came, changed or went, whoever did it (REST on any replica, or
        ``kubectl``). Every replica keeps its routing index, secrets and image triggers
        current; the leader alone reports configs it cannot accept and starts new configs'
        first builds, so they behave as configs created through the REST API."""
        key = (event.namespace, event.name)
        if event.type == "DELETED":
            self._watched.pop(key, None)
            self._unaccepted.pop(key, None)
            self.repo_index.remove(*key)
            return
        if event.config is None:
            # Stored, but not a BuildConfig triggerd can use (kubectl skips our checks).
            self._watched.pop(key, None)
            self._unaccepted[key] = event.problem
            self.repo_index.remove(*key)
            if self._leads():
                await self._report_config(*key, event.problem)
            return
        config: buildconfigs.BuildConfig = event.config
        before = self._watched.get(key)
        self._watched[key] = config
        self._unaccepted.pop(key, None)
        self.repo_index.put(config)
        names = _secret_names(config) - self._secret_names
        self._secret_names.update(names)
        refresh = getattr(self.store, "refresh_secrets", None)
        if names and refresh is not None:
            await refresh(names)
        changed = before is None or _user_part(before.raw) != _user_part(config.raw)
        if not self._leads():
            return
        if changed:
            await self._accept_config(config)
        if before is None:  # new, or accepted for the first time (fixed after kubectl apply)
            await self._first_build(config)

    async def _sweep_configs(self) -> None:
        """On becoming leader: what the previous leader may not have done for the configs
        the watch has reported (first builds, feedback on configs not accepted)."""
        for (namespace, name), problem in list(self._unaccepted.items()):
            await self._report_config(namespace, name, problem)
        for config in list(self._watched.values()):
            await self._accept_config(config)
            await self._first_build(config)

    async def _accept_config(self, config: buildconfigs.BuildConfig) -> None:
        """Run the checks the REST API runs before storing; the config's status says
        what is wrong (kubectl did not hear it), and is cleared once it is right."""
        problem: str | None = None
        if self.image_change is not None:
            try:
                await self.image_change.check_buildconfig(config)
            except Invalid as e:
                problem = str(e)
        if problem is None and not _has_valid_condition(config):
            return  # nothing to say and nothing said before: no write
        await self._report_config(config.namespace, config.name, problem)

    async def _report_config(self, namespace: str, name: str, problem: str | None) -> None:
        report = getattr(self.store, "report_buildconfig", None)
        if report is None:
            return
        if problem is not None:
            log.warning("BuildConfig %s/%s is not accepted: %s", namespace, name, problem)
        try:
            await report(namespace, name, problem)
        except (NotFound, TemporaryError) as e:
            log.warning("could not record the state of BuildConfig %s/%s: %s", namespace, name, e)

    async def _first_build(self, config: buildconfigs.BuildConfig) -> None:
        """A config that never built (status.lastVersion 0) gets its ConfigChange build,
        as one created through the REST API does. It must have number 1, so however many
        leaders, replicas or events try, one build starts. (Image change triggers follow
        the same watch in the image change runtime.)"""
        if config.last_version != 0 or (config.namespace, config.name) in self._unaccepted:
            return
        await self._on_created(config)

    async def _refresh_secrets(self) -> None:
        """Keep the webhook secrets (read synchronously on the webhook path) current."""
        while not self._stopping:
            await asyncio.sleep(self.settings.kubernetes.secret_cache_seconds)
            try:
                await self.store.refresh_secrets(self._secret_names)  # type: ignore[attr-defined]
            except Exception:
                log.exception("refreshing webhook secrets failed")

    async def stop(self) -> None:
        """Stop scheduling; running host builds are cut off and recovered as Error at the
        next start (Kubernetes Jobs keep running and are adopted)."""
        self._stopping = True
        for background in (self._watch_task, self._secrets_task):
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        for leading in (self._loop_task, self._housekeeping_task):
            if leading is not None:
                leading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await leading
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.store.close()

    def wake(self) -> None:
        """Run a scheduling pass soon: something may have freed a run slot."""
        self._slot_change = True
        self._wake.set()

    def _wake_for_queued(self) -> None:
        """New builds were queued: a pass can start them only if a slot is free."""
        self._wake.set()

    async def recover(self) -> None:
        page = await self.store.list_builds(
            stores.BuildQuery(phases=frozenset({Phase.PENDING, Phase.RUNNING}))
        )
        for build in page.builds:
            if (build.namespace, build.name) in self._running:
                continue  # followed already (recovery runs again after a failed start)
            outcome = await self.executor.recover(build)
            if outcome is None:
                self._spawn(build)
                continue
            log.warning(
                "build %s/%s was left %s: %s",
                build.namespace,
                build.name,
                build.phase.value,
                outcome,
            )
            await self._finish(build.namespace, build.name, outcome)

    # BuildConfigs -------------------------------------------------------------------------
    async def create_buildconfig(
        self, doc: Any, *, namespace: str = metas.DEFAULT_NAMESPACE
    ) -> buildconfigs.BuildConfig:
        config = buildconfigs.parse(doc, default_namespace=namespace)
        if self.image_change is not None:
            await self.image_change.check_buildconfig(config)
        created = await self.store.create_buildconfig(config)
        await self._created(created)
        return created

    async def _created(self, created: buildconfigs.BuildConfig) -> None:
        self.repo_index.put(created)
        # With a watched store the leader also tries this when the watch reports the
        # config; the first build's number decides which one starts it (exactly one).
        await self._on_created(created)
        if self.image_change is not None:
            await self.image_change.config_changed(created, created=True)

    async def replace_buildconfig(
        self, doc: Any, *, namespace: str, name: str
    ) -> buildconfigs.BuildConfig:
        config = buildconfigs.parse(doc, default_namespace=namespace)
        if config.name != name or config.namespace != namespace:
            raise Conflict(
                f"metadata.name/namespace {config.namespace}/{config.name} do not match "
                f"the URL {namespace}/{name}"
            )
        if self.image_change is not None:
            await self.image_change.check_buildconfig(config)
        replaced = await self.store.replace_buildconfig(
            config, expected_resource_version=config.meta.resource_version or None
        )
        self.repo_index.put(replaced)
        if self.image_change is not None:
            await self.image_change.config_changed(replaced, created=False)
        return replaced

    async def apply_buildconfig(
        self, doc: Any, *, namespace: str = metas.DEFAULT_NAMESPACE
    ) -> tuple[buildconfigs.BuildConfig, str]:
        """Create or replace; returns the stored config and "created"/"configured"/"unchanged"."""
        config = buildconfigs.parse(doc, default_namespace=namespace)
        if self.image_change is not None:
            await self.image_change.check_buildconfig(config)
        try:
            current = await self.store.get_buildconfig(config.namespace, config.name)
        except NotFound:
            created = await self.store.create_buildconfig(config)
            await self._created(created)
            return created, "created"
        if _user_part(current.raw) == _user_part(config.raw):
            return current, "unchanged"
        replaced = await self.store.replace_buildconfig(config)
        self.repo_index.put(replaced)
        if self.image_change is not None:
            await self.image_change.config_changed(replaced, created=False)
        return replaced, "configured"

    async def _on_created(self, config: buildconfigs.BuildConfig) -> None:
        """A ConfigChange trigger starts the first build of a new config, as in OpenShift."""
        if config.paused or not any(
            t.type is buildconfigs.TriggerType.CONFIG_CHANGE for t in config.triggers
        ):
            return
        cause = {"message": CONFIG_CHANGE_CAUSE}
        start = StartRequest(
            namespace=config.namespace,
            config_name=config.name,
            request=requests.BuildRequest(triggered_by=(cause,)),
            expect_number=config.last_version + 1,
            config=config,
        )
        try:
            await self.start_builds([start])
        except AlreadyBuilt:
            log.info("%s/%s: its first build was started already", config.namespace, config.name)
        except requests.BinaryInputRequired:
            # A trigger never brings an upload: the first build is the first upload's.
            log.info(
                "%s/%s: ConfigChange trigger skipped: the config has binary source, so its "
                "builds start with instantiatebinary (an upload), not from a trigger",
                config.namespace,
                config.name,
            )
        except requests.ConfigPaused:
            log.info("%s/%s: ConfigChange trigger skipped: paused", config.namespace, config.name)
        except Conflict as e:
            # FROM an ImageStreamTag without an image yet: as in OpenShift, the ImageChange
            # trigger starts the first build once the stream has one.
            log.info("%s/%s: no ConfigChange build yet: %s", config.namespace, config.name, e)

    async def delete_buildconfig(self, namespace: str, name: str) -> None:
        unfinished = stores.BuildQuery(namespace=namespace, config_name=name, phases=UNFINISHED)
        async for build in self.all_builds(unfinished):
            with contextlib.suppress(Conflict, NotFound):
                await self.cancel_build(namespace, build.name)
        everything = stores.BuildQuery(namespace=namespace, config_name=name)
        doomed = [b async for b in self.all_builds(everything)]
        await self.store.delete_buildconfig(namespace, name)
        self.repo_index.remove(namespace, name)
        if self.image_change is not None:
            await self.image_change.config_deleted(namespace, name)
        for build in doomed:
            self.logs.delete(namespace, build.name)
        await self._release_inputs(_binary_inputs(doomed))

    async def load_buildconfig_files(self, paths: Iterable[Path]) -> list[str]:
        """Apply every BuildConfig in these files/folders; returns "<ns>/<name> <result>".

        Different configs are applied concurrently (up to FILE_APPLY_CONCURRENCY), so the
        store commits them in groups instead of one fsync after another; documents naming
        the same config are applied in file order, so the last one wins as before.
        """
        by_config: dict[tuple[str, str], list[tuple[int, str, Any]]] = {}
        for index, (source, doc) in enumerate(manifests.read_documents(paths)):
            if doc.get("kind") not in (None, buildconfigs.KIND):
                log.info("%s: skipping %s (only BuildConfigs are loaded)", source, doc.get("kind"))
                continue
            meta = doc.get("metadata")
            meta = meta if isinstance(meta, Mapping) else {}
            # Only for grouping: apply_buildconfig validates names and namespaces itself.
            key = (str(meta.get("namespace") or metas.DEFAULT_NAMESPACE), str(meta.get("name")))
            by_config.setdefault(key, []).append((index, str(source), doc))
        results: dict[int, str] = {}
        failures: dict[int, Exception] = {}
        limit = asyncio.Semaphore(FILE_APPLY_CONCURRENCY)

        async def apply_in_order(docs: list[tuple[int, str, Any]]) -> None:
            async with limit:
                for index, source, doc in docs:
                    try:
                        config, result = await self.apply_buildconfig(doc)
                    except Exception as e:
                        failures[index] = e  # later documents of this config are not applied
                        return
                    results[index] = f"{config.namespace}/{config.name} {result}"
                    log.info(
                        "%s: buildconfig %s/%s %s", source, config.namespace, config.name, result
                    )

        await asyncio.gather(*(apply_in_order(docs) for docs in by_config.values()))
        if failures:
            # The other configs are applied (as `kubectl apply -f` does); the caller hears
            # about the first bad document in file order.
            raise failures[min(failures)]
        return [results[index] for index in sorted(results)]

    async def configs_for_repository(self, urls: Iterable[str]) -> list[buildconfigs.BuildConfig]:
        """The configs whose git uri names one of ``urls`` (the org-wide hook route), from
        the in-memory index: a delivery's routing costs no store read."""
        return self.repo_index.lookup(urls)

    def webhook_secret(self, hook: buildconfigs.WebHookTrigger) -> str | None:
        """The trigger's secret: inline, or key WebHookSecretKey of the named secret."""
        if hook.secret:
            return hook.secret
        return self.named_secret(hook.secret_reference)

    def named_secret(self, name: str | None, key: str = "WebHookSecretKey") -> str | None:
        if not name:
            return None
        cached = getattr(self.store, "cached_secret", None)
        if cached is not None:
            # Kubernetes mode: a Secret of the namespace, kept fresh by _refresh_secrets
            value: str | None = cached(name, key)
            if value is not None:
                return value
        secret = self.settings.secrets.get(name)
        if secret is None:
            return None
        value = secret.data.get(key)
        if value is not None or not secret.path:
            return value
        return self._secret_file(name, secret.path, key)

    def _secret_file(self, name: str, path: str, key: str) -> str | None:
        """Key ``key`` of a ``path`` secret, read as the local executor reads them: a file
        holds the value itself; a directory (a mounted Kubernetes Secret, one file per key)
        holds it in the file named after the key. Read again after a few seconds, so a
        rotated secret is picked up without a restart; one trailing newline (``echo``) is
        not part of the value."""
        cache_key = f"{name}\0{key}"
        now = time.monotonic()
        cached = self._secret_files.get(cache_key)
        if cached is not None and now - cached[0] < SECRET_FILE_CACHE_SECONDS:
            return cached[1].get(key)
        location = Path(path)
        target = location / key if location.is_dir() else location
        try:
            text = target.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            log.warning("secret %s: cannot read %s (%s)", name, target, type(e).__name__)
            self._secret_files[cache_key] = (now, {})
            return None
        if text.endswith("\r\n"):
            text = text[:-2]
        elif text.endswith("\n"):
            text = text[:-1]
        self._secret_files[cache_key] = (now, {key: text})
        return text

    # Builds -------------------------------------------------------------------------------
    async def instantiate(self, namespace: str, name: str, request: requests.BuildRequest) -> Build:
        result = await self.start_builds(
            [StartRequest(namespace=namespace, config_name=name, request=request)]
        )
        return result.builds[0]

    async def start_builds(
        self,
        starts: Sequence[StartRequest],
        *,
        delivery: stores.Delivery | None = None,
        skip_refused: bool = False,
    ) -> Started:
        """Create builds (and record the delivery) durably, then wake the scheduler.

        Every start is first checked against its config (:func:`requests.refusal`: a config
        with binary source needs an upload), the one check for every way a build starts —
        REST, webhooks, ConfigChange and ImageChange triggers. A refused start raises
        :class:`requests.BinaryInputRequired` and creates nothing, or with ``skip_refused``
        (a webhook delivery naming several configs) is left out and reported in
        ``skipped``; the rest are created. The store's numbering checks again (the config
        may change meanwhile), so no build without its upload is ever stored.
        """
        checked: list[StartRequest] = []
        skipped: list[Skipped] = []
        for s in starts:
            config = s.config or await self.store.get_buildconfig(s.namespace, s.config_name)
            refused = requests.refusal(config, s.request)
            if refused is None:
                # The config read here spares image change resolution another read.
                checked.append(s if s.config is not None else replace(s, config=config))
            elif skip_refused:
                log.info("%s/%s: not started: %s", s.namespace, s.config_name, refused)
                skipped.append(Skipped(start=s, reason=str(refused)))
            else:
                raise refused
        if not checked:
            return Started(builds=(), skipped=tuple(skipped))
        result = await self._start_checked(checked, delivery=delivery)
        return Started(builds=result.builds, duplicate=result.duplicate, skipped=tuple(skipped))

    async def _start_checked(
        self, starts: Sequence[StartRequest], *, delivery: stores.Delivery | None
    ) -> stores.Instantiated:
        if self.image_change is not None:
            # A config FROM an ImageStreamTag builds on the stream's newest image.
            starts = [
                replace(
                    s,
                    request=await self.image_change.resolve_request(
                        s.namespace, s.config_name, s.request, s.config
                    ),
                )
                for s in starts
            ]
        created = self.clock()
        new = [
            stores.NewBuild(
                namespace=s.namespace,
                config_name=s.config_name,
                make=_factory(s.request, created, s.expect_number),
            )
            for s in starts
        ]
        return await self._create(new, delivery=delivery)

    async def clone(
        self, namespace: str, name: str, request: requests.BuildRequest | None = None
    ) -> Build:
        """A new build of the same BuildConfig made from build ``name``'s own spec
        (``oc start-build --from-build``, OpenShift's generator.Clone): the same revision,
        source, strategy, output, env and build args, and the same upload for a binary
        build, whatever the config says now. It is numbered from the config like any
        build, so NotFound when the config is gone (as OpenShift's clone fails then).
        ``request`` may add env, build args and noCache (Invalid for anything that would
        change what is built)."""
        request = request or requests.BuildRequest()
        requests.check_clone_request(request, name)
        original = await self.store.get_build(namespace, name)
        config_name = original.meta.annotations.get(builds.CONFIG_ANNOTATION) or (
            original.config_name
        )
        if not config_name:
            raise BadRequest(f'build "{name}" was not started from a BuildConfig')
        refused = requests.missing_binary_input(
            config_name, original.spec.source, original.meta.annotations
        )
        if refused is not None:
            raise requests.BinaryInputRequired(refused)
        created = self.clock()

        def make(config: buildconfigs.BuildConfig, number: int) -> Build:
            return requests.clone(
                original, config, request, number=number, uid=str(uuid.uuid4()), created=created
            )

        new = stores.NewBuild(namespace=namespace, config_name=config_name, make=make)
        result = await self._create([new], delivery=None)
        return result.builds[0]

    async def _create(
        self, new: Sequence[stores.NewBuild], *, delivery: stores.Delivery | None
    ) -> stores.Instantiated:
        """Store new builds, then what follows a build's creation (supersede, wake)."""
        result = await self.store.instantiate(
            new, delivery=delivery, queue_limit=self.settings.queue_limit
        )
        if not result.duplicate and result.builds:
            for build in result.builds:
                if policies.policy_of(build) is RunPolicy.SERIAL_LATEST_ONLY:
                    await self._supersede(build)
            self._wake_for_queued()
            await self._notify()
        return result

    async def cancel_build(self, namespace: str, name: str) -> Build:
        """Cancel as ``oc cancel-build`` does: queued builds at once, running ones are stopped.

        The mark is written with the resourceVersion it was read at, so a concurrent write
        (the leader recording a stage) cannot drop it: whoever loses re-reads and applies
        its change again. The leader also stops every build marked so (another replica's
        cancel may reach the executor before the build's Job exists)."""
        now = self.clock()
        queued = False  # whether the write that went in cancelled a queued build

        def mark(build: Build) -> Build | None:
            nonlocal queued
            queued = build.phase is Phase.NEW
            if build.phase is Phase.CANCELLED:
                return None
            if queued:
                return lifecycle.cancel(build, now=now)
            if build.status.cancelled:
                return None
            return lifecycle.request_cancel(build)

        async with self._lock(namespace, name):
            build = await self._rewrite(namespace, name, mark)
        if build.phase is Phase.CANCELLED:
            if queued:
                # It never ran, so no executor reports it: count it and apply the
                # history limits here (SerialLatestOnly supersedes end here too).
                await self._ended(build)
            self.wake()
            return build
        await self.executor.cancel(namespace, name)
        return build

    async def delete_build(self, namespace: str, name: str) -> Build:
        """Delete a build and its log; an unfinished one is cancelled (stopped) first."""
        build = await self.store.get_build(namespace, name)
        if not build.phase.terminal:
            with contextlib.suppress(Conflict):
                await self.cancel_build(namespace, name)
        await self.store.delete_builds(namespace, [name])
        self.logs.delete(namespace, name)
        await self._release_inputs(_binary_inputs([build]))
        await self._notify()
        return build

    async def wait_for_change(self, within: float) -> None:
        """Return after any build changed, or after ``within`` seconds."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await self._changed.wait()

    # Scheduling ---------------------------------------------------------------------------
    async def _schedule_forever(self) -> None:
        full = True  # the first pass after a start looks at everything once
        while not self._stopping:
            if self.leadership is None:
                await self._wake.wait()
            else:
                # Builds created by a webhook on another replica never wake this one.
                try:
                    async with asyncio.timeout(SHARED_STORE_POLL_SECONDS):
                        await self._wake.wait()
                except TimeoutError:
                    self._slot_change = True  # another replica may have ended or cancelled
            self._wake.clear()
            if not self._leads():
                continue  # lost the Lease: on_leadership(False) is about to stop this loop
            if not full and self._saturated and not self._slot_change:
                await self._refresh_queue_depth()
                continue
            self._slot_change = False
            try:
                await (self.schedule_everything() if full else self.schedule_once())
                full = False
            except Exception:
                # One bad pass must not stop every future build; the next wake retries.
                log.exception("scheduling pass failed")
                await asyncio.sleep(1.0)
                self.wake()

    async def schedule_everything(self) -> scheduling.Decision:
        """One pass over every unfinished build: after a start, where a crash may have left
        queued builds a SerialLatestOnly config should have cancelled."""
        unfinished = [b async for b in self.all_builds(stores.BuildQuery(phases=UNFINISHED))]
        decision = scheduling.decide(unfinished, max_concurrent=self.settings.max_concurrent_builds)
        metrics.QUEUE_DEPTH.set(scheduling.queue_depth(unfinished))
        active = sum(1 for b in unfinished if b.phase in ACTIVE)
        self._saturated = active + len(decision.start) >= self.settings.max_concurrent_builds
        await self._stop_cancelled(b for b in unfinished if b.phase in ACTIVE)
        await self._carry_out(decision)
        return decision

    async def schedule_once(self) -> scheduling.Decision:
        """A pass that costs the same however long the queue is.

        Only the active builds, the queue summary and, for the configs whose queues are
        oldest, their first few New builds are read. A config without an active build
        always has a startable build and at most ``len(active)`` configs have one, so the
        oldest ``len(active) + free`` queues hold a build for every free slot if any exists.
        """
        active = [b async for b in self.all_builds(stores.BuildQuery(phases=ACTIVE))]
        await self._stop_cancelled(active)
        free = self.settings.max_concurrent_builds - len(active)
        self._saturated = free <= 0
        if free <= 0:
            metrics.BUILDS_ACTIVE.set(len(active))
            await self._refresh_queue_depth()
            return scheduling.Decision()
        summary = await self.store.queue_summary()
        self._depth_refreshed = asyncio.get_running_loop().time()
        metrics.QUEUE_DEPTH.set(summary.total)
        if not summary.configs:
            metrics.BUILDS_ACTIVE.set(len(active))
            return scheduling.Decision()
        candidates = list(active)
        whole: set[tuple[str, str]] = set()
        for namespace, config in summary.configs[: len(active) + free]:
            page = await self.store.list_builds(
                stores.BuildQuery(
                    namespace=namespace,
                    config_name=config,
                    phases=frozenset({Phase.NEW}),
                    limit=free + 1,
                )
            )
            candidates.extend(page.builds)
            if page.continue_token is None:
                whole.add((namespace, config))
        decision = scheduling.decide(candidates, max_concurrent=self.settings.max_concurrent_builds)
        # Cancelling needs a config's whole queue in view (the newest build survives);
        # start_builds supersedes at creation, so a partial view only defers this.
        decision = replace(
            decision,
            cancel=tuple(b for b in decision.cancel if (b.namespace, b.config_name) in whole),
        )
        await self._carry_out(decision)
        # A start skipped because its build was cancelled meanwhile came with a wake().
        self._saturated = len(active) + len(decision.start) >= self.settings.max_concurrent_builds
        return decision

    async def _refresh_queue_depth(self) -> None:
        """The queue depth gauge, read at most every QUEUE_DEPTH_REFRESH_SECONDS."""
        now = asyncio.get_running_loop().time()
        if now - self._depth_refreshed < QUEUE_DEPTH_REFRESH_SECONDS:
            return
        self._depth_refreshed = now
        metrics.QUEUE_DEPTH.set((await self.store.queue_summary()).total)

    async def _stop_cancelled(self, active: Iterable[Build]) -> None:
        """Builds marked cancelled (on any replica) that this leader runs are stopped here:
        the replica that took the cancel deleted the Job, but the Job may not have existed
        yet then."""
        for build in active:
            key = (build.namespace, build.name)
            if build.status.cancelled and key in self._running and key not in self._cancels_sent:
                self._cancels_sent.add(key)
                try:
                    await self.executor.cancel(build.namespace, build.name)
                except Exception:
                    self._cancels_sent.discard(key)  # the next pass tries again
                    log.exception("stopping cancelled build %s/%s failed", *key)

    async def _carry_out(self, decision: scheduling.Decision) -> None:
        for build in decision.cancel:
            with contextlib.suppress(Conflict, NotFound):
                await self.cancel_build(build.namespace, build.name)
        now = self.clock()

        def to_pending(build: Build) -> Build | None:
            if build.phase is not Phase.NEW:
                return None  # cancelled or started meanwhile (another replica's write)
            return lifecycle.advance(build, Phase.PENDING, now=now)

        for build in decision.start:
            key = (build.namespace, build.name)
            if key in self._running:
                continue
            try:
                async with self._lock(*key):
                    pending = await self._rewrite(*key, to_pending)
            except (Conflict, NotFound):
                continue
            if pending.phase is Phase.PENDING:
                self._spawn(pending)
        metrics.BUILDS_ACTIVE.set(len(self._running))

    async def _supersede(self, newest: Build) -> None:
        """SerialLatestOnly: a new build cancels the older queued builds of its config at
        once, so queues of such configs stay one build long."""
        page = await self.store.list_builds(
            stores.BuildQuery(
                namespace=newest.namespace,
                config_name=newest.config_name,
                phases=frozenset({Phase.NEW}),
            )
        )
        for build in policies.SUPERSEDED[RunPolicy.SERIAL_LATEST_ONLY](page.builds):
            if build.number < newest.number:
                with contextlib.suppress(Conflict, NotFound):
                    await self.cancel_build(build.namespace, build.name)

    def _spawn(self, build: Build) -> None:
        key = (build.namespace, build.name)
        task = asyncio.create_task(self._run(build), name=f"build {build.namespace}/{build.name}")
        self._running[key] = task

        def done(_task: asyncio.Task[None]) -> None:
            if self._running.get(key) is task:
                del self._running[key]
            self._cancels_sent.discard(key)

        task.add_done_callback(done)

    async def _run(self, build: Build) -> None:
        reporter = _Reporter(self, build.namespace, build.name)
        error = False
        try:
            outcome = await self.executor.run(build, reporter)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("executor failed on %s/%s", build.namespace, build.name)
            outcome = executors.Failed(
                reason=Reason.GENERIC_BUILD_FAILED,
                message=f"triggerd could not run the build: {e}",
                log_snippet="",
            )
            error = True
        delay = FINISH_RETRY_SECONDS
        while True:
            try:
                await self._finish(build.namespace, build.name, outcome, error=error)
                break
            except TemporaryError as e:
                # The outcome is known and only this task has it: keep it until the store
                # takes it (a leader change cancels this task; the next leader adopts).
                log.warning(
                    "recording the end of %s/%s failed (%s); retrying in %.0f s",
                    build.namespace,
                    build.name,
                    e,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, FINISH_RETRY_MAX_SECONDS)
        self.wake()

    async def _finish(
        self, namespace: str, name: str, outcome: executors.Outcome, *, error: bool = False
    ) -> None:
        now = self.clock()

        def end(build: Build) -> Build | None:
            if build.phase.terminal:
                return None
            if isinstance(outcome, executors.Succeeded):
                build = lifecycle.record_output(
                    build, digest=outcome.digest, image_reference=outcome.image_reference
                )
                return lifecycle.advance(build, Phase.COMPLETE, now=now)
            if isinstance(outcome, executors.Cancelled) or build.status.cancelled:
                # cancelled through another replica: its Job vanished under the leader
                return lifecycle.advance(
                    build, Phase.CANCELLED, now=now, reason=Reason.CANCELLED_BUILD
                )
            target = Phase.ERROR if error or outcome.reason in ERROR_REASONS else Phase.FAILED
            build = lifecycle.record_log_snippet(build, outcome.log_snippet)
            return lifecycle.advance(
                build,
                target,
                now=now,
                reason=outcome.reason,
                message=outcome.message or outcome.reason.message,
            )

        ended = False

        def end_once(build: Build) -> Build | None:
            nonlocal ended
            new = end(build)
            ended = new is not None
            return new

        async with self._lock(namespace, name):
            try:
                build = await self._rewrite(namespace, name, end_once)
            except NotFound:
                return  # deleted while running
        if ended:
            await self._ended(build)

    async def _ended(self, build: Build) -> None:
        """What follows a build's end, once: metrics, image streams, history limits."""
        namespace, name = build.namespace, build.name
        _count(build)
        if self.image_change is not None:
            try:
                # An output to an ImageStreamTag records the image and fires build chains.
                await self.image_change.build_finished(build)
            except Exception:
                log.exception("recording %s/%s in its image stream failed", namespace, name)
        try:
            await self._prune(build)
        except Exception:
            # The build's end is recorded; history is trimmed again at the next end.
            log.exception("applying the history limits after %s/%s failed", namespace, name)

    async def _prune(self, finished: Build) -> None:
        """Keep only the newest successful/failed builds the config's history limits allow."""
        try:
            config = await self.store.get_buildconfig(finished.namespace, finished.config_name)
        except NotFound:
            return
        complete: list[Build] = []
        failed: list[Build] = []
        query = stores.BuildQuery(namespace=config.namespace, config_name=config.name)
        async for b in self.all_builds(query):
            if b.phase is Phase.COMPLETE:
                complete.append(b)
            elif b.phase in (Phase.FAILED, Phase.ERROR, Phase.CANCELLED):
                failed.append(b)
        doomed = _oldest_beyond(complete, config.successful_builds_history_limit)
        doomed += _oldest_beyond(failed, config.failed_builds_history_limit)
        if doomed:
            await self.store.delete_builds(config.namespace, [b.name for b in doomed])
            for build in doomed:
                self.logs.delete(build.namespace, build.name)
            await self._release_inputs(_binary_inputs(doomed))

    # Persistence helpers ------------------------------------------------------------------
    async def all_builds(self, query: stores.BuildQuery) -> AsyncIterator[Build]:
        """Every build matching ``query``, read page by page so memory stays bounded."""
        token: str | None = None
        while True:
            page = await self.store.list_builds(
                replace(query, limit=PAGE_SIZE, continue_token=token)
            )
            for build in page.builds:
                yield build
            token = page.continue_token
            if not token:
                return

    async def update(self, namespace: str, name: str, change: Callable[[Build], Build]) -> Build:
        """Apply ``change`` to the unfinished build as stored now (finished ones stay)."""

        def unless_finished(build: Build) -> Build | None:
            return None if build.phase.terminal else change(build)

        async with self._lock(namespace, name):
            return await self._rewrite(namespace, name, unless_finished)

    async def _rewrite(
        self, namespace: str, name: str, change: Callable[[Build], Build | None]
    ) -> Build:
        """Read, change, write with the read's resourceVersion as the precondition.

        Another replica may write the same build between the read and the write (a cancel
        taken by a follower while the leader records a stage); the loser of that race gets
        Conflict, reads again and applies its change to the new state, so neither write
        is lost. ``change`` returns None to leave the build as it is; it may run more than
        once and must be pure."""
        for _ in range(REWRITE_ATTEMPTS):
            current = await self.store.get_build(namespace, name)
            wanted = change(current)
            if wanted is None or wanted is current:
                return current
            try:
                saved = await self.store.update_build(
                    wanted, expected_resource_version=current.meta.resource_version or None
                )
            except Conflict:
                continue
            await self._notify()
            return saved
        raise TemporaryError(f"build {namespace}/{name} keeps changing; try again", 1.0)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault((namespace, name), asyncio.Lock())


class _Reporter:
    """Persists an executor's progress reports for one build.

    Progress is worth less than the build: when the store cannot take a report for a while
    (TemporaryError) the report is logged and dropped, and the build goes on; its end is
    recorded however long that takes (Engine._run)."""

    def __init__(self, engine: Engine, namespace: str, name: str) -> None:
        self.engine, self.namespace, self.name = engine, namespace, name

    async def running(self) -> None:
        now = self.engine.clock()

        def to_running(build: Build) -> Build:
            if build.phase is Phase.PENDING:
                return lifecycle.advance(build, Phase.RUNNING, now=now)
            return build

        await self._report("Running", to_running)

    async def revision(self, revision: SourceRevision) -> None:
        await self._report("the revision", lambda b: lifecycle.record_revision(b, revision))

    async def stage(self, stage: builds.Stage) -> None:
        await self._report(f"stage {stage.name.value}", lambda b: lifecycle.record_stage(b, stage))

    async def _report(self, what: str, change: Callable[[Build], Build]) -> None:
        try:
            await self.engine.update(self.namespace, self.name, change)
        except TemporaryError as e:
            log.warning("could not record %s of %s/%s: %s", what, self.namespace, self.name, e)


def _secret_names(config: buildconfigs.BuildConfig) -> set[str]:
    """The Secrets a config's webhook triggers name (secretReference, bearer secret)."""
    names: set[str] = set()
    for trigger in config.triggers:
        if trigger.webhook is not None:
            for name in (trigger.webhook.secret_reference, trigger.webhook.bearer_secret_reference):
                if name:
                    names.add(name)
    return names


def _factory(
    request: requests.BuildRequest, created: datetime, expect_number: int | None = None
) -> stores.BuildFactory:
    def make(config: buildconfigs.BuildConfig, number: int) -> Build:
        if expect_number is not None and number != expect_number:
            # Raised inside the store's numbering: nothing is created, no number is used.
            raise AlreadyBuilt(
                f"build {expect_number} of {config.namespace}/{config.name} exists already"
            )
        return requests.instantiate(
            config, request, number=number, uid=str(uuid.uuid4()), created=created
        )

    return make


def _binary_inputs(gone: Iterable[Build]) -> set[str]:
    """The uploads these builds named (each may still be named by another build)."""
    return {
        digest
        for build in gone
        if (digest := build.meta.annotations.get(builds.BINARY_INPUT_ANNOTATION))
    }


def _oldest_beyond(items: list[Build], keep: int) -> list[Build]:
    ordered = sorted(items, key=lambda b: b.number)
    return ordered[: max(0, len(ordered) - keep)]


def _user_part(raw: Mapping[str, Any]) -> Any:
    """What a user controls in a BuildConfig document (apply compares only this)."""
    meta = dict(raw.get("metadata") or {})
    for key in ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields"):
        meta.pop(key, None)
    return {"metadata": meta, "spec": raw.get("spec")}


def _has_valid_condition(config: buildconfigs.BuildConfig) -> bool:
    """Whether the stored config carries triggerd's acceptance condition (to be cleared)."""
    status = config.raw.get("status")
    conditions = status.get("conditions") if isinstance(status, Mapping) else None
    return isinstance(conditions, list) and any(
        isinstance(c, Mapping) and c.get("type") == buildconfigs.VALID_CONDITION for c in conditions
    )


def _count(build: Build) -> None:
    strategy = build.spec.strategy.type.value
    metrics.BUILDS.labels(build.phase.value, build.status.reason, strategy).inc()
    duration = build.status.duration_ns
    if duration is not None:
        metrics.BUILD_DURATION.labels(build.phase.value, strategy).observe(duration / 1e9)
