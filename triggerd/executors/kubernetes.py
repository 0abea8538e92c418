"""The Kubernetes executor: one batch/v1 Job per Build, followed through watches.

The orchestrator hands over a Pending Build; this module renders the same buildah plan the
host executor runs (:mod:`triggerd.planning.buildah`) into a Job
(:mod:`triggerd.planning.jobs`), creates it — a 409 means the Job already exists (a
restart, another replica before a hand-over) and is adopted, never duplicated — and then
watches the Job's pod, resuming from the last resourceVersion and relisting after 410 Gone,
until the pod ends. Pod states become Reporter calls and the final Outcome; the init and
build containers' logs are streamed (follow) into the :class:`~triggerd.logs.LogStore` so
the log API works while the build runs and after the pod is gone. Cancel deletes the Job
with background propagation. After a rolling upgrade, a build's Job of the name the earlier
version gave it is adopted by :meth:`KubernetesExecutor.recover` when its uid annotation is
the build's, and followed, cancelled and deleted as a Job of today's name.

Only what the cluster says ends a build: a dropped connection, a 5xx or a throttled request
while watching, reading the Job or streaming a log is retried (the watch resumes from its
resourceVersion, the log from the byte it had reached). After a Failed or Error outcome the
Job is deleted, so nothing keeps building or pushing for a build that has ended.

It never mounts a Docker socket, never puts a secret value into a Job (Secret volumes
only), and never creates a second Job for a Build.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from triggerd.executors.base import Cancelled, Failed, Outcome, Reporter, Succeeded
from triggerd.kube import Kube, KubeError, KubernetesSettings, WatchExpired, path_for
from triggerd.logs import LogStore, LogWriter, snippet
from triggerd.model.builds import Build, Phase, Reason, StageName
from triggerd.model.specs import SourceType
from triggerd.planning import buildah, jobs
from triggerd.planning.plan import Plan

log = logging.getLogger(__name__)

#: How long after the outcome the log streams may take to drain.
LOG_DRAIN_SECONDS = 10.0
#: A stale Job of an earlier, same-named build is deleted; how often to retry the create.
STALE_JOB_ATTEMPTS = 30
STALE_JOB_WAIT_SECONDS = 1.0
#: Transient API trouble (no answer, 429, 5xx) is retried after this long, doubling.
RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 15.0
#: How often creating the Job may fail transiently before the build fails.
CREATE_ATTEMPTS = 6


@dataclass(slots=True)
class _Active:
    cancel_requested: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True)
class _Progress:
    """What has been reported for one run, so each report happens once."""

    running: bool = False
    revision: bool = False
    stages: set[StageName] = field(default_factory=set)
    pod: str = ""
    #: container name → its log can be read (set) / it will never start (finished run)
    ready: dict[str, asyncio.Event] = field(default_factory=dict)
    started: set[str] = field(default_factory=set)
    #: when the pod was first seen stopped from outside, without its Job saying why yet
    stopped_since: float | None = None


def job_options(
    settings: KubernetesSettings,
    build: Build,
    *,
    owner_builds: bool,
    layer_cache_registry: str | None = None,
    image_stream_registry: str | None = None,
) -> jobs.JobOptions:
    """The renderer's options for ``build`` (owner is the Build CR when that store is used)."""
    return jobs.JobOptions(
        namespace=settings.namespace,
        image=settings.image,
        image_pull_policy=settings.image_pull_policy,
        seccomp_profile=settings.seccomp_profile,
        apparmor_unconfined=settings.apparmor_unconfined,
        allow_privileged=settings.allow_privileged,
        storage_size_limit=settings.storage_size_limit,
        ttl_seconds_after_finished=settings.ttl_seconds_after_finished,
        requests=settings.requests,
        limits=settings.limits,
        node_selector=settings.node_selector,
        fetch_uid=settings.fetch_uid,
        insecure_registries=settings.insecure_registries,
        layer_cache_registry=layer_cache_registry,
        image_stream_registry=image_stream_registry,
        owner_uid=build.meta.uid if owner_builds else "",
    )


