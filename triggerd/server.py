"""The composition root of ``triggerd serve``: builds every component and runs the server.

From :class:`triggerd.settings.Settings` it makes the SQLite store
(``<dataDir>/triggerd.db``), the log store (``logsDir``, default ``<dataDir>/logs``), the
local executor (workspaces in ``<dataDir>/workspaces``), the engine, the image change
runtime (image streams and trigger states in ``<dataDir>/imagestreams.db``; with leader
election it polls registries and acts on image changes only while this replica leads) and
the web application (REST API, webhook and registry notification routes), then serves on
``settings.listen``. SIGHUP re-applies the BuildConfig
files (a bad file is logged and the configs already loaded stay); SIGTERM/SIGINT stop
accepting connections, let in-flight requests finish and stop the engine. When no API
token is configured it generates one, keeps it in ``<dataDir>/api-token`` (mode 0600) and
logs where — never the token itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import secrets
import signal
import socket
import stat
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from triggerd import errors
from triggerd.engine import Engine
from triggerd.inputs import BinaryInputs
from triggerd.settings import Settings
from triggerd.web import SELF_LOGGED, draining
from triggerd.web.app import make_app

log = logging.getLogger(__name__)

TOKEN_FILE = "api-token"  # noqa: S105 - a file name, not a secret
DATABASE_FILE = "triggerd.db"
#: How long in-flight requests get to finish after SIGTERM before they are cut off.
SHUTDOWN_GRACE_SECONDS = 20.0


def token_path(data_dir: Path) -> Path:
    return data_dir / TOKEN_FILE


def ensure_api_token(data_dir: Path) -> str:
    """The generated API token: read from the token file, or created there (mode 0600)."""
    path = token_path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        existing = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            # Someone loosened it; a token readable by others is as good as published.
            path.chmod(0o600)
            log.warning("%s was readable by others; its mode is now 0600", path)
        log.info("API token stored in %s", path)
        return existing
    token = secrets.token_urlsafe(32)
    # Write a temporary file created 0600 (not chmod after the fact, which leaves a window),
    # then rename, so a crash never leaves a half-written token behind.
    temporary = path.with_name(f".{TOKEN_FILE}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(token + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    log.info("API token stored in %s", path)
    return token


def build_components(settings: Settings) -> tuple[Engine, web.Application]:
    """Every component for ``settings``, wired; nothing started yet."""
    # Imported here so `triggerd get builds` and friends never load executor machinery.
    from triggerd.imagechange_runtime import create_runtime
    from triggerd.logs import LogStore
    from triggerd.web import binary, registry_hooks, webhooks
    from triggerd.web import imagestreams as imagestream_routes

    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    tokens = settings.api_tokens or (ensure_api_token(data_dir),)
    logs = LogStore(settings.logs_dir or data_dir / "logs")
    kube_client: Any = None
    if "kubernetes" in (settings.store, settings.executor):
        from triggerd import kube

        # connects (kubeconfig or in-cluster) on its first request, inside the event loop
        kube_client = kube.Kube(settings=settings.kubernetes)
    store: Any
    if settings.store == "kubernetes":
        from triggerd.store.kubernetes import KubernetesStore

        store = KubernetesStore(
            kube_client,
            settings.kubernetes.namespace,
            secret_cache_seconds=settings.kubernetes.secret_cache_seconds,
        )
    else:
        from triggerd.store.sqlite import SqliteStore

        store = SqliteStore(data_dir / DATABASE_FILE)
    executor: Any
    if settings.executor == "kubernetes":
        from triggerd.executors.kubernetes import KubernetesExecutor

        executor = KubernetesExecutor(
            kube_client,
            settings.kubernetes,
            logs,
            owner_builds=settings.store == "kubernetes",
            layer_cache_registry=settings.layer_cache_registry,
            image_stream_registry=settings.image_stream_registry,
        )
    else:
        from triggerd.executors.local import LocalExecutor

        executor = LocalExecutor(settings, logs, data_dir / "workspaces")
    leader = None
    if kube_client is not None:
        from triggerd.leader import LeaderElector

        leader = LeaderElector(
            kube_client,
            namespace=settings.kubernetes.namespace,
            name=settings.kubernetes.lease_name,
            identity=os.environ.get("POD_NAME") or socket.gethostname(),
            lease_duration_seconds=settings.kubernetes.lease_duration_seconds,
            renew_interval_seconds=settings.kubernetes.renew_interval_seconds,
        )
    engine = Engine(
        settings=settings,
        store=store,
        executor=executor,
        logs=logs,
        leadership=leader,
        inputs=BinaryInputs(data_dir),
    )
    # The runtime opens its aiohttp session lazily, inside the running loop.
    image_change = create_runtime(
        engine,
        stream_registry=settings.image_stream_registry,
        initial_build=settings.image_change_initial_build,
    )
    engine.image_change = image_change
    if leader is not None:

        async def on_leadership(leading: bool) -> None:
            # Only the leader schedules builds, polls registries and acts on image changes.
            await engine.on_leadership(leading)
            await image_change.on_leadership(leading)

        leader.on_change = on_leadership
    app = make_app(
        engine,
        logs,
        dataclasses.replace(settings, api_tokens=tokens),
        extra_routes=[
            *webhooks.ROUTES,
            *binary.ROUTES,
            *registry_hooks.ROUTES,
            *imagestream_routes.ROUTES,
        ],
    )
    app[registry_hooks.IMAGE_CHANGE] = image_change
    if settings.executor == "kubernetes":
        from triggerd.executors.kubernetes import PodLogs
        from triggerd.web import api

        # A replica that did not run a build reads its log from the pod (see docs).
        app[api.POD_LOGS] = PodLogs(kube_client, settings.kubernetes)

    async def start_image_change(_app: web.Application) -> None:
        await image_change.start()  # after the engine (make_app's startup hook runs first)

    async def stop_image_change(_app: web.Application) -> None:
        await image_change.stop()

    app.on_startup.append(start_image_change)
    app.on_cleanup.insert(0, stop_image_change)  # before the engine closes its store
    return engine, app


async def reload_buildconfigs(engine: Engine, settings: Settings) -> None:
    """SIGHUP: apply the BuildConfig files again; on errors keep what is loaded."""
    if not settings.build_configs:
        log.info("SIGHUP: no buildConfigs configured, nothing to reload")
        return
    try:
        results = await engine.load_buildconfig_files(settings.build_configs)
    except errors.TriggerdError as e:
        log.error("SIGHUP: reloading BuildConfigs failed, keeping the loaded ones: %s", e)
    except Exception:
        log.exception("SIGHUP: reloading BuildConfigs failed, keeping the loaded ones")
    else:
        log.info("SIGHUP: reloaded %d BuildConfigs", len(results))
        settle_heap()


def settle_heap() -> None:
    """Move what startup (or a reload) built into the GC's permanent generation: with
    10,000 BuildConfigs loaded, full collections over them paused requests for up to
    324 ms (bench/routing_bench.py); frozen objects are never scanned again."""
    gc.collect()
    gc.freeze()


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT."""
    engine, app = build_components(settings)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        # Handlers are not cancelled when a client disconnects (aiohttp's default, said
        # explicitly): a write the client gave up on still completes, and log followers
        # notice a vanished client themselves.
        handler_cancellation=False,
        shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
        access_log_class=RouteAccessLogger,
    )
    await runner.setup()  # starts the engine (recovery included) before anyone can connect
    settle_heap()
    elector: Any = engine.leadership
    if elector is not None:
        elector.start()  # campaigns; engine.on_leadership starts scheduling when it wins
    stop = asyncio.Event()
    reloads: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()

    def on_hup() -> None:
        task = loop.create_task(reload_buildconfigs(engine, settings))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        log.info("triggerd listening on http://%s:%d", settings.host, settings.port)
        await stop.wait()
        log.info("stopping: finishing in-flight requests")
        # Stop accepting and let requests in flight (a webhook body still arriving) finish;
        # runner.cleanup() alone would drop a half-received body unanswered.
        await draining.drain(runner, SHUTDOWN_GRACE_SECONDS)
    finally:
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        for task in list(reloads):
            task.cancel()
        if elector is not None:
            await elector.stop()  # a leader releases the Lease: a successor takes over now
        # Closes the listener, awaits in-flight requests, then stops the engine (on_cleanup).
        await runner.cleanup()
        if elector is not None:
            await elector.kube.close()
    log.info("triggerd stopped")


class RouteAccessLogger(AbstractAccessLogger):
    """Access log by route template: webhook URLs carry their secret in the path (as in
    OpenShift), so the raw request line must not reach the log."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if isinstance(request, web.Request) and request.get(SELF_LOGGED):
            return  # its handler logged it, with more than this line would say
        route = "unmatched"
        match_info = getattr(request, "match_info", None)
        if match_info is not None and match_info.http_exception is None:
            resource = match_info.route.resource
            route = resource.canonical if resource is not None else route
        self.logger.info(
            "%s %s %s %d %.3fs",
            request.remote,
            request.method,
            route,
            response.status,
            time,
        )


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format=LOG_FORMAT)
