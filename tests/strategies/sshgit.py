"""An OpenSSH server for tests: ``/usr/sbin/sshd`` (Debian's openssh-server) on 127.0.0.1
with a host key and an authorized key made for the test, so git fetches over ssh:// with a
private key as OpenShift's ssh-auth source secrets do. Nothing of the machine's own ssh
setup is used: the configuration, keys and pid file live in the test's directory."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.processes import ManagedProcess, wait_for

SSHD = Path("/usr/sbin/sshd")
#: sshd refuses to start without its privilege separation directory (the Debian service
#: creates it at boot).
PRIVSEP_DIR = Path("/run/sshd")


class SshServer:
    def __init__(self, root: Path) -> None:
        if not SSHD.exists():
            missing = "openssh-server is not installed (scripts/install-system-deps.sh)"
            # make test installs it: in CI a skip here would hide the SSH source tests.
            if os.environ.get("CI"):
                pytest.fail(missing)
            pytest.skip(missing)
        self.root = root
        self.port = free_port()
        self.user = "root" if os.getuid() == 0 else os.environ.get("USER", "root")
        root.mkdir(parents=True, exist_ok=True)
        self.client_key = root / "id_ed25519"
        for key in (root / "host_ed25519", self.client_key):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True
            )
        (root / "authorized_keys").write_text(self.client_key.with_suffix(".pub").read_text())
        config = root / "sshd_config"
        config.write_text(
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {root / 'host_ed25519'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\n"
            f"PidFile {root / 'sshd.pid'}\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\n"
            "UsePAM no\n"
            "StrictModes no\n"
        )
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        self.process = ManagedProcess(
            [str(SSHD), "-D", "-e", "-f", str(config)], log_path=root / "sshd.log", name="sshd"
        )

    def url(self, repository: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{repository}"

    def start(self) -> None:
        self.process.start()

        def listening() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(listening, timeout=10, what="sshd listening", process=self.process)

    def stop(self) -> None:
        self.process.stop()
