"""The image change settings from YAML and from TRIGGERD_* variables, and their validation:
registryNotifications kinds and keys, imagePollInterval's lower bound, imageStreamRegistry
and imageChangeInitialBuild."""

from __future__ import annotations

from pathlib import Path

import pytest

from triggerd import settings
from triggerd.errors import Invalid


def load_yaml(tmp_path: Path, text: str) -> settings.Settings:
    path = tmp_path / "triggerd.yaml"
    path.write_text(text)
    return settings.load(path, environ={})


def causes(tmp_path: Path, text: str = "", environ: dict[str, str] | None = None) -> dict[str, str]:
    path = tmp_path / "triggerd.yaml"
    path.write_text(text)
    with pytest.raises(Invalid) as info:
        settings.load(path, environ=environ or {})
    return {c.path: c.message for c in info.value.causes}


def test_image_change_settings_from_yaml(tmp_path: Path) -> None:
    loaded = load_yaml(
        tmp_path,
        """
registryNotifications:
  distribution: {authorization: "Bearer s3cr3t"}
  harbor: {authorization: "harbor-auth"}
  dockerhub: {token: hub}
  quay: {token: quay}
  github: {secret: gh}
imageChangeInitialBuild: false
imageStreamRegistry: "registry.example.com:5000"
imagePollInterval: 30s
""",
    )
    assert loaded.registry_notifications == {
        "distribution": {"authorization": "Bearer s3cr3t"},
        "harbor": {"authorization": "harbor-auth"},
        "dockerhub": {"token": "hub"},
        "quay": {"token": "quay"},
        "github": {"secret": "gh"},
    }
    assert loaded.image_change_initial_build is False
    assert loaded.image_stream_registry == "registry.example.com:5000"
    assert loaded.image_poll_interval_seconds == 30.0


def test_image_change_settings_from_the_environment(tmp_path: Path) -> None:
    loaded = settings.load(
        None,
        environ={
            "TRIGGERD_REGISTRY_NOTIFICATIONS": '{distribution: {authorization: "Bearer x"}}',
            "TRIGGERD_IMAGE_CHANGE_INITIAL_BUILD": "false",
            # YAML would read 5000:30 as a base-60 number; string settings are taken as is.
            "TRIGGERD_IMAGE_STREAM_REGISTRY": "5000:30",
            "TRIGGERD_IMAGE_POLL_INTERVAL": "2m",
        },
    )
    assert loaded.registry_notifications == {"distribution": {"authorization": "Bearer x"}}
    assert loaded.image_change_initial_build is False
    assert loaded.image_stream_registry == "5000:30"
    assert loaded.image_poll_interval_seconds == 120.0
    # The environment overrides the file.
    path = tmp_path / "triggerd.yaml"
    path.write_text("imagePollInterval: 5m\nimageChangeInitialBuild: false\n")
    loaded = settings.load(
        path,
        environ={
            "TRIGGERD_IMAGE_POLL_INTERVAL": "45s",
            "TRIGGERD_IMAGE_CHANGE_INITIAL_BUILD": "true",
        },
    )
    assert loaded.image_poll_interval_seconds == 45.0
    assert loaded.image_change_initial_build is True


def test_defaults(tmp_path: Path) -> None:
    loaded = load_yaml(tmp_path, "{}\n")
    assert loaded.image_poll_interval_seconds == 300.0
    assert loaded.image_change_initial_build is True
    assert loaded.image_stream_registry is None
    assert loaded.registry_notifications == {}


def test_an_unknown_notification_kind_is_refused_naming_the_path(tmp_path: Path) -> None:
    found = causes(tmp_path, "registryNotifications: {distrbution: {authorization: x}}\n")
    assert found == {
        "registryNotifications.distrbution": (
            "unknown kind, expected one of distribution, harbor, dockerhub, quay, github"
        )
    }


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        (
            "registryNotifications: {distribution: {authorisation: x}}\n",
            "registryNotifications.distribution.authorisation",
            "unknown key, expected authorization",
        ),
        (
            "registryNotifications: {dockerhub: {authorization: x}}\n",
            "registryNotifications.dockerhub.authorization",
            "unknown key, expected token",
        ),
        (
            "registryNotifications: {quay: {token: ''}}\n",
            "registryNotifications.quay.token",
            "must be a non-empty string",
        ),
        (
            "registryNotifications: {harbor: Bearer x}\n",
            "registryNotifications.harbor",
            "must be a mapping with authorization",
        ),
        ("registryNotifications: [distribution]\n", "registryNotifications", "must be a mapping"),
    ],
)
def test_bad_notification_settings(tmp_path: Path, text: str, path: str, message: str) -> None:
    assert causes(tmp_path, text) == {path: message}


def test_unknown_notification_kind_from_the_environment(tmp_path: Path) -> None:
    found = causes(tmp_path, environ={"TRIGGERD_REGISTRY_NOTIFICATIONS": "{nexus: {token: t}}"})
    assert "registryNotifications.nexus" in found


@pytest.mark.parametrize("value", ["0s", "0", "500ms", "0.5"])
def test_poll_intervals_below_one_second_are_refused(tmp_path: Path, value: str) -> None:
    found = causes(tmp_path, f"imagePollInterval: {value}\n")
    assert found["imagePollInterval"].startswith("must be at least 1s")
    found = causes(tmp_path, environ={"TRIGGERD_IMAGE_POLL_INTERVAL": value})
    assert "imagePollInterval" in found


def test_one_second_is_the_shortest_interval(tmp_path: Path) -> None:
    assert load_yaml(tmp_path, "imagePollInterval: 1s\n").image_poll_interval_seconds == 1.0


def test_config_maps_keep_their_free_form_keys(tmp_path: Path) -> None:
    loaded = load_yaml(tmp_path, "configMaps: {app-config: {anything: goes}}\n")
    assert loaded.config_maps == {"app-config": {"anything": "goes"}}
