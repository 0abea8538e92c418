"""Prometheus metrics of image change triggering: tag polls, backoff, digests, latency.

Registered in triggerd's one metrics registry (:data:`triggerd.metrics.REGISTRY`) so the
web layer's /metrics shows them beside the build metrics. Labels are bounded: results and
registry hosts, never repositories, tags, digests or credentials.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from triggerd.metrics import REGISTRY

POLLS = Counter(
    "triggerd_image_polls",
    "Registry tag polls (HEAD of a manifest), by result: unchanged, changed, first, "
    "not_found, auth_error, temporary_error, deferred.",
    ["result"],
    registry=REGISTRY,
)
BACKOFF_HOSTS = Gauge(
    "triggerd_image_poll_backoff_hosts",
    "Registry hosts currently in backoff after 429/5xx/unreachable.",
    registry=REGISTRY,
)
BACKOFF_SECONDS = Gauge(
    "triggerd_image_poll_backoff_seconds",
    "Current backoff delay per registry host (0 when healthy).",
    ["registry"],
    registry=REGISTRY,
)
WATCHED_TAGS = Gauge(
    "triggerd_image_watched_tags",
    "Distinct (registry, repository, tag) triples being polled.",
    registry=REGISTRY,
)
DIGESTS_SEEN = Counter(
    "triggerd_image_digests_seen",
    "New digests observed for watched tags, by source (poll or a notification kind).",
    ["source"],
    registry=REGISTRY,
)
TOKEN_REQUESTS = Counter(
    "triggerd_registry_token_requests",
    "Bearer token requests sent to registry token services, by result.",
    ["result"],
    registry=REGISTRY,
)
NOTIFICATIONS = Counter(
    "triggerd_registry_notifications",
    "Registry push notifications received, by kind and result.",
    ["kind", "result"],
    registry=REGISTRY,
)
TRIGGER_LATENCY = Histogram(
    "triggerd_image_change_to_build_seconds",
    "Time from a tag move being observed (or notified) to the build being created.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900),
    registry=REGISTRY,
)
