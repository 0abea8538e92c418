"""Server settings: a YAML file, overridden by ``TRIGGERD_*`` environment variables.

Every setting has one camelCase name used in the file; the environment form is the
SCREAMING_SNAKE of it with a ``TRIGGERD_`` prefix (``maxConcurrentBuilds`` →
``TRIGGERD_MAX_CONCURRENT_BUILDS``), its value read as YAML so numbers, booleans, lists and
maps work too. Errors name the setting and where it came from. No I/O beyond reading the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from triggerd import kube
from triggerd.errors import FieldError, Invalid
from triggerd.kube import KubernetesSettings

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
#: The shortest registry poll interval accepted anywhere: below it the watcher would only
#: be busy polling (0s would make it spin).
MIN_POLL_INTERVAL_SECONDS = 1.0
#: ``registryNotifications``: kind → the keys it takes (how a notification authenticates).
#: GitHub deliveries are verified with ``github.secret``, a shared secret trusted for every
#: watcher, or with the GitHub trigger secret of a BuildConfig watching images, which
#: speaks for that config only (one tenant's secret must not move another's builds).
NOTIFICATION_KEYS: Mapping[str, tuple[str, ...]] = {
    "distribution": ("authorization",),
    "harbor": ("authorization",),
    "dockerhub": ("token",),
    "quay": ("token",),
    "github": ("secret",),
}
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | int | float) -> float:
    """Seconds in ``"5m"``, ``"1h30m"``, ``"30s"``, ``"7d"`` or a plain number of seconds."""
    if isinstance(text, bool):
        raise ValueError("must be a duration such as 30s, 5m, 1h or 7d")
    if isinstance(text, int | float):
        return float(text)
    stripped = text.strip()
    pos, total = 0, 0.0
    for match in _DURATION.finditer(stripped):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(stripped) or not stripped:
        raise ValueError(f"{text!r} is not a duration such as 30s, 5m, 1h or 7d")
    return total


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrySettings:
    #: HTTPS without certificate verification, falling back to plain HTTP when the
    #: registry does not speak TLS (as containers/image treats an insecure registry)
    insecure: bool = False
    auth_file: str | None = None  # docker config JSON with credentials for this host


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretSettings:
    """A named secret: a file (docker config JSON, SSH key) and/or key → value data."""

    path: str | None = None
    data: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildahSettings:
    storage_driver: str = "vfs"
    root: str | None = None  # default: <dataDir>/storage
    runroot: str | None = None  # default: <dataDir>/run
    isolation: str = "chroot"
    push_retries: int = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    listen: str = "127.0.0.1:8080"
    data_dir: Path = Path("data")
    #: where build logs are kept (default ``<dataDir>/logs``); a ReadWriteMany volume shared
    #: by every replica lets any of them serve a log after the build pod is gone
    logs_dir: Path | None = None
    build_configs: tuple[Path, ...] = ()
    api_tokens: tuple[str, ...] = ()
    max_concurrent_builds: int = 2
    queue_limit: int = 0  # 0: unlimited
    registries: Mapping[str, RegistrySettings] = field(default_factory=dict)
    secrets: Mapping[str, SecretSettings] = field(default_factory=dict)
    max_body_bytes: int = 25 * 1024 * 1024
    #: a request body must arrive within this long (slow clients get 408)
    body_read_timeout_seconds: float = 30.0
    delivery_retention_seconds: float = 7 * 86400.0
    image_poll_interval_seconds: float = 300.0
    #: where builds push images whose output is an ImageStreamTag (host[:port])
    image_stream_registry: str | None = None
    #: a new BuildConfig builds once when its ImageChange trigger's image first resolves
    image_change_initial_build: bool = True
    registry_notifications: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    buildah: BuildahSettings = field(default_factory=BuildahSettings)
    executor: str = "local"
    store: str = "sqlite"
    log_level: str = "info"
    max_binary_size: int = 1024 * 1024 * 1024  # an uploaded binary build input, in bytes
    max_binary_files: int = 100_000  # entries in an uploaded archive
    config_maps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    layer_cache_registry: str | None = None  # <it>/<namespace>/<config> caches layers
    layer_cache_max_bytes: int | None = None  # host buildah storage cap
    layer_cache_max_age_seconds: float | None = None  # host images unused this long go

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0] or "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def registry(self, host: str) -> RegistrySettings:
        return self.registries.get(host, RegistrySettings())


# camelCase name → (kind, attribute)
_SCALARS: Mapping[str, str] = {
    "listen": "str",
    "dataDir": "path",
    "logsDir": "path",
    "buildConfigs": "paths",
    "apiTokens": "strs",
    "maxConcurrentBuilds": "posint",
    "queueLimit": "nonnegint",
    "kubernetes": "kubernetes",
    "registries": "registries",
    "secrets": "secrets",
    "maxBodyBytes": "posint",
    "bodyReadTimeout": "duration",
    "deliveryRetention": "duration",
    "imagePollInterval": "pollinterval",
    "imageStreamRegistry": "str",
    "imageChangeInitialBuild": "bool",
    "registryNotifications": "registrynotifications",
    "buildah": "buildah",
    "executor": "executor",
    "store": "storekind",
    "logLevel": "loglevel",
    "maxBinarySize": "posint",
    "maxBinaryFiles": "posint",
    "configMaps": "stringmaps",
    "layerCacheRegistry": "str",
    "layerCacheMaxBytes": "posint",
    "layerCacheMaxAge": "duration",
}
_ATTRS = {
    "bodyReadTimeout": "body_read_timeout_seconds",
    "deliveryRetention": "delivery_retention_seconds",
    "imagePollInterval": "image_poll_interval_seconds",
    "layerCacheMaxAge": "layer_cache_max_age_seconds",
}


class SettingError(ValueError):
    """A problem below a setting: ``path`` is relative to it (``distrbution``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def env_name(key: str) -> str:
    return "TRIGGERD_" + re.sub(r"(?<!^)(?=[A-Z])", "_", key).upper()


def load(path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from ``path`` (optional) and the environment; raise Invalid on errors."""
    environ = os.environ if environ is None else environ
    doc: dict[str, Any] = {}
    errors: list[FieldError] = []
    base = Path(".")
    if path is not None:
        file_path = Path(path)
        base = file_path.parent
        try:
            loaded = yaml.safe_load(file_path.read_text(encoding="utf-8"))
        except OSError as e:
            raise Invalid(
                "Settings", str(path), [FieldError(str(path), e.strerror or str(e))]
            ) from e
        except yaml.YAMLError as e:
            raise Invalid(
                "Settings", str(path), [FieldError(str(path), f"not valid YAML: {e}")]
            ) from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise Invalid("Settings", str(path), [FieldError(str(path), "must be a mapping")])
        for key in loaded:
            if key not in _SCALARS:
                errors.append(
                    FieldError(str(key), f"unknown setting; known: {', '.join(_SCALARS)}")
                )
        doc.update({k: v for k, v in loaded.items() if k in _SCALARS})
    for key in _SCALARS:
        name = env_name(key)
        if name in environ:
            raw = environ[name]
            if _SCALARS[key] in ("strs", "paths") and not raw.lstrip().startswith("["):
                doc[key] = [item for item in re.split(r"[,\s]+", raw) if item]
            elif _SCALARS[key] in ("str", "path"):
                # Taken as written: YAML would read "5000:30" as a number (base 60).
                doc[key] = raw
            else:
                try:
                    doc[key] = yaml.safe_load(raw) if raw else raw
                except yaml.YAMLError:
                    errors.append(FieldError(name, "not a valid YAML value"))
    values: dict[str, Any] = {}
    for key, value in doc.items():
        try:
            values[_ATTRS.get(key, _snake(key))] = _convert(_SCALARS[key], value, base)
        except SettingError as e:
            errors.append(FieldError(f"{key}.{e.path}", e.message))
        except (ValueError, TypeError) as e:
            errors.append(FieldError(key, str(e)))
    if errors:
        raise Invalid("Settings", str(path or "environment"), errors)
    settings = Settings(**values)
    try:
        settings.port  # noqa: B018 - validates listen
    except ValueError as e:
        raise Invalid("Settings", "listen", [FieldError("listen", "must be HOST:PORT")]) from e
    return settings


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def _convert(kind: str, value: Any, base: Path) -> Any:
    if kind == "str":
        if not isinstance(value, str):
            raise TypeError("must be a string")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise TypeError("must be true or false")
        return value
    if kind == "path":
        return _path(value, base)
    if kind == "paths":
        items = value if isinstance(value, list) else [value]
        return tuple(_path(v, base) for v in items)
    if kind == "strs":
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) and v for v in items):
            raise TypeError("must be a list of non-empty strings")
        return tuple(items)
    if kind in ("posint", "nonnegint"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("must be an integer")
        if value < (1 if kind == "posint" else 0):
            raise ValueError(f"must be at least {1 if kind == 'posint' else 0}")
        return value
    if kind == "duration":
        return parse_duration(value)
    if kind == "pollinterval":
        seconds = parse_duration(value)
        if seconds < MIN_POLL_INTERVAL_SECONDS:
            raise ValueError(f"must be at least {MIN_POLL_INTERVAL_SECONDS:g}s, not {value!r}")
        return seconds
    if kind == "registries":
        return {str(host): _registry(host, v, base) for host, v in _mapping(value).items()}
    if kind == "secrets":
        return {str(name): _secret(name, v, base) for name, v in _mapping(value).items()}
    if kind == "registrynotifications":
        return _notifications(value)
    if kind == "stringmaps":
        result: dict[str, dict[str, str]] = {}
        for name, v in _mapping(value).items():
            result[str(name)] = {str(k): str(x) for k, x in _mapping(v).items()}
        return result
    if kind == "buildah":
        m = _mapping(value)
        return BuildahSettings(
            storage_driver=str(m.get("storageDriver", "vfs")),
            root=str(m["root"]) if m.get("root") else None,
            runroot=str(m["runroot"]) if m.get("runroot") else None,
            isolation=str(m.get("isolation", "chroot")),
            push_retries=int(m.get("pushRetries", 3)),
        )
    if kind == "executor":
        if value not in ("local", "kubernetes"):
            raise ValueError("must be local or kubernetes")
        return value
    if kind == "storekind":
        if value not in ("sqlite", "kubernetes"):
            raise ValueError("must be sqlite or kubernetes")
        return value
    if kind == "kubernetes":
        try:
            return kube.parse_settings(value)
        except Invalid as e:
            raise ValueError("; ".join(str(c) for c in e.causes)) from e
    if kind == "loglevel":
        if str(value).lower() not in ("debug", "info", "warning", "error"):
            raise ValueError("must be debug, info, warning or error")
        return str(value).lower()
    raise AssertionError(kind)


def _notifications(value: Any) -> dict[str, dict[str, str]]:
    """``registryNotifications``: known kinds and keys only, non-empty string values (a typo
    would otherwise load silently and every notification of that kind be refused)."""
    kinds = ", ".join(NOTIFICATION_KEYS)
    result: dict[str, dict[str, str]] = {}
    for name, entry in _mapping(value).items():
        kind = str(name)
        allowed = NOTIFICATION_KEYS.get(kind)
        if allowed is None:
            raise SettingError(kind, f"unknown kind, expected one of {kinds}")
        if not isinstance(entry, Mapping):
            raise SettingError(kind, f"must be a mapping with {' or '.join(allowed)}")
        values: dict[str, str] = {}
        for key, text in entry.items():
            if key not in allowed:
                raise SettingError(f"{kind}.{key}", f"unknown key, expected {' or '.join(allowed)}")
            if not isinstance(text, str) or not text:
                raise SettingError(f"{kind}.{key}", "must be a non-empty string")
            values[str(key)] = text
        result[kind] = values
    return result


def _mapping(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError("must be a mapping")
    return value


def _path(value: Any, base: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise TypeError("must be a path")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _registry(host: str, value: Any, base: Path) -> RegistrySettings:
    m = _mapping(value or {})
    insecure = m.get("insecure", False)
    if not isinstance(insecure, bool):
        raise TypeError(f"registries.{host}.insecure must be true or false")
    auth = m.get("authFile")
    return RegistrySettings(insecure=insecure, auth_file=str(_path(auth, base)) if auth else None)


def _secret(name: str, value: Any, base: Path) -> SecretSettings:
    m = _mapping(value)
    path = m.get("path")
    data = _mapping(m.get("data") or {})
    if not path and not data:
        raise ValueError(f"secrets.{name} needs path or data")
    return SecretSettings(
        path=str(_path(path, base)) if path else None,
        data={str(k): str(v) for k, v in data.items()},
    )
