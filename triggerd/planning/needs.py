"""Which named Secrets and ConfigMaps a Build reads, and what for (pure).

Both executors must hand the planner the same inputs: the host executor resolves these
names from its settings into files under the build's workspace, the Kubernetes executor
mounts the Secrets and ConfigMaps of the same names into the build pod. Which strategy
reads which secret (a custom builder fetches by itself and so gets the source secret as a
mounted input, dockerStrategy.volumes mount into RUN steps, a strategy's pullSecret pulls
its builder or base images) is decided here once, so the two executors cannot drift apart
and no executor has to know about strategies. Nothing here reads a setting, a file or the
API server: it only looks at the Build.
"""

from __future__ import annotations

from dataclasses import dataclass

from triggerd.model.builds import Build
from triggerd.model.specs import VolumeSourceType


@dataclass(frozen=True, slots=True, kw_only=True)
class Needs:
    """The Secret and ConfigMap names a Build reads, grouped by use. A name may appear in
    more than one group (the same Secret used to pull and to push, say): each use gets the
    Secret in the form that use needs."""

    #: Secrets whose keys become files of a directory the plan copies into the context or
    #: mounts (source.secrets, dockerStrategy.volumes, customStrategy.secrets and a custom
    #: build's source secret); sorted.
    secrets: tuple[str, ...] = ()
    #: ConfigMaps used the same way (source.configMaps, dockerStrategy.volumes); sorted.
    config_maps: tuple[str, ...] = ()
    #: The strategy's pullSecret: registry credentials for its builder or base images.
    pull_secret: str | None = None
    #: source.images[].pullSecret, distinct, in order of first use.
    image_pull_secrets: tuple[str, ...] = ()
    #: output.pushSecret: registry credentials for the push.
    push_secret: str | None = None
    #: The source secret as git credentials for triggerd's own fetch (SSH key or basic
    #: auth); None when there is no git source or the build is a custom one, whose builder
    #: fetches by itself with the secret it finds among :attr:`secrets`.
    fetch_secret: str | None = None


def needs(build: Build) -> Needs:
    """What :class:`Needs` says, for ``build``."""
    source = build.spec.source
    strategy = build.spec.strategy
    secrets = {item.name for item in source.secrets}
    config_maps = {item.name for item in source.config_maps}
    custom = strategy.custom
    if custom is not None:
        secrets |= {mount.name for mount in custom.secrets}
        if source.source_secret:
            secrets.add(source.source_secret)
    for volume in strategy.docker.volumes if strategy.docker is not None else ():
        if volume.source_type is VolumeSourceType.SECRET:
            secrets.add(volume.source_name)
        else:
            config_maps.add(volume.source_name)
    chosen = strategy.docker or strategy.source or custom
    fetches = source.git is not None and custom is None
    return Needs(
        secrets=tuple(sorted(secrets)),
        config_maps=tuple(sorted(config_maps)),
        pull_secret=(chosen.pull_secret or None) if chosen is not None else None,
        image_pull_secrets=tuple(
            dict.fromkeys(image.pull_secret for image in source.images if image.pull_secret)
        ),
        push_secret=build.spec.output.push_secret or None,
        fetch_secret=(source.source_secret or None) if fetches else None,
    )
