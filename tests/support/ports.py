"""Free TCP ports on 127.0.0.1 for servers started by tests.

The kernel picks an unused ephemeral port when we bind to port 0; we close the socket again
and hand the number to the program we start. Another process could grab the port in between,
so the starters in this package retry with a new port when a server fails to bind. Ports
handed out once are remembered for the life of the test process so that two servers started
by the same session never get the same number even if the kernel offers it twice.
"""

from __future__ import annotations

import socket
import threading

LOOPBACK = "127.0.0.1"

_lock = threading.Lock()
_handed_out: set[int] = set()


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that nothing listens on right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        with _lock:
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError(f"no unused free port found on {host} after 50 tries")


def is_listening(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