class KubernetesExecutor:
    """Runs builds as Jobs; implements :class:`triggerd.executors.base.Executor`."""

    def __init__(
        self,
        kube: Kube,
        settings: KubernetesSettings,
        logs: LogStore,
        *,
        owner_builds: bool = False,
        recheck_seconds: int = 30,
        layer_cache_registry: str | None = None,
        image_stream_registry: str | None = None,
        stop_explained_within: float = 60.0,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.logs = logs
        self.owner_builds = owner_builds
        #: watches end (and the Job is re-read) this often: catches Job-level failures
        self.recheck_seconds = recheck_seconds
        #: the ``layerCacheRegistry`` setting (the cache annotation of a build wins)
        self.layer_cache_registry = layer_cache_registry
        #: the ``imageStreamRegistry`` setting: ImageStreamTag outputs are pushed there
        self.image_stream_registry = image_stream_registry
        #: a pod stopped from outside whose Job still says nothing after this long was
        #: deleted under the build (the Job controller normally says so within seconds)
        self.stop_explained_within = stop_explained_within
        self._active: dict[tuple[str, str], _Active] = {}
        #: builds whose Job :meth:`recover` found under the name an earlier triggerd
        #: version gave it (:func:`jobs.legacy_name_job`): their run follows that Job
        self._legacy: dict[tuple[str, str], str] = {}

    @property
    def jobs_path(self) -> str:
        return path_for("batch/v1", "jobs", self.settings.namespace)

    @property
    def pods_path(self) -> str:
        return path_for("v1", "pods", self.settings.namespace)

    # Executor protocol -----------------------------------------------------------------
    async def run(self, build: Build, reporter: Reporter) -> Outcome:
        key = (build.namespace, build.name)
        if key in self._active:
            raise RuntimeError(f"build {build.namespace}/{build.name} is already running")
        active = self._active[key] = _Active()
        legacy = self._legacy.pop(key, None)
        try:
            options = job_options(
                self.settings,
                build,
                owner_builds=self.owner_builds,
                layer_cache_registry=self.layer_cache_registry,
                image_stream_registry=self.image_stream_registry,
            )
            try:
                refuse_unsupported(build)
                plan = buildah.render(build, jobs.plan_context(build, options))
            except buildah.Unplannable as e:
                if legacy is not None:
                    # Not to be followed any more: it must not build on unwatched.
                    await self._delete_job_quietly(legacy, uid=build.meta.uid)
                return self._refuse(build, e.reason, str(e))
            # A Job of an earlier version is told apart from another build's by its uid
            # annotation only (its name and labels do not say the namespace).
            owner = build.meta.uid if legacy is not None else ""
            if legacy is not None:
                job_name, adopted = legacy, True
            else:
                manifest = jobs.render_job(build, plan, options)
                job_name = str(manifest["metadata"]["name"])
                try:
                    missing = await self._checked_volume_sources(job_name, manifest)
                    if missing is not None:
                        return self._refuse(build, *missing)
                    adopted = await self._create_or_adopt(build, job_name, manifest)
                except KubeError as e:
                    message = f"{Reason.CANNOT_CREATE_BUILD_POD.message} {e.status} {e.message}"
                    with self.logs.open_writer(build.namespace, build.name) as writer:
                        writer.line(f"--> {message}")
                    # A create whose answer was lost may have made it after all.
                    await self._delete_job_quietly(job_name, uid=build.meta.uid)
                    return Failed(
                        reason=Reason.CANNOT_CREATE_BUILD_POD, message=message, log_snippet=""
                    )
            if active.cancel_requested:
                await self._delete_job(job_name, uid=owner)
                return Cancelled()
            try:
                outcome = await self._follow(
                    build,
                    job_name,
                    plan,
                    reporter,
                    active,
                    adopted=adopted,
                    legacy=legacy is not None,
                )
            except asyncio.CancelledError:
                raise  # this replica stops following; the Job goes on for the next leader
            except Exception:
                # The engine ends the build as Error: nothing may build on for it.
                await self._delete_job_quietly(job_name, uid=owner)
                raise
            if isinstance(outcome, Failed):
                # Ended (evicted, deleted, failed, out of time): nothing may go on building
                # or pushing for it, not even a pod the Job controller would start next.
                await self._delete_job_quietly(job_name, uid=owner)
            return outcome
        finally:
            del self._active[key]

    def _refuse(self, build: Build, reason: Reason, message: str) -> Failed:
        """The build fails before any Job exists; the log says why."""
        with self.logs.open_writer(build.namespace, build.name) as writer:
            writer.line(f"--> Build failed ({reason.value}): {message}")
        return Failed(reason=reason, message=message, log_snippet=message)

    async def _checked_volume_sources(
        self, job_name: str, manifest: dict[str, Any]
    ) -> tuple[Reason, str] | None:
        """:meth:`_missing_volume_source`, asked again when the API had trouble answering."""
        delay = RETRY_FIRST_SECONDS
        for attempt in range(CREATE_ATTEMPTS):
            try:
                return await self._missing_volume_source(job_name, manifest)
            except KubeError as e:
                if not e.transient or attempt == CREATE_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
        return None

    async def _missing_volume_source(
        self, job_name: str, manifest: dict[str, Any]
    ) -> tuple[Reason, str] | None:
        """Why the Job cannot start when a Secret or ConfigMap its pod mounts is missing
        (the kubelet would leave the pod in ContainerCreating until the deadline), or None.

        Only checked before the first create: an existing Job (adoption) already runs."""
        try:
            await self.kube.get(path_for("batch/v1", "jobs", self.settings.namespace, job_name))
            return None
        except KubeError as e:
            if not e.not_found:
                raise
        namespace = self.settings.namespace
        for volume in manifest["spec"]["template"]["spec"]["volumes"]:
            if "secret" in volume:
                plural, kind, name = "secrets", "secret", volume["secret"]["secretName"]
            elif "configMap" in volume:
                plural, kind, name = "configmaps", "config map", volume["configMap"]["name"]
            else:
                continue
            try:
                await self.kube.get(path_for("v1", plural, namespace, name))
            except KubeError as e:
                if e.status == 403:
                    # Not allowed to look (RBAC without configmaps get): the pod will tell.
                    log.warning("cannot check %s %s/%s: forbidden", kind, namespace, name)
                    continue
                if not e.not_found:
                    raise
                return _VOLUME_REASONS.get(volume["name"], Reason.FETCH_SOURCE_FAILED), (
                    f'{kind} "{name}" (volume {volume["name"]}) does not exist in '
                    f'namespace "{namespace}", where the build pod runs'
                )
        return None

    async def cancel(self, namespace: str, name: str) -> bool:
        active = self._active.get((namespace, name))
        if active is not None:
            active.cancel_requested = True
            active.wake.set()
        deleted = await self._delete_job(jobs.name_job(namespace, name))
        deleted_legacy = await self._delete_legacy_job(namespace, name)
        return deleted or deleted_legacy or active is not None

    async def _delete_legacy_job(self, namespace: str, name: str) -> bool:
        """Delete the build's Job of the name an earlier version gave it, if there is one
        whose annotations say it is this namespace's build of that name (the uid is not
        known here: a leftover of an earlier same-named build goes too, it has ended)."""
        job_name = await self._legacy_job_of(namespace, name, uid="")
        return job_name is not None and await self._delete_job(job_name)

    async def recover(self, build: Build) -> Outcome | None:
        """None when the engine should run the build again: its Job exists (adopted), or
        it is Pending and its Job was never made (the previous leader stopped in between;
        the Job's name is the build's, so a create that races another is adopted).
        Otherwise the build is over: cancelled, or its Job is gone and nothing can say how
        it went.

        A Job an earlier triggerd version made (:func:`jobs.legacy_name_job`, after a
        rolling upgrade) is the build's when its uid annotation says so: the run then
        follows that Job instead of making a second one."""
        key = (build.namespace, build.name)
        self._legacy.pop(key, None)
        try:
            job = await self.kube.get(
                path_for(
                    "batch/v1",
                    "jobs",
                    self.settings.namespace,
                    jobs.name_job(build.namespace, build.name),
                )
            )
        except KubeError as e:
            if not e.not_found:
                raise
            job = None
        annotations = ((job or {}).get("metadata") or {}).get("annotations") or {}
        owner = str(annotations.get(jobs.BUILD_UID_ANNOTATION, ""))
        if job is not None and (not owner or not build.meta.uid or owner == build.meta.uid):
            return None
        legacy = await self._legacy_job(build)
        if legacy is not None:
            log.info("adopting Job %s of an earlier triggerd version for build %s/%s",
                     legacy, build.namespace, build.name)  # fmt: skip
            self._legacy[key] = legacy
            return None
        # No Job of this build (a Job of an earlier same-named build is not its).
        if build.status.cancelled:
            return Cancelled()  # its Job was deleted by the cancel
        if build.phase is Phase.PENDING:
            return None
        return jobs.pod_deleted()

    async def _legacy_job(self, build: Build) -> str | None:
        """The name of the build's Job made by an earlier triggerd version, or None when
        there is none: one of that name whose uid annotation is another build's (the same
        name in another namespace, an earlier same-named build) is not it."""
        if not build.meta.uid:
            return None  # nothing would tell its Job from another build's
        return await self._legacy_job_of(build.namespace, build.name, uid=build.meta.uid)

    async def _legacy_job_of(self, namespace: str, name: str, *, uid: str) -> str | None:
        """The earlier version's Job name of build ``namespace/name`` when such a Job
        exists and its annotations say it is that build's (and, given ``uid``, that
        build's uid)."""
        job_name = jobs.legacy_name_job(namespace, name)
        if job_name == jobs.name_job(namespace, name):
            return None
        path = path_for("batch/v1", "jobs", self.settings.namespace, job_name)
        try:
            job = await self.kube.get(path)
        except KubeError as e:
            if e.not_found:
                return None
            raise
        return job_name if jobs.belongs_to(job, namespace, name, uid) else None

    # Following a Job ---------------------------------------------------------------------
    async def _create_or_adopt(self, build: Build, job_name: str, manifest: dict[str, Any]) -> bool:
        """Create the Job; True when it existed already and is this build's (adopted).

        A Job of the same name left by an earlier Build of the same name (its config was
        deleted and made again while the Job waited for its TTL) is not adopted: it is
        deleted and the Job made anew."""
        delay, failures = RETRY_FIRST_SECONDS, 0
        for _ in range(STALE_JOB_ATTEMPTS + CREATE_ATTEMPTS):
            try:
                try:
                    await self.kube.create(self.jobs_path, manifest)
                    return False
                except KubeError as e:
                    if not e.conflict:
                        raise
                path = path_for("batch/v1", "jobs", self.settings.namespace, job_name)
                try:
                    existing = await self.kube.get(path)
                except KubeError as e:
                    if e.not_found:
                        continue  # gone in between: create again
                    raise
            except KubeError as e:
                # A create whose answer was lost may have made the Job: the next attempt
                # finds it (409) and adopts it.
                failures += 1
                if not e.transient or failures >= CREATE_ATTEMPTS:
                    raise
                log.warning("creating Job %s failed (%s); retrying", job_name, e.status)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            owner = ((existing.get("metadata") or {}).get("annotations") or {}).get(
                jobs.BUILD_UID_ANNOTATION, ""
            )
            if not build.meta.uid or not owner or owner == build.meta.uid:
                return True
            log.warning("deleting Job %s of an earlier build of the same name", job_name)
            await self._delete_job(job_name)
            await asyncio.sleep(STALE_JOB_WAIT_SECONDS)
        raise KubeError(409, "Conflict", f"Job {job_name} of an earlier build is still there")

    async def _delete_job(self, job_name: str, *, uid: str = "") -> bool:
        """Delete the Job and its pods; with ``uid``, only when its uid annotation is that
        build's. False when there was none (of it)."""
        path = path_for("batch/v1", "jobs", self.settings.namespace, job_name)
        try:
            if uid:
                existing = await self.kube.get(path)
                annotations = (existing.get("metadata") or {}).get("annotations") or {}
                if annotations.get(jobs.BUILD_UID_ANNOTATION) != uid:
                    return False  # another build's
            await self.kube.delete(path, propagation="Background")
        except KubeError as e:
            if e.not_found:
                return False
            raise
        return True

    async def _delete_job_quietly(self, job_name: str, *, uid: str = "") -> None:
        """Delete the Job (only if it is the build of ``uid``, when given), retrying
        transient errors a few times; never raises."""
        delay = RETRY_FIRST_SECONDS
        for _ in range(CREATE_ATTEMPTS):
            try:
                await self._delete_job(job_name, uid=uid)
                return
            except KubeError as e:
                if not e.transient:
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
        # Its TTL removes it eventually; the pod has ended by itself in most such cases.
        log.warning("could not delete Job %s of an ended build", job_name)

    async def _follow(
        self,
        build: Build,
        job_name: str,
        plan: Plan,
        reporter: Reporter,
        active: _Active,
        *,
        adopted: bool,
        legacy: bool = False,
    ) -> Outcome:
        if adopted and not self.logs.is_live(build.namespace, build.name):
            # The pod's log starts from the beginning again: don't append it twice.
            self.logs.delete(build.namespace, build.name)
        writer = self.logs.open_writer(build.namespace, build.name)
        if adopted:
            log.info("adopting Job %s for build %s/%s", job_name, build.namespace, build.name)
        progress = _Progress(
            ready={c: asyncio.Event() for c in (jobs.FETCH_CONTAINER, jobs.BUILD_CONTAINER)}
        )
        streamer = asyncio.create_task(self._stream_logs(writer, progress))
        outcome: Outcome | None = None
        try:
            outcome = await self._watch_pods(
                build, job_name, plan, reporter, active, progress, legacy=legacy
            )
            return outcome
        finally:
            for event in progress.ready.values():
                event.set()  # containers that never started are skipped by the streamer
            if outcome is not None:
                # Ended: the streams end with the containers. Stopped (this replica no longer
                # leads, or shuts down): not waited for, the next leader reads the pod's log.
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    async with asyncio.timeout(LOG_DRAIN_SECONDS):
                        await asyncio.shield(streamer)
            streamer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streamer
            if isinstance(outcome, Failed):
                writer.line(f"--> Build failed ({outcome.reason.value}): {outcome.message}")
            writer.close()

    async def _watch_pods(
        self,
        build: Build,
        job_name: str,
        plan: Plan,
        reporter: Reporter,
        active: _Active,
        progress: _Progress,
        *,
        legacy: bool = False,
    ) -> Outcome:
        """Follow the Job's pods to an outcome. A ``legacy`` Job (an earlier version's)
        has no namespace or uid labels: its pods are selected by its name label and kept
        only when their annotations say they are this build's."""
        deadline = build.spec.completion_deadline_seconds
        if legacy:
            selector = jobs.legacy_pod_selector(build.namespace, build.name)
        else:
            selector = jobs.pod_selector(build.namespace, build.name, build.meta.uid)

        def mine(obj: dict[str, Any]) -> bool:
            return not legacy or jobs.belongs_to(obj, build.namespace, build.name, build.meta.uid)

        resource_version = ""
        delay = RETRY_FIRST_SECONDS

        async def look(pod: dict[str, Any] | None) -> Outcome | None:
            """The outcome after this pod event (None: a deleted pod), or None yet."""
            if pod is not None:
                outcome = await self._observe(pod, plan, deadline, reporter, progress)
                if outcome is not None or progress.stopped_since is None:
                    return outcome
            elif progress.stopped_since is None:
                progress.stopped_since = time.monotonic()
            return await self._check_job(
                job_name, plan, deadline, active, progress, selector, mine, reporter
            )

        while True:
            try:
                if not resource_version:
                    listed = await self.kube.list(self.pods_path, label_selector=selector)
                    meta = listed.get("metadata") or {}
                    resource_version = str(meta.get("resourceVersion", ""))
                    for pod in filter(mine, _oldest_first(listed.get("items") or [])):
                        outcome = await self._observe(pod, plan, deadline, reporter, progress)
                        if outcome is not None:
                            return self._finish(build, outcome)
                outcome = await self._check_job(
                    job_name, plan, deadline, active, progress, selector, mine, reporter
                )
                if outcome is not None:
                    return self._finish(build, outcome)
                async for kind, pod in self._watch(
                    selector, resource_version, active, self.recheck_seconds
                ):
                    version = (pod.get("metadata") or {}).get("resourceVersion")
                    resource_version = str(version or resource_version)
                    if kind == "BOOKMARK" or not mine(pod):
                        continue
                    outcome = await look(None if kind == "DELETED" else pod)
                    if outcome is not None:
                        return self._finish(build, outcome)
                delay = RETRY_FIRST_SECONDS
            except WatchExpired:
                log.info("watch of Job %s pods expired; relisting", job_name)
                resource_version = ""
            except KubeError as e:
                if not e.transient:
                    raise
                # The build goes on in the cluster: pick the watch up where it was.
                log.warning("following Job %s failed (%s); resuming", job_name, e.status)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _watch(
        self, selector: str, resource_version: str, active: _Active, seconds: int
    ) -> Any:
        """The pod watch, ended early when a cancel wakes this run."""
        active.wake.clear()
        queue: asyncio.Queue[tuple[str, dict[str, Any]] | BaseException | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for item in self.kube.watch(
                    self.pods_path,
                    resource_version=resource_version,
                    label_selector=selector,
                    timeout_seconds=seconds,
                ):
                    await queue.put(item)
                await queue.put(None)
            except Exception as e:  # handed to the consumer, which re-raises it
                await queue.put(e)

        async def wake() -> None:
            await active.wake.wait()
            await queue.put(None)

        tasks = [asyncio.create_task(pump()), asyncio.create_task(wake())]
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _check_job(
        self,
        job_name: str,
        plan: Plan,
        deadline: int,
        active: _Active,
        progress: _Progress,
        selector: str,
        mine: Callable[[dict[str, Any]], bool],
        reporter: Reporter,
    ) -> Outcome | None:
        """What the Job says: an outcome, or None while the build goes on (or while a pod
        stopped from outside waits for the Job to say why). ``mine`` tells the build's
        Job and pods from others the name or ``selector`` matches."""
        try:
            job: dict[str, Any] | None = await self.kube.get(
                path_for("batch/v1", "jobs", self.settings.namespace, job_name)
            )
        except KubeError as e:
            if not e.not_found:
                raise
            job = None
        if job is not None and not mine(job):
            job = None  # its name was taken by another build's Job: the build's is gone
        if active.cancel_requested:
            if job is not None:
                await self._delete_job(job_name)
            return Cancelled()
        if job is not None and jobs.job_finished(job):
            # The Job ended because its pod did: the pod (if still there) says how.
            listed = await self.kube.list(self.pods_path, label_selector=selector)
            for pod in reversed(list(filter(mine, _oldest_first(listed.get("items") or [])))):
                # Observed like a watched pod: a build that ended before the watch saw its
                # containers still gets their logs streamed, its revision and its stages.
                outcome = await self._observe(pod, plan, deadline, reporter, progress)
                if outcome is not None:
                    return outcome
            if _completed(job):
                # Finished while nobody watched and its pod is gone: the digest is lost.
                return Succeeded(digest="", image_reference=plan.image)
        if job is not None:
            # Failed (deadline, eviction policy, a pod deleted under it), or about to.
            decided = jobs.read_job(job, deadline_seconds=deadline)
            if decided is not None:
                return decided
        if job is None or progress.stopped_since is not None:
            # The pod was stopped from outside (or the Job is gone): the Job says why.
            explained = jobs.explain_stop(
                job, deadline_seconds=deadline, cancelled=False, now=datetime.now(UTC)
            )
            if explained is not None:
                return explained
            assert progress.stopped_since is not None
            if time.monotonic() - progress.stopped_since > self.stop_explained_within:
                return jobs.pod_deleted()
        return None

    async def _observe(
        self,
        pod: dict[str, Any],
        plan: Plan,
        deadline: int,
        reporter: Reporter,
        progress: _Progress,
    ) -> Outcome | None:
        view = jobs.read_pod(pod, image=plan.image, deadline_seconds=deadline)
        name = str((pod.get("metadata") or {}).get("name", ""))
        if name != progress.pod and progress.pod:
            # A replacement pod (the Job made another): its logs start over.
            progress.started.clear()
            progress.stopped_since = None
        progress.pod = name
        for container, ready in (
            (jobs.FETCH_CONTAINER, view.fetch_log_ready),
            (jobs.BUILD_CONTAINER, view.build_log_ready),
        ):
            if ready and container not in progress.started:
                progress.started.add(container)
                progress.ready[container].set()
        if view.started and not progress.running:
            progress.running = True
            await reporter.running()
        if view.fetch_result is not None:
            if not progress.revision and view.fetch_result.revision is not None:
                progress.revision = True
                await reporter.revision(view.fetch_result.revision)
            for stage in view.fetch_result.stages:
                await self._stage(stage, reporter, progress)
        if view.build_result is not None:
            for stage in view.build_result.stages:
                await self._stage(stage, reporter, progress)
        if view.stopped and progress.stopped_since is None:
            progress.stopped_since = time.monotonic()
        return view.outcome

    async def _stage(self, stage: Any, reporter: Reporter, progress: _Progress) -> None:
        if stage.name in progress.stages:
            return  # the build container re-reads the commit: FetchInputs is the init's
        progress.stages.add(stage.name)
        await reporter.stage(stage)

    def _finish(self, build: Build, outcome: Outcome) -> Outcome:
        if isinstance(outcome, Failed) and not outcome.log_snippet:
            try:
                tail = snippet(self.logs.read(build.namespace, build.name))
            except OSError:
                tail = ""
            return Failed(reason=outcome.reason, message=outcome.message, log_snippet=tail)
        return outcome

    async def _stream_logs(self, writer: LogWriter, progress: _Progress) -> None:
        for container in (jobs.FETCH_CONTAINER, jobs.BUILD_CONTAINER):
            await progress.ready[container].wait()
            if container not in progress.started:
                continue
            await self._stream_log(writer, progress.pod, container)

    async def _stream_log(self, writer: LogWriter, pod: str, container: str) -> None:
        """Follow one container's log into ``writer`` until the container has ended.

        A stream cut short (a dropped connection, an API server restart) is opened again
        and the bytes already written are skipped, so the log has every byte once. (The
        kubelet serves the whole log again unless it rotated the file in between, which
        it does at containerLogMaxSize, 10 MiB by default.)"""
        path = path_for("v1", "pods", self.settings.namespace, pod) + "/log"
        written = 0
        delay = RETRY_FIRST_SECONDS
        while True:
            skip = written
            try:
                async for chunk in self.kube.stream(
                    path, {"container": container, "follow": "true"}
                ):
                    if skip >= len(chunk):
                        skip -= len(chunk)
                        continue
                    chunk, skip = chunk[skip:], 0
                    writer.write(chunk)
                    written += len(chunk)
                if not await self._still_running(pod, container):
                    return
                log.info("the %s log of %s ended early; resuming", container, pod)
            except KubeError as e:
                if not e.transient:
                    writer.line(f"--> the {container} container's log is unavailable ({e.status})")
                    return
                log.warning("following the %s log of %s failed (%s); resuming",
                            container, pod, e.status)  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _still_running(self, pod: str, container: str) -> bool:
        """Whether ``container`` of ``pod`` still runs (its log stream should go on)."""
        try:
            doc = await self.kube.get(path_for("v1", "pods", self.settings.namespace, pod))
        except KubeError as e:
            if e.not_found:
                return False
            raise
        status = doc.get("status") or {}
        for item in [*(status.get("initContainerStatuses") or []),
                     *(status.get("containerStatuses") or [])]:  # fmt: skip
            if isinstance(item, dict) and item.get("name") == container:
                return bool((item.get("state") or {}).get("running"))
        return False


#: Which build step a missing Secret of the pod would have failed (as the host executor
#: reports a missing push or pull secret); inputs and the source secret fail the fetch.
_VOLUME_REASONS = {
    "push-secret": Reason.PUSH_IMAGE_TO_REGISTRY_FAILED,
    "pull-secret": Reason.PULL_BUILDER_IMAGE_FAILED,
}


def refuse_unsupported(build: Build) -> None:
    """Raise Unplannable for a build this executor cannot run correctly.

    Binary builds: the upload is stored under the ``dataDir`` of the replica that received
    it (``instantiatebinary``) and nothing ships it into a build pod, so such a build would
    otherwise fail later with a misleading "no upload" message, or build the wrong thing."""
    source = build.spec.source
    if source.binary is not None or source.type is SourceType.BINARY:
        raise buildah.Unplannable(
            Reason.FETCH_SOURCE_FAILED,
            "binary builds (source.binary, instantiatebinary uploads) are not supported with "
            "executor kubernetes: the upload stays on the triggerd replica that received it "
            "and is not shipped into build pods; use a Git source (or an inline Dockerfile) "
            "or run this BuildConfig on a triggerd with executor local",
        )


def _oldest_first(pods: list[Any]) -> list[dict[str, Any]]:
    """The build's pods, oldest first (a replacement last)."""
    found = [p for p in pods if isinstance(p, dict)]
    return sorted(found, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp", "")))


def _completed(job: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Complete" and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


class PodLogs:
    """A build's log read from its pod through the API server: the fallback of a replica
    whose log store does not hold the log (another replica ran the build).

    The log is the init container's followed by the build container's, as the executor
    streams them into its store (without the executor's own closing lines). Available
    only while the pod exists; None when there is none.
    """

    def __init__(
        self, kube: Kube, settings: KubernetesSettings, *, watch_seconds: int = 30
    ) -> None:
        self.kube = kube
        self.settings = settings
        #: a pod watch is renewed this often while waiting for a container to start
        self.watch_seconds = watch_seconds

    @property
    def pods_path(self) -> str:
        return path_for("v1", "pods", self.settings.namespace)

    async def _pod(self, namespace: str, name: str) -> tuple[dict[str, Any], str] | None:
        """The build's newest pod (a disrupted first pod is replaced by the Job) and the
        label selector it was found with. The pods of a Job an earlier triggerd version
        made (other labels) are looked for when the build has none of the current kind."""
        for selector, legacy in (
            (jobs.pod_selector(namespace, name), False),
            (jobs.legacy_pod_selector(namespace, name), True),
        ):
            try:
                listed = await self.kube.list(self.pods_path, label_selector=selector)
            except KubeError as e:
                log.warning("cannot list the pods of build %s/%s: %s", namespace, name, e.status)
                return None
            pods = [
                p
                for p in listed.get("items") or []
                if isinstance(p, dict) and (not legacy or jobs.belongs_to(p, namespace, name))
            ]
            if pods:
                newest = max(
                    pods,
                    key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp", "")),
                )
                return newest, selector
        return None

    async def read(self, namespace: str, name: str) -> bytes | None:
        """Both containers' logs so far, or None when the build has no pod."""
        found = await self._pod(namespace, name)
        if found is None:
            return None
        pod_name = str(found[0]["metadata"]["name"])
        data = b""
        for container in (jobs.FETCH_CONTAINER, jobs.BUILD_CONTAINER):
            try:
                async for chunk in self.kube.stream(
                    self._log_path(pod_name), {"container": container}
                ):
                    data += chunk
            except KubeError as e:
                if e.status == 400:
                    break  # waiting to start: nothing of it (or of later containers) yet
                if e.not_found:
                    return data or None  # gone in between
                log.warning("cannot read the %s log of %s: %s", container, pod_name, e.status)
                break
        return data

    async def follow(self, namespace: str, name: str) -> AsyncIterator[bytes]:
        """Both containers' logs from their start, following each while it runs; ends when
        the build container's log ends or the pod is gone."""
        found = await self._pod(namespace, name)
        if found is None:
            return
        pod, selector = found
        pod_name = str(pod["metadata"]["name"])
        resource_version = str((pod.get("metadata") or {}).get("resourceVersion", ""))
        for container in (jobs.FETCH_CONTAINER, jobs.BUILD_CONTAINER):
            while True:
                view = jobs.read_pod(pod, image="", deadline_seconds=0)
                ready = (
                    view.fetch_log_ready
                    if container == jobs.FETCH_CONTAINER
                    else view.build_log_ready
                )
                if ready:
                    break
                if (
                    view.outcome is not None
                    or view.stopped
                    or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
                ):
                    return  # ended without this container running
                changed = await self._next_version(selector, pod_name, resource_version)
                if changed is None:
                    return
                pod, resource_version = changed
            try:
                async for chunk in self.kube.stream(
                    self._log_path(pod_name), {"container": container, "follow": "true"}
                ):
                    yield chunk
            except KubeError as e:
                if e.not_found:
                    return
                log.warning("cannot follow the %s log of %s: %s", container, pod_name, e.status)
                return

    async def _next_version(
        self, selector: str, pod_name: str, resource_version: str
    ) -> tuple[dict[str, Any], str] | None:
        """The pod after its next change (a watch of the Job's pods, by ``selector``, from
        ``resource_version``), or None when it is gone."""
        while True:
            try:
                async for kind, obj in self.kube.watch(
                    self.pods_path,
                    resource_version=resource_version,
                    label_selector=selector,
                    timeout_seconds=self.watch_seconds,
                ):
                    version = str((obj.get("metadata") or {}).get("resourceVersion", ""))
                    resource_version = version or resource_version
                    if (obj.get("metadata") or {}).get("name") != pod_name:
                        continue  # a bookmark, or a replacement pod: not the one followed
                    if kind == "DELETED":
                        return None
                    if kind in ("ADDED", "MODIFIED"):
                        return obj, version
            except WatchExpired:
                pass  # read the pod afresh below
            except KubeError as e:
                log.warning("watching pod %s failed: %s", pod_name, e.status)
                return None
            try:
                pod = await self.kube.get(path_for("v1", "pods", self.settings.namespace, pod_name))
            except KubeError:
                return None
            version = str((pod.get("metadata") or {}).get("resourceVersion", ""))
            if version != resource_version:
                return pod, version

    def _log_path(self, pod_name: str) -> str:
        return path_for("v1", "pods", self.settings.namespace, pod_name) + "/log"
