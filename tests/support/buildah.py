"""buildah for tests on this machine: private storage, chroot isolation, local base images.

What works here (root inside a VM, no Docker, no internet), found by trying:

* storage: the ``vfs`` driver in a per-session directory (``--root``/``--runroot``, or the
  same via ``CONTAINERS_STORAGE_CONF``); needs no kernel overlay or FUSE and leaves no mounts,
  so removing the directory cleans up. ``--layers`` caching works with vfs.
* isolation: ``BUILDAH_ISOLATION=chroot``. The default ``oci`` isolation fails here (crun:
  "cgroups in hybrid mode not supported"); chroot runs RUN steps without any OCI runtime.
* registries: containers/image does not treat 127.0.0.1 as insecure, so a push or pull needs
  ``--tls-verify=false`` or an ``insecure = true`` entry in registries.conf. ``BuildahEnv``
  writes a private ``$HOME/.config/containers/registries.conf`` with such entries and no
  search registries: that file also makes buildah skip the system's short-name aliases
  (``alpine`` → docker.io), so a short name fails at once instead of reaching for the network.
* base images: there is no Docker Hub, so ``build_busybox_base`` makes one FROM scratch with
  the static busybox of the ``busybox-static`` package and all its applets as symlinks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from tests.support.registry import Registry

BUSYBOX = Path("/bin/busybox")
BUSYBOX_LOCAL_NAME = "localhost/triggerd-tests/busybox:latest"
BUSYBOX_REPO = "base/busybox"
BUILD_TIMEOUT = 600.0


class BuildahError(RuntimeError):
    """A buildah command failed; the message carries its output."""


class BuildahEnv:
    """A private buildah setup under ``root``: storage, config home, insecure registries.

    ``env`` holds the variables to add to a buildah process's environment (enough on their
    own: a program that runs plain ``buildah`` with them gets this storage and config);
    ``flags`` are the equivalent global storage flags for tests that build a command line.
    """

    driver = "vfs"
    isolation = "chroot"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.graphroot = root / "storage"
        self.runroot = root / "run"
        self.home = root / "home"
        self.config_dir = self.home / ".config" / "containers"
        self.storage_conf = root / "storage.conf"
        self.registries_conf = self.config_dir / "registries.conf"
        self.insecure_registries: list[str] = []
        for path in (self.graphroot, self.runroot, self.config_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.storage_conf.write_text(
            "[storage]\n"
            f'driver = "{self.driver}"\n'
            f'graphroot = "{self.graphroot}"\n'
            f'runroot = "{self.runroot}"\n'
        )
        self._write_registries_conf()

    def _write_registries_conf(self) -> None:
        lines = [
            "# Written by tests/support/buildah.py: no search registries, so short names fail",
            "# without a network lookup; local test registries speak plain HTTP.",
            "unqualified-search-registries = []",
            'short-name-mode = "enforcing"',
        ]
        for host in self.insecure_registries:
            lines += ["", "[[registry]]", f'location = "{host}"', "insecure = true"]
        self.registries_conf.write_text("\n".join(lines) + "\n")

    def allow_insecure(self, *hosts: str) -> None:
        """Let buildah use plain HTTP for these ``host:port`` registries (no --tls-verify)."""
        new = [h for h in hosts if h not in self.insecure_registries]
        if new:
            self.insecure_registries.extend(new)
            self._write_registries_conf()

    @property
    def env(self) -> dict[str, str]:
        """Variables to add to the environment of any process that runs buildah."""
        return {
            "BUILDAH_ISOLATION": self.isolation,
            "CONTAINERS_STORAGE_CONF": str(self.storage_conf),
            # Our registries.conf is found as the user's file; a user file makes
            # containers/image ignore /etc/containers/registries.conf.d (short-name aliases).
            # CONTAINERS_REGISTRIES_CONF would not: the system drop-ins still apply with it.
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
        }

    @property
    def flags(self) -> list[str]:
        """Global buildah flags selecting the same storage as ``env`` does."""
        return [
            "--root", str(self.graphroot),
            "--runroot", str(self.runroot),
            "--storage-driver", self.driver,
        ]  # fmt: skip

    def full_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """``os.environ`` with ``env`` (and ``extra``) applied, for subprocess calls."""
        env = dict(os.environ)
        # An inherited CONTAINERS_REGISTRIES_CONF would override the private user file.
        env.pop("CONTAINERS_REGISTRIES_CONF", None)
        env.update(self.env)
        if extra:
            env.update(extra)
        return env

    def command(self, *args: str) -> list[str]:
        """``buildah <flags> ARGS`` as an argv list."""
        return ["buildah", *self.flags, *args]

    def run(
        self,
        *args: str,
        check: bool = True,
        timeout: float = BUILD_TIMEOUT,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run buildah with this setup; raise ``BuildahError`` (with output) on failure."""
        proc = subprocess.run(
            self.command(*args),
            env=self.full_env(),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise BuildahError(
                f"buildah {' '.join(args)} exited {proc.returncode}\n"
                f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            )
        return proc

    def image_id(self, name: str) -> str | None:
        """The local image id of ``name``, or None if the store has no such image."""
        proc = self.run("images", "--noheading", "--no-trunc", "--quiet", name, check=False)
        out = proc.stdout.split()
        return out[0] if proc.returncode == 0 and out else None

    def push(
        self,
        image: str,
        dest_ref: str,
        *,
        tls_verify: bool = False,
        creds: tuple[str, str] | None = None,
    ) -> str:
        """Push a local image to ``docker://dest_ref``; return the pushed manifest digest."""
        fd, name = tempfile.mkstemp(prefix="digest-", dir=self.root)
        os.close(fd)
        digestfile = Path(name)
        auth = ["--creds", f"{creds[0]}:{creds[1]}"] if creds else []
        try:
            self.run(
                "push", f"--tls-verify={str(tls_verify).lower()}", *auth,
                "--digestfile", str(digestfile), image, f"docker://{dest_ref}",
            )  # fmt: skip
            return digestfile.read_text().strip()
        finally:
            digestfile.unlink(missing_ok=True)

    def remove_storage(self) -> None:
        """Delete all images and containers (vfs leaves no mounts, so rm is enough)."""
        shutil.rmtree(self.graphroot, ignore_errors=True)
        shutil.rmtree(self.runroot, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<BuildahEnv {self.root} driver={self.driver} isolation={self.isolation}>"


def busybox_context(dest: Path) -> Path:
    """A build context whose Containerfile makes a busybox image FROM scratch.

    The applet symlinks are made here on the host and COPYed, rather than with a
    ``RUN busybox --install``, so the base build runs no container at all.
    """
    if not BUSYBOX.exists():
        raise RuntimeError(f"{BUSYBOX} missing: run scripts/install-system-deps.sh as root")
    rootfs = dest / "rootfs"
    if rootfs.exists():
        shutil.rmtree(rootfs)
    for sub in ("bin", "etc", "tmp", "root", "usr/bin"):
        (rootfs / sub).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (rootfs / "bin" / applet).symlink_to("busybox")
    # `#!/usr/bin/env sh` scripts are common in build contexts.
    (rootfs / "usr" / "bin" / "env").symlink_to("/bin/busybox")
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\n")
    (dest / "Containerfile").write_text(
        'FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin:/usr/bin\nCMD ["/bin/sh"]\n'
    )
    return dest


def build_busybox_base(env: BuildahEnv, *, name: str = BUSYBOX_LOCAL_NAME) -> str:
    """Build the busybox base image into ``env``'s store (once) and return its image id.

    ``--timestamp 0`` makes the image byte-for-byte reproducible, so its digest is the same
    on every run and machine with the same busybox package.
    """
    existing = env.image_id(name)
    if existing is not None:
        return existing
    context = busybox_context(env.root / "busybox-context")
    env.run("build", "--timestamp", "0", "--layers", "-t", name, str(context))
    image = env.image_id(name)
    if image is None:
        raise BuildahError(f"built {name} but buildah images does not list it")
    return image


def publish_busybox_base(
    env: BuildahEnv,
    registry: Registry,
    *,
    repo: str = BUSYBOX_REPO,
    tag: str = "latest",
) -> str:
    """Build (if needed) and push the busybox base to ``registry``; return its reference
    ``127.0.0.1:PORT/base/busybox:latest`` for use in FROM lines."""
    build_busybox_base(env)
    env.allow_insecure(registry.host)
    ref = registry.ref(repo, tag)
    env.push(BUSYBOX_LOCAL_NAME, ref, creds=registry.auth)
    return ref
