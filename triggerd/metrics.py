"""Prometheus metrics of triggerd, in one registry the web layer exposes at /metrics.

Defined in one place so the orchestrator and the web layer count the same things under the
same names. Labels never carry secrets, URLs with credentials or unbounded values such as
build names.
"""

from __future__ import annotations

import functools

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

BUILDS = Counter(
    "triggerd_builds",
    "Builds that reached a phase, by phase, reason and strategy.",
    ["phase", "reason", "strategy"],
    registry=REGISTRY,
)
BUILD_DURATION = Histogram(
    "triggerd_build_duration_seconds",
    "Duration of finished builds, from start to completion.",
    ["phase", "strategy"],
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600),
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "triggerd_build_queue_depth", "Builds waiting to start (phase New).", registry=REGISTRY
)
BUILDS_ACTIVE = Gauge(
    "triggerd_builds_active", "Builds holding a run slot (Pending or Running).", registry=REGISTRY
)
HTTP_REQUESTS = Counter(
    "triggerd_http_requests",
    "HTTP requests served, by route, method and status.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "triggerd_http_request_duration_seconds",
    "Time to answer HTTP requests, by route.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
    registry=REGISTRY,
)
WEBHOOKS = Counter(
    "triggerd_webhook_deliveries",
    "Webhook deliveries, by provider and result.",
    ["provider", "result"],
    registry=REGISTRY,
)


# labels() takes a lock and builds a key on every call; the hot paths (one HTTP request, one
# webhook delivery) use these memoised children instead. Bounded: label values are route
# templates, methods, statuses, providers and results, but a client can invent methods.
@functools.lru_cache(maxsize=1024)
def http_request_counter(route: str, method: str, status: str) -> Counter:
    return HTTP_REQUESTS.labels(route, method, status)


@functools.lru_cache(maxsize=256)
def http_duration(route: str) -> Histogram:
    return HTTP_DURATION.labels(route)


@functools.lru_cache(maxsize=256)
def webhook_counter(provider: str, result: str) -> Counter:
    return WEBHOOKS.labels(provider, result)
